//! `signer-host render-iam-policy`: the parent instance role's IAM policy.

use clap::Args;

use crate::key_policy::render_iam;

/// Flags of `render-iam-policy`.
#[derive(Debug, Args)]
pub struct RenderIamPolicyArgs {
    /// ARN of the KMS key (arn:aws:kms:REGION:ACCOUNT:key/ID).
    #[arg(long)]
    pub key_arn: common::kms_key::KmsKeyArn,
}

/// Prints the IAM policy JSON.
pub fn run(args: &RenderIamPolicyArgs) -> anyhow::Result<()> {
    println!("{}", render_iam(&args.key_arn)?);
    Ok(())
}

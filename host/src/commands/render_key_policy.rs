//! `signer-host render-key-policy`: the KMS key policy for the enclave build(s) whose
//! measurements nitro-cli printed.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::key_policy::{Variant, parse_measurements, render};

/// Flags of `render-key-policy`.
#[derive(Debug, Args)]
pub struct RenderKeyPolicyArgs {
    /// ARN of the KMS key (arn:aws:kms:REGION:ACCOUNT:key/ID): the enclave's measured
    /// `--kms-key-arn`. Its account administers the key but cannot decrypt.
    #[arg(long)]
    pub key_arn: common::kms_key::KmsKeyArn,
    /// ARN of the parent instance's IAM role.
    #[arg(long)]
    pub role: String,
    /// Output of `nitro-cli build-enclave` or `describe-eif`; repeat to admit several
    /// builds during a rollout.
    #[arg(long = "measurements", required = true)]
    pub measurements: Vec<PathBuf>,
    /// Which attestation condition admits a build.
    #[arg(long, value_enum, default_value = "pcrs")]
    pub variant: Variant,
}

/// Prints the key policy JSON.
pub fn run(args: &RenderKeyPolicyArgs) -> anyhow::Result<()> {
    let mut builds = Vec::new();
    for path in &args.measurements {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        builds.push(parse_measurements(&text).with_context(|| format!("{}", path.display()))?);
    }
    println!(
        "{}",
        render(args.variant.template(), &args.key_arn, &args.role, &builds)?
    );
    Ok(())
}

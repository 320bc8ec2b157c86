//! `signer-mock-kms`: the mock KMS as a process, for `signer-host dev` and manual tests.
//! Prints exactly one line, `listening on https://ADDR`, to stdout once bound.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mock_kms::policy::Policy;
use mock_kms::{MockKms, MockKmsConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "signer-mock-kms",
    about = "A local stand-in for AWS KMS (development and tests only)"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Key store file (created if absent).
    #[arg(long)]
    state: PathBuf,
    /// Key policy JSON applied to every key.
    #[arg(long)]
    policy: PathBuf,
    /// PEM root certificate that attestation documents must chain to.
    #[arg(long)]
    attestation_root: PathBuf,
    /// Where to write the PEM of the generated TLS CA, for clients to trust.
    #[arg(long)]
    ca_out: PathBuf,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    #[arg(long, default_value = "111122223333")]
    account: String,
    #[arg(long, default_value = "arn:aws:iam::111122223333:role/signer-host")]
    caller_arn: String,
    /// Refuse requests signed with other access key ids (repeatable; default: any).
    #[arg(long = "allow-access-key")]
    allowed_access_keys: Vec<String>,
    /// How far an attestation document's timestamp may be from now.
    #[arg(long, default_value_t = 300)]
    attestation_max_age_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::logging::init("text")?;
    let args = Args::parse();
    let policy_text = std::fs::read_to_string(&args.policy)
        .with_context(|| format!("reading the policy {}", args.policy.display()))?;
    let policy = Policy::parse(&policy_text)
        .with_context(|| format!("parsing the policy {}", args.policy.display()))?;
    let root_pem = std::fs::read(&args.attestation_root).with_context(|| {
        format!(
            "reading the attestation root {}",
            args.attestation_root.display()
        )
    })?;
    let root_der = common::attestation::certificate_der_from_pem(&root_pem)
        .with_context(|| format!("attestation root {}", args.attestation_root.display()))?;
    let config = MockKmsConfig {
        region: args.region,
        account: args.account,
        caller_arn: args.caller_arn,
        allowed_access_keys: (!args.allowed_access_keys.is_empty())
            .then_some(args.allowed_access_keys),
        attestation_max_age: Duration::from_secs(args.attestation_max_age_secs),
        ..MockKmsConfig::new(args.state, policy, root_der)
    };
    let kms = MockKms::bind(config, args.listen, &args.ca_out).await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on https://{}", kms.local_addr())?;
    stdout.flush()?;
    drop(stdout);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(kms.serve(shutdown.clone()));
    let signal = common::signal::shutdown_signal().await?;
    tracing::info!(signal, "shutting down");
    shutdown.cancel();
    server.await?;
    Ok(())
}

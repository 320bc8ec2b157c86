//! `signer-mock-kms`: the mock KMS as a process, for `signer-dev up` and manual tests.
//! Prints exactly one line, `listening on https://ADDR`, to stdout once bound.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mock_kms::key_policy::Policy;
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
    #[arg(long, required_unless_present = "create_dev_key")]
    policy: Option<PathBuf>,
    /// PEM root certificate that attestation documents must chain to.
    #[arg(long, conflicts_with = "nsm_ca_dir")]
    attestation_root: Option<PathBuf>,
    /// Trust the mock NSM CA kept in this directory (created if absent), as the mock
    /// enclave given the same directory uses.
    #[arg(long)]
    nsm_ca_dir: Option<PathBuf>,
    /// Where to write the PEM of the generated TLS CA, for clients to trust.
    #[arg(long, required_unless_present = "create_dev_key")]
    ca_out: Option<PathBuf>,
    /// Development shortcut, not a server: create (or reuse) the KMS key `--alias`,
    /// print `{"kms_key_arn": "..."}` and exit. The keys under it are generated inside
    /// the (mock) enclave, as in production.
    #[arg(long)]
    create_dev_key: bool,
    #[arg(long, default_value = "alias/signer-dev")]
    alias: String,
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

/// Creates (or reuses) the development KMS key; see `--create-dev-key`.
fn create_dev_key(args: &Args) -> anyhow::Result<()> {
    let store = mock_kms::keystore::KeyStore::open(&args.state, &args.region, &args.account)?;
    let key_id = match store.resolve(&args.alias) {
        Ok(id) => id,
        Err(_) => {
            store
                .create_key("signer-dev keys (mock KMS)", Some(&args.alias))?
                .key_id
        }
    };
    let arn = store.describe(&key_id)?.arn;
    println!("{}", serde_json::json!({ "kms_key_arn": arn }));
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::logging::init("text")?;
    let args = Args::parse();
    if args.create_dev_key {
        return create_dev_key(&args);
    }
    let (Some(policy_path), Some(ca_out)) = (args.policy.clone(), args.ca_out.clone()) else {
        anyhow::bail!("--policy and --ca-out are required to serve");
    };
    let policy_text = std::fs::read_to_string(&policy_path)
        .with_context(|| format!("reading the policy {}", policy_path.display()))?;
    let policy = Policy::parse(&policy_text)
        .with_context(|| format!("parsing the policy {}", policy_path.display()))?;
    let root_der = match (&args.attestation_root, &args.nsm_ca_dir) {
        (Some(path), _) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the attestation root {}", path.display()))?;
            common::attestation::document::certificate_der_from_pem(&pem)
                .with_context(|| format!("attestation root {}", path.display()))?
        }
        (None, Some(dir)) => common::mock_nsm::MockCa::load_or_generate(dir)?
            .root_der()
            .to_vec(),
        (None, None) => anyhow::bail!("name --attestation-root or --nsm-ca-dir"),
    };
    let config = MockKmsConfig {
        region: args.region,
        account: args.account,
        caller_arn: args.caller_arn,
        allowed_access_keys: (!args.allowed_access_keys.is_empty())
            .then_some(args.allowed_access_keys),
        attestation_max_age: Duration::from_secs(args.attestation_max_age_secs),
        ..MockKmsConfig::new(args.state, policy, root_der)
    };
    let mut signals = common::signal::ShutdownSignals::install()?;
    let kms = MockKms::bind(config, args.listen, &ca_out).await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on https://{}", kms.local_addr())?;
    stdout.flush()?;
    drop(stdout);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(kms.serve(shutdown.clone()));
    let signal = signals.recv().await;
    tracing::info!(signal, "shutting down");
    shutdown.cancel();
    server.await?;
    Ok(())
}

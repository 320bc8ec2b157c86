use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use common::transport::{Endpoint, Listener};
use enclave::BUILD_FLAVOR;
use enclave::attestor::Attestor;
use enclave::handler::{Handler, Signing};
use enclave::kms::client::{KmsClient, KmsSettings, PushedCredentials};
use enclave::nsm::Nsm;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// `--version` names the build flavour, so tooling can tell a mock build apart.
#[cfg(feature = "mock")]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (mock build: development only)");
#[cfg(not(feature = "mock"))]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (production build)");

#[derive(Debug, Parser)]
#[command(
    name = "signer-enclave",
    version = VERSION,
    about = "Stellar signer: the enclave side"
)]
struct Args {
    /// Where to listen for the host: vsock://CID:PORT (CID 4294967295 = any), or, in
    /// mock builds only, unix://PATH.
    #[arg(
        long,
        env = "SIGNER_ENCLAVE_LISTEN",
        default_value = "vsock://4294967295:5000"
    )]
    listen: Endpoint,

    /// The Stellar network this enclave signs for, e.g. "Public Global Stellar Network ;
    /// September 2015". Part of the measured image: requests for any other network are
    /// refused.
    #[arg(long, env = "SIGNER_NETWORK_PASSPHRASE")]
    network_passphrase: Option<String>,

    /// AWS region of the KMS key.
    #[arg(long, env = "SIGNER_KMS_REGION")]
    kms_region: Option<String>,

    /// KMS endpoint (default https://kms.REGION.amazonaws.com).
    #[arg(long, env = "SIGNER_KMS_ENDPOINT")]
    kms_endpoint: Option<String>,

    /// The host's KMS relay: vsock://3:8000 (the parent instance is CID 3), or unix://PATH
    /// in mock builds.
    #[arg(long, env = "SIGNER_KMS_RELAY", default_value = "vsock://3:8000")]
    kms_relay: Endpoint,

    /// The distribution account (G...). Every other key is a channel account, bound by
    /// the channel rules of the signing policy.
    #[arg(long, env = "SIGNER_DISTRIBUTION_ACCOUNT")]
    distribution_account: Option<String>,

    /// Policy: how far ahead a channel transaction's maxTime may be.
    #[arg(
        long,
        env = "SIGNER_POLICY_MAX_TIME_WINDOW_SECS",
        default_value_t = 300
    )]
    policy_max_time_window_secs: u64,

    /// Policy: the largest total fee (stroops) of a channel-sourced transaction.
    #[arg(long, env = "SIGNER_POLICY_MAX_FEE", default_value_t = 10_000_000)]
    policy_max_fee: i64,

    /// Policy: the largest fee-bump fee (stroops) the distribution account pays.
    #[arg(
        long,
        env = "SIGNER_POLICY_MAX_FEE_BUMP_FEE",
        default_value_t = 10_000_000
    )]
    policy_max_fee_bump_fee: i64,

    /// Policy: let the distribution key sign anything it is a required signer of, not
    /// only fee-bumps and channel provisioning.
    #[arg(long, env = "SIGNER_POLICY_DISTRIBUTION_UNRESTRICTED")]
    policy_distribution_unrestricted: bool,

    /// Policy: a contract (C...) the distribution account may authorize Soroban calls
    /// to; repeat or separate with commas. With none, it authorizes no Soroban call
    /// (unless --policy-distribution-unrestricted).
    #[arg(long, env = "SIGNER_POLICY_SOROBAN_CONTRACTS", value_delimiter = ',')]
    policy_soroban_contract: Vec<String>,

    /// Opt-in key cache: keep a decrypted seed this many seconds (0 = off, the default:
    /// one KMS call per signature). Trades a bounded exposure window for throughput.
    #[arg(long, env = "SIGNER_KEY_CACHE_TTL_SECS", default_value_t = 0)]
    key_cache_ttl_secs: u64,

    /// With the key cache on: signatures one decryption may serve.
    #[arg(long, env = "SIGNER_KEY_CACHE_MAX_USES", default_value_t = 100)]
    key_cache_max_uses: u32,

    /// Rotate the KMS recipient key and attestation document this often.
    #[arg(long, env = "SIGNER_ATTESTATION_ROTATION_SECS", default_value_t = 120)]
    attestation_rotation_secs: u64,

    /// Mock builds only: trust this CA (PEM) for the KMS endpoint instead of the web roots.
    #[cfg(feature = "mock")]
    #[arg(long)]
    kms_ca_pem: Option<std::path::PathBuf>,

    /// Mock builds only: directory of the mock NSM's CA (created if missing).
    #[cfg(feature = "mock")]
    #[arg(long)]
    mock_nsm_ca_dir: Option<std::path::PathBuf>,

    /// Mock builds only: PCR values of the mock NSM, as INDEX=HEX[,INDEX=HEX...].
    #[cfg(feature = "mock")]
    #[arg(long, default_value = "")]
    mock_pcrs: String,

    /// Log format: text or json.
    #[arg(long, env = "SIGNER_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    common::logging::init(&args.log_format)?;
    for endpoint in [&args.listen, &args.kms_relay] {
        if matches!(endpoint, Endpoint::Unix(_)) && !cfg!(feature = "mock") {
            bail!(
                "{endpoint} is a Unix socket: mock-vsock mode exists only in mock builds \
                 (cargo build --features enclave/mock); a production enclave uses vsock"
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

#[cfg(feature = "mock")]
fn open_nsm(args: &Args) -> anyhow::Result<Arc<dyn Nsm>> {
    let mut pcrs = std::collections::BTreeMap::new();
    for item in args.mock_pcrs.split(',').filter(|s| !s.is_empty()) {
        let (index, value) = item
            .split_once('=')
            .with_context(|| format!("--mock-pcrs item {item:?}: expected INDEX=HEX"))?;
        let bytes: Vec<u8> = (0..value.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(value.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<_, _>>()
            .with_context(|| format!("--mock-pcrs {index}: not hex"))?;
        let pcr: [u8; 48] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("--mock-pcrs {index}: expected 96 hex characters"))?;
        pcrs.insert(index.parse::<u8>().context("--mock-pcrs index")?, pcr);
    }
    let dir = args
        .mock_nsm_ca_dir
        .clone()
        .context("a mock enclave needs --mock-nsm-ca-dir to sign")?;
    tracing::warn!(
        marker = common::mock_nsm::MOCK_NSM_MARKER,
        ca = %dir.display(),
        "attestation documents come from a MOCK NSM: development only"
    );
    Ok(Arc::new(enclave::nsm::mock::MockNsmDevice::new(
        &dir, &pcrs,
    )?))
}

#[cfg(not(feature = "mock"))]
fn open_nsm(_: &Args) -> anyhow::Result<Arc<dyn Nsm>> {
    Ok(Arc::new(enclave::nsm::nitro::NitroNsm::open()?))
}

fn kms_roots(args: &Args) -> anyhow::Result<rustls::RootCertStore> {
    #[cfg(feature = "mock")]
    if let Some(path) = &args.kms_ca_pem {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let der = common::attestation::certificate_der_from_pem(&pem)?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(der))
            .context("the mock KMS CA")?;
        return Ok(roots);
    }
    let _ = args;
    Ok(rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })
}

/// Signing needs a network and a KMS region. Production builds refuse to start without
/// them; mock builds may run as a bare transport endpoint (protocol tests).
fn signing(args: &Args, shutdown: &CancellationToken) -> anyhow::Result<Option<Signing>> {
    let (Some(network), Some(region), Some(distribution)) = (
        &args.network_passphrase,
        &args.kms_region,
        &args.distribution_account,
    ) else {
        if cfg!(feature = "mock") {
            info!("no --network-passphrase/--kms-region/--distribution-account: signing disabled");
            return Ok(None);
        }
        bail!("--network-passphrase, --kms-region and --distribution-account are required");
    };
    let distribution =
        stellar_strkey::ed25519::PublicKey::from_string(distribution).map_err(|_| {
            anyhow::anyhow!("--distribution-account {distribution:?} is not a G... key")
        })?;
    let policy = common::policy::SigningPolicy {
        distribution: distribution.0,
        max_time_window_secs: args.policy_max_time_window_secs,
        max_fee: args.policy_max_fee,
        max_fee_bump_fee: args.policy_max_fee_bump_fee,
        distribution_unrestricted: args.policy_distribution_unrestricted,
        soroban_contracts: args
            .policy_soroban_contract
            .iter()
            // An empty environment variable (an unset build argument) lists nothing.
            .filter(|c| !c.trim().is_empty())
            .map(|c| common::policy::parse_contract_id(c))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("--policy-soroban-contract: {e}"))?,
    };
    info!(
        distribution = %stellar_strkey::ed25519::PublicKey(policy.distribution),
        max_time_window_secs = policy.max_time_window_secs,
        max_fee = policy.max_fee,
        max_fee_bump_fee = policy.max_fee_bump_fee,
        distribution_unrestricted = policy.distribution_unrestricted,
        soroban_contracts = ?policy
            .soroban_contracts
            .iter()
            .map(|id| stellar_strkey::Contract(*id).to_string())
            .collect::<Vec<_>>(),
        "signing policy"
    );
    let endpoint_url = args
        .kms_endpoint
        .clone()
        // Empty means unset: the image build passes every setting, set or not.
        .filter(|endpoint| !endpoint.trim().is_empty())
        .unwrap_or_else(|| format!("https://kms.{region}.amazonaws.com"));
    let settings = KmsSettings {
        region: region.clone(),
        endpoint_url,
        relay: args.kms_relay.clone(),
        roots: kms_roots(args)?,
        max_attempts: 3,
        attempt_timeout: Duration::from_secs(10),
    };
    let kms = KmsClient::new(settings, PushedCredentials::default())?;
    let attestor = Attestor::new(open_nsm(args)?)?;
    attestor.spawn_rotation(
        Duration::from_secs(args.attestation_rotation_secs.max(10)),
        shutdown.clone(),
    );
    let mut signing = Signing::new(network.clone(), kms, attestor, policy);
    if args.key_cache_ttl_secs > 0 {
        let cache = Arc::new(enclave::cache::KeyCache::new(
            Duration::from_secs(args.key_cache_ttl_secs),
            args.key_cache_max_uses,
        ));
        let sweeper = cache.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => { sweeper.sweep(); }
                }
            }
        });
        info!(
            ttl_secs = args.key_cache_ttl_secs,
            max_uses = args.key_cache_max_uses,
            "key cache ON: decrypted seeds stay in enclave memory within these bounds"
        );
        signing.cache = Some(cache);
    }
    Ok(Some(signing))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut signals =
        common::signal::ShutdownSignals::install().context("installing signal handlers")?;
    // The first use of the TLS random generator costs tens of milliseconds; pay it at
    // start-up rather than on the first signature.
    let mut warm_up = [0u8; 32];
    aws_lc_rs::rand::fill(&mut warm_up).map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let shutdown = CancellationToken::new();
    let signing = signing(&args, &shutdown)?;
    // The socket is only reachable by the host: vsock by construction, the mock's Unix
    // socket by its 0600 mode.
    let listener =
        Listener::bind(&args.listen, 0o600).with_context(|| format!("binding {}", args.listen))?;
    info!(
        listen = %args.listen,
        build = %BUILD_FLAVOR,
        network = args.network_passphrase.as_deref().unwrap_or("-"),
        version = env!("CARGO_PKG_VERSION"),
        "signer-enclave listening"
    );
    let server = tokio::spawn(enclave::server::serve(
        listener,
        Arc::new(Handler::new(signing)),
        shutdown.clone(),
    ));
    let signal = signals.recv().await;
    info!(signal, "stopping");
    shutdown.cancel();
    let _ = server.await;
    Ok(())
}

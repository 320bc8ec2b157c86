use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::transport::Endpoint;
use host::bench::BenchOptions;
use host::cli::{ChannelsCommand, KeysCommand};
use host::config::{Config, DEFAULT_API_SOCKET};
use host::dev::DevOptions;
use host::server::BoundHost;
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Debug, Parser)]
#[command(name = "signer-host", version, about = "Stellar signer: the host side")]
struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, env = "SIGNER_LOG_FORMAT", default_value = "text")]
    log_format: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the host API and relay to the enclave.
    Serve {
        /// TOML configuration file (see README); defaults apply without one.
        #[arg(long, env = "SIGNER_HOST_CONFIG")]
        config: Option<PathBuf>,
        /// Overrides api.socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Overrides enclave.endpoint (vsock://CID:PORT or unix://PATH).
        #[arg(long)]
        enclave: Option<Endpoint>,
        /// Overrides store.path (the SQLite database).
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Render the KMS key policy (kms-policy/key-policy.json.tmpl) for the enclave
    /// build(s) whose measurements nitro-cli printed; prints the policy JSON.
    RenderPolicy {
        /// 12-digit AWS account id (administers the key, cannot decrypt).
        #[arg(long)]
        account: String,
        /// ARN of the parent instance's IAM role.
        #[arg(long)]
        role: String,
        /// Output of `nitro-cli build-enclave` or `describe-eif`; repeat to admit several
        /// builds during a rollout.
        #[arg(long = "measurements", required = true)]
        measurements: Vec<PathBuf>,
        /// Which attestation condition admits a build.
        #[arg(long, value_enum, default_value = "pcrs")]
        variant: host::policy::Variant,
    },
    /// Print the IAM policy for the parent instance's role (KMS calls for one key, only
    /// with an attestation).
    RenderIamPolicy {
        /// ARN of the KMS key (arn:aws:kms:REGION:ACCOUNT:key/ID).
        #[arg(long)]
        key_arn: String,
    },
    /// Stored keys (calls a running host).
    Keys {
        /// The host API socket.
        #[arg(long, env = "SIGNER_HOST_SOCKET", default_value = DEFAULT_API_SOCKET)]
        socket: PathBuf,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The channel-account pool (calls a running host).
    Channels {
        /// The host API socket.
        #[arg(long, env = "SIGNER_HOST_SOCKET", default_value = DEFAULT_API_SOCKET)]
        socket: PathBuf,
        #[command(subcommand)]
        command: ChannelsCommand,
    },
    /// Run the whole stack locally in mock-vsock mode (development only).
    Dev {
        /// State directory; the host API listens at DIR/host.sock.
        #[arg(long, default_value = ".signer-dev")]
        dir: PathBuf,
        /// Where signer-enclave and signer-mock-kms are (default: next to this binary).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Make the mock enclave report other PCRs than the key policy admits
        /// (INDEX=HEX,...), to see an attestation denial.
        #[arg(long)]
        enclave_pcrs: Option<String>,
        /// Skip the host's signing-policy pre-check, so the enclave's own enforcement
        /// answers (for testing the enclave).
        #[arg(long)]
        no_host_policy_precheck: bool,
        /// A contract (C...) the distribution account may authorize Soroban calls to;
        /// given to both the enclave's policy and the host's pre-check.
        #[arg(long, value_delimiter = ',')]
        soroban_contract: Vec<String>,
    },
    /// Measure request throughput and latency through the host and the enclave.
    Bench {
        /// Host API socket of a running stack; without it a local stack is started.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Requests per concurrency level.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Concurrency levels.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    common::logging::init(&cli.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::RenderPolicy {
            account,
            role,
            measurements,
            variant,
        } => {
            let mut builds = Vec::new();
            for path in measurements {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                builds.push(
                    host::policy::parse_measurements(&text)
                        .with_context(|| format!("{}", path.display()))?,
                );
            }
            println!(
                "{}",
                host::policy::render(variant.template(), &account, &role, &builds)?
            );
            Ok(())
        }
        Command::RenderIamPolicy { key_arn } => {
            println!("{}", host::policy::render_iam(&key_arn)?);
            Ok(())
        }
        Command::Keys { socket, command } => host::cli::keys(&socket, command).await,
        Command::Channels { socket, command } => host::cli::channels(&socket, command).await,
        Command::Serve {
            config,
            socket,
            enclave,
            store,
        } => {
            let mut config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            if let Some(socket) = socket {
                config.api.socket = socket;
            }
            if let Some(enclave) = enclave {
                config.enclave.endpoint = enclave;
            }
            if let Some(store) = store {
                config.store.path = store;
            }
            let host = BoundHost::bind(config)?;
            host.run(shutdown_on_signal()).await
        }
        Command::Dev {
            dir,
            bin_dir,
            enclave_pcrs,
            no_host_policy_precheck,
            soroban_contract,
        } => {
            host::dev::run(
                DevOptions {
                    dir,
                    bin_dir,
                    enclave_pcrs,
                    no_host_policy_precheck,
                    soroban_contracts: soroban_contract,
                },
                shutdown_on_signal(),
            )
            .await
        }
        Command::Bench {
            socket,
            requests,
            clients,
        } => {
            host::bench::run(BenchOptions {
                socket,
                requests_per_level: requests,
                clients,
            })
            .await
        }
    }
}

/// A token cancelled by the first SIGTERM or SIGINT. The handlers are registered before
/// this returns, so no signal sent afterwards is lost.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    match common::signal::ShutdownSignals::install() {
        Ok(mut signals) => {
            tokio::spawn(async move {
                let signal = signals.recv().await;
                info!(signal, "shutting down");
                trigger.cancel();
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for signals; shutting down");
            trigger.cancel();
        }
    }
    token
}

//! `signer-dev`: development tooling, never shipped. `up` runs the whole stack on one
//! machine in mock-vsock mode (mock NSM, mock KMS, development keys); `bench` measures
//! requests through it; `stub-rpc` stands in for Stellar RPC.

mod bench;
mod stub_rpc;
mod up;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "signer-dev",
    version,
    about = "Stellar signer: local development stack and benchmark (never for production)"
)]
struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, env = "SIGNER_LOG_FORMAT", default_value = "text")]
    log_format: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole stack locally in mock-vsock mode (development only).
    Up {
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
        /// given to both the enclave's signing policy and the host's pre-check.
        #[arg(long, value_delimiter = ',')]
        soroban_contract: Vec<String>,
        /// The mock KMS key (alias) the enclave uses; created on first use.
        #[arg(long, default_value = "alias/signer-dev")]
        kms_key_alias: String,
        /// A rotation build: the previous mock KMS key (alias), still read until every
        /// key is rewrapped (`signer-host keys rewrap`).
        #[arg(long)]
        previous_kms_key_alias: Option<String>,
        /// Sets one field of the host's configuration, as `signer-host serve --set`
        /// does (repeatable), e.g. `--host-set readiness.canary_period_secs=10`.
        #[arg(long = "host-set", value_name = "SECTION.FIELD=VALUE")]
        host_sets: Vec<String>,
        /// The host's store: `postgres://user@host/dbname` runs the stack on PostgreSQL
        /// (keep one database per state directory: its keys are sealed by this
        /// directory's mock KMS); default SQLite at DIR/signer.db.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
    },
    /// A Stellar RPC stand-in on loopback (JSON-RPC 2.0, the published shapes) over a
    /// small ledger, for tests and for trying `signer-host channels ensure` locally.
    ///
    /// Example: `signer-dev stub-rpc --listen 127.0.0.1:8000 --fund GABC...=100000000000`
    StubRpc {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "Test SDF Network ; September 2015")]
        network_passphrase: String,
        /// An account that exists from the start: G...=STROOPS (repeatable).
        #[arg(long, value_parser = parse_funded)]
        fund: Vec<(String, i64)>,
        /// Milliseconds between ledger closes.
        #[arg(long, default_value_t = 250)]
        ledger_ms: u64,
        /// Fault: the first N account reads report sequences one too low.
        #[arg(long, default_value_t = 0)]
        stale_sequence_reads: u32,
    },
    /// Measure request throughput and latency through the host and the enclave.
    ///
    /// Starts its own local stack twice (per-call, then with the enclave's key cache)
    /// in a scratch directory, prints a table and never fails on the figures.
    ///
    /// Example: `signer-dev bench --json bench.json`
    Bench {
        /// Pings per concurrency level; signatures are a tenth of it (cached: half).
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Concurrency levels.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        /// Also write the figures as JSON here (keys as in the README).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also measure the channel pool on PostgreSQL (1 and 3 hosts) on this server:
        /// the URL of any database there, as a role that may create databases (the
        /// benchmark creates its own and drops it).
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
        /// The stack's log filter (`SIGNER_LOG`) while measured. `warn` by default;
        /// `info`, the servers' own default, adds a log line per request.
        #[arg(long, value_name = "FILTER", default_value = "warn")]
        stack_log: String,
    },
}

/// `G...=STROOPS`.
fn parse_funded(text: &str) -> Result<(String, i64), String> {
    let (key, balance) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected G...=STROOPS"))?;
    let balance = balance
        .parse()
        .map_err(|_| format!("{balance:?} is not a balance in stroops"))?;
    Ok((key.to_string(), balance))
}

// glibc malloc was about a tenth of the CPU under load (README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Bench { .. } => "warn",
        _ => "info",
    };
    common::logging::init_with_default(&cli.log_format, default_log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up {
            dir,
            bin_dir,
            enclave_pcrs,
            no_host_policy_precheck,
            soroban_contract,
            kms_key_alias,
            previous_kms_key_alias,
            mut host_sets,
            store,
        } => {
            // store.url is taken verbatim, as `signer-host serve --store URL` does.
            host_sets.extend(store.map(|url| format!("store.url={url}")));
            let options = up::DevOptions {
                host_sets,
                kms_key_alias,
                previous_kms_key_alias,
                dir,
                bin_dir,
                enclave_pcrs,
                no_host_policy_precheck,
                soroban_contracts: soroban_contract,
            };
            up::run(options, host::server::shutdown_on_signal()).await
        }
        Command::StubRpc {
            listen,
            network_passphrase,
            fund,
            ledger_ms,
            stale_sequence_reads,
        } => {
            stub_rpc::run(stub_rpc::StubOptions {
                listen,
                network_passphrase,
                funded: fund,
                ledger_interval: std::time::Duration::from_millis(ledger_ms.max(1)),
                stale_sequence_reads,
            })
            .await
        }
        Command::Bench {
            requests,
            clients,
            json,
            postgres,
            stack_log,
        } => {
            bench::run(bench::BenchOptions {
                requests,
                clients,
                json,
                postgres,
                stack_log,
            })
            .await
        }
    }
}

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use common::transport::{Endpoint, Listener};
use enclave::BUILD_FLAVOR;
use enclave::handler::Handler;
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "signer-enclave",
    version,
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

    /// Log format: text or json.
    #[arg(long, env = "SIGNER_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    common::logging::init(&args.log_format)?;
    if matches!(args.listen, Endpoint::Unix(_)) && !cfg!(feature = "mock") {
        bail!(
            "{} is a Unix socket: mock-vsock mode exists only in mock builds \
             (cargo build --features enclave/mock); a production enclave listens on vsock",
            args.listen
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    // The socket is only reachable by the host: vsock by construction, the mock's Unix
    // socket by its 0600 mode.
    let listener =
        Listener::bind(&args.listen, 0o600).with_context(|| format!("binding {}", args.listen))?;
    info!(
        listen = %args.listen,
        build = %BUILD_FLAVOR,
        version = env!("CARGO_PKG_VERSION"),
        "signer-enclave listening"
    );
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(enclave::server::serve(
        listener,
        Arc::new(Handler::new()),
        shutdown.clone(),
    ));
    let signal = common::signal::shutdown_signal()
        .await
        .context("installing signal handlers")?;
    info!(signal, "stopping");
    shutdown.cancel();
    let _ = server.await;
    Ok(())
}

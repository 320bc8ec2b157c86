//! `signer-enclave`: parse the measured settings, start the signing context, serve the
//! host until SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use common::wire::transport::Listener;
use enclave::BUILD_FLAVOR;
use enclave::config::Settings;
use enclave::dispatch::Dispatcher;
use tokio_util::sync::CancellationToken;
use tracing::info;

fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    if settings.print_config {
        print!(
            "{}",
            enclave::config::describe_settings(std::env::args_os())?
        );
        return Ok(());
    }
    common::logging::init(&settings.log_format)?;
    // Unix-socket endpoints exist only in mock builds: a production build cannot even
    // parse one (common's `unix-endpoints` feature is off), so it listens on vsock only.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(settings))
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let mut signals =
        common::signal::ShutdownSignals::install().context("installing signal handlers")?;
    // The first use of the TLS random generator costs tens of milliseconds; pay it at
    // start-up rather than on the first signature.
    let mut warm_up = [0u8; 32];
    aws_lc_rs::rand::fill(&mut warm_up).map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let shutdown = CancellationToken::new();
    let mut context = enclave::startup::signing_context(&settings, &shutdown)?;
    let digest = enclave::config::settings_digest(std::env::args_os())?;
    if let Some(context) = &mut context {
        context.settings_digest = digest;
    }
    // The socket is only reachable by the host: vsock by construction, the mock's Unix
    // socket by its 0600 mode.
    let listener = Listener::bind(&settings.listen, 0o600)
        .with_context(|| format!("binding {}", settings.listen))?;
    info!(
        listen = %settings.listen,
        build = %BUILD_FLAVOR,
        network = settings.network_passphrase.as_deref().unwrap_or("-"),
        version = env!("CARGO_PKG_VERSION"),
        settings_digest = %common::hex(&digest),
        "signer-enclave listening"
    );
    let server = tokio::spawn(enclave::server::serve(
        listener,
        Arc::new(Dispatcher::new(context)),
        shutdown.clone(),
    ));
    let signal = signals.recv().await;
    info!(signal, "stopping");
    shutdown.cancel();
    let _ = server.await;
    Ok(())
}

//! `signer-host serve`: load the configuration, bind, serve until SIGTERM.

use std::path::PathBuf;

use clap::Args;
use common::wire::transport::Endpoint;

use crate::config::Config;
use crate::server::BoundHost;

/// Flags of `serve`; each overrides its configuration-file setting.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see README); defaults apply without one.
    #[arg(long, env = "SIGNER_HOST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Overrides api.socket.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Overrides enclave.endpoint (vsock://CID:PORT or unix://PATH).
    #[arg(long)]
    pub enclave: Option<Endpoint>,
    /// Overrides store.path (the SQLite database).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

/// The effective configuration: the file (or the defaults), then the flags.
pub fn effective_config(args: ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(socket) = args.socket {
        config.api.socket = socket;
    }
    if let Some(enclave) = args.enclave {
        config.enclave.endpoint = enclave;
    }
    if let Some(store) = args.store {
        config.store.path = store;
    }
    Ok(config)
}

/// Serves until the first SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let host = BoundHost::bind(effective_config(args)?)?;
    host.run(crate::server::shutdown_on_signal()).await
}

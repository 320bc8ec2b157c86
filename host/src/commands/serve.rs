//! `signer-host serve`: load the configuration, bind, serve until SIGTERM.

use std::path::PathBuf;

use clap::Args;
use common::wire::transport::Endpoint;

use crate::config::{Config, ConfigSources};
use crate::server::BoundHost;

/// Where the configuration comes from, lowest precedence first: the file, then
/// `SIGNER_HOST__SECTION__FIELD` environment variables, then these flags.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// TOML configuration file (see README); defaults apply without one.
    #[arg(long, env = "SIGNER_HOST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Sets one field, e.g. `--set api.max_connections=2048` or
    /// `--set 'api.callers.signing.uids=[1001]'` (repeatable; over the file and the
    /// environment).
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE")]
    pub sets: Vec<String>,
    /// Sets api.socket.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Sets enclave.endpoint (vsock://CID:PORT or unix://PATH).
    #[arg(long)]
    pub enclave: Option<Endpoint>,
    /// Sets store.url when given a URL (postgres://…, sqlite:///path), else store.path
    /// (the SQLite database).
    #[arg(long)]
    pub store: Option<String>,
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

impl ConfigArgs {
    /// The effective configuration: the file (or the defaults), the environment, the flags.
    pub fn effective_config(&self) -> anyhow::Result<Config> {
        let mut sets = self.sets.clone();
        // The named flags are `--set`s of their fields, applied last.
        let quoted = |text: String| toml::Value::String(text).to_string();
        if let Some(socket) = &self.socket {
            sets.push(format!(
                "api.socket={}",
                quoted(socket.display().to_string())
            ));
        }
        if let Some(enclave) = &self.enclave {
            sets.push(format!("enclave.endpoint={}", quoted(enclave.to_string())));
        }
        if let Some(store) = &self.store {
            // store.url is a secret field, taken verbatim (never parsed as TOML).
            sets.push(if store.contains("://") {
                format!("store.url={store}")
            } else {
                format!("store.path={}", quoted(store.clone()))
            });
        }
        let sources = ConfigSources::with_process_env(self.config.clone(), sets);
        Ok(Config::resolve(&sources)?)
    }
}

/// Serves until the first SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let host = BoundHost::bind(args.config.effective_config()?).await?;
    host.run(crate::server::shutdown_on_signal()).await
}

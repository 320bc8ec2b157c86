//! `signer-host keys …`: stored keys, through a running host's API.

use std::path::Path;

use hyper::Method;

use super::call;

#[derive(Debug, clap::Subcommand)]
/// What to do with stored keys.
pub enum KeysCommand {
    /// List stored keys (no key material: public keys, roles, formats, states).
    List {
        /// Only this role: distribution or channel.
        #[arg(long)]
        role: Option<String>,
    },
}

/// Runs one keys subcommand against the host at `socket`.
pub async fn run(socket: &Path, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::List { role } => {
            let path = match role {
                Some(role) => format!("/v1/keys?role={role}"),
                None => "/v1/keys".to_string(),
            };
            call(socket, Method::GET, &path, None).await
        }
    }
}

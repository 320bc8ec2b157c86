//! Client subcommands: `signer-host keys …` and `signer-host channels …` call a running
//! host over its API socket, so they work with the same permissions as any host
//! service and never touch the database behind the host's back.

use std::path::Path;

use anyhow::bail;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::client::request_once;

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// List stored keys (no key material: public keys, roles, formats, states).
    List {
        /// Only this role: distribution or channel.
        #[arg(long)]
        role: Option<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ChannelsCommand {
    /// Idle, locked and expired counts.
    Status {
        /// Also list every account with its lock state.
        #[arg(long)]
        list: bool,
    },
    /// Lock a random idle channel account.
    Acquire {
        /// Lock lifetime in seconds (default: channels.default_lock_seconds).
        #[arg(long)]
        lock_seconds: Option<u64>,
    },
    /// Release a lock (failure path); needs the token acquire returned.
    Release {
        #[arg(long)]
        account: String,
        #[arg(long)]
        token: String,
    },
    /// Unlock the channels of transactions seen in a ledger (success path).
    Unlock {
        /// Transaction hashes (hex); for fee-bumps, the inner transaction's hash.
        #[arg(required = true)]
        tx_hashes: Vec<String>,
    },
}

pub async fn keys(socket: &Path, command: KeysCommand) -> anyhow::Result<()> {
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

pub async fn channels(socket: &Path, command: ChannelsCommand) -> anyhow::Result<()> {
    match command {
        ChannelsCommand::Status { list } => {
            let path = if list {
                "/v1/channels?accounts=true"
            } else {
                "/v1/channels"
            };
            call(socket, Method::GET, path, None).await
        }
        ChannelsCommand::Acquire { lock_seconds } => {
            let body = json!({ "lock_seconds": lock_seconds });
            call(socket, Method::POST, "/v1/channels/acquire", Some(body)).await
        }
        ChannelsCommand::Release { account, token } => {
            let body = json!({ "account": account, "lock_token": token });
            call(socket, Method::POST, "/v1/channels/release", Some(body)).await
        }
        ChannelsCommand::Unlock { tx_hashes } => {
            let body = json!({ "tx_hashes": tx_hashes });
            call(socket, Method::POST, "/v1/channels/unlock", Some(body)).await
        }
    }
}

/// Prints a successful answer as JSON on stdout; an error answer becomes a failure
/// with its code and message.
async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<()> {
    let (status, answer) = request_once(socket, method, path, body.as_ref()).await?;
    if status.is_success() {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let code = answer["error"]["code"].as_str().unwrap_or("unknown");
    let message = answer["error"]["message"].as_str().unwrap_or("");
    if status == StatusCode::NOT_FOUND && code == "not_found" {
        bail!(
            "{socket} does not serve {path}; is it an older signer-host?",
            socket = socket.display()
        );
    }
    bail!("{code} ({status}): {message}")
}

//! `signer-host channels …`: the channel-account pool, through a running host's API.

use std::path::Path;

use hyper::Method;
use serde_json::json;

use super::call;

#[derive(Debug, clap::Subcommand)]
/// What to do with the pool.
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
    /// Bring the pool to COUNT accounts on the ledger: generate the missing channel keys
    /// in the enclave (stored pending first), sign their sponsored creation (19 per
    /// transaction, the distribution account sponsors), submit and confirm through
    /// Stellar RPC, activate; or merge idle surplus accounts into the distribution
    /// account and retire their keys. A re-run after a crash reconciles pending keys.
    ///
    /// Example: `signer-host channels ensure 45 --rpc-url https://soroban-testnet.stellar.org`
    /// or, offline, `signer-host channels ensure 45 --sequence 123456789` (prints the
    /// envelopes to submit).
    Ensure(super::channels_ensure::EnsureArgs),
    /// Mark pending channel accounts active once they are on the ledger (after
    /// submitting what `ensure --sequence` printed).
    Activate {
        #[arg(required = true)]
        accounts: Vec<String>,
    },
    /// Retire withdrawn channel keys once their accounts are merged (after submitting
    /// the merge that `ensure --sequence` printed); a retired key never signs again.
    Retire {
        #[arg(required = true)]
        accounts: Vec<String>,
    },
    /// Unlock the channels of transactions seen in a ledger (success path).
    Unlock {
        /// Transaction hashes (hex); for fee-bumps, the inner transaction's hash.
        #[arg(required = true)]
        tx_hashes: Vec<String>,
    },
}

/// Runs one channels subcommand against the host at `socket`.
pub async fn run(socket: &Path, command: ChannelsCommand) -> anyhow::Result<()> {
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
        ChannelsCommand::Ensure(args) => super::channels_ensure::run(socket, args).await,
        ChannelsCommand::Activate { accounts } => {
            let body = json!({ "accounts": accounts });
            call(socket, Method::POST, "/v1/channels/activate", Some(body)).await
        }
        ChannelsCommand::Retire { accounts } => {
            let body = json!({ "accounts": accounts });
            call(socket, Method::POST, "/v1/channels/retire", Some(body)).await
        }
        ChannelsCommand::Unlock { tx_hashes } => {
            let body = json!({ "tx_hashes": tx_hashes });
            call(socket, Method::POST, "/v1/channels/unlock", Some(body)).await
        }
    }
}

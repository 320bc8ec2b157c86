//! `signer-host channels …`: the channel-account pool, through a running host's API.

use hyper::Method;
use serde_json::json;

use super::{Api, call};

#[derive(Debug, clap::Subcommand)]
/// What to do with the pool.
pub enum ChannelsCommand {
    /// Idle, locked and expired counts.
    ///
    /// Example: `signer-host channels status --list`
    Status {
        /// Also list every account with its lock state.
        #[arg(long)]
        list: bool,
    },
    /// Lock a random idle channel account; prints it and the lock token `release`
    /// needs.
    ///
    /// Example: `signer-host channels acquire --lock-seconds 60 --json`
    Acquire {
        /// Lock lifetime in seconds (default: channels.default_lock_seconds).
        #[arg(long)]
        lock_seconds: Option<u64>,
    },
    /// Release a lock (failure path); needs the token acquire returned.
    ///
    /// Example: `signer-host channels release --account GCHANNEL... --token 3f9c...`
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
    ///
    /// Example: `signer-host channels activate GNEW1... GNEW2...`
    Activate {
        #[arg(required = true)]
        accounts: Vec<String>,
    },
    /// Retire withdrawn channel keys once their accounts are merged (after submitting
    /// the merge that `ensure --sequence` printed); a retired key never signs again.
    ///
    /// Example: `signer-host channels retire GOLD1... GOLD2...`
    Retire {
        #[arg(required = true)]
        accounts: Vec<String>,
    },
    /// Unlock the channels of transactions seen in a ledger (success path).
    ///
    /// Example: `signer-host channels unlock 4f3c9a...` (for a fee-bump, its inner hash)
    Unlock {
        /// Transaction hashes (hex); for fee-bumps, the inner transaction's hash.
        #[arg(required = true)]
        tx_hashes: Vec<String>,
    },
}

/// Runs one channels subcommand against the running host `api`.
pub async fn run(api: &Api, command: ChannelsCommand) -> anyhow::Result<()> {
    match command {
        ChannelsCommand::Status { list } => {
            let path = if list {
                "/v1/channels?accounts=true"
            } else {
                "/v1/channels"
            };
            call(api, Method::GET, path, None).await
        }
        ChannelsCommand::Acquire { lock_seconds } => {
            let body = json!({ "lock_seconds": lock_seconds });
            call(api, Method::POST, "/v1/channels/acquire", Some(body)).await
        }
        ChannelsCommand::Release { account, token } => {
            let body = json!({ "account": account, "lock_token": token });
            call(api, Method::POST, "/v1/channels/release", Some(body)).await
        }
        ChannelsCommand::Ensure(args) => super::channels_ensure::run(&api.socket, args).await,
        ChannelsCommand::Activate { accounts } => {
            let body = json!({ "accounts": accounts });
            call(api, Method::POST, "/v1/channels/activate", Some(body)).await
        }
        ChannelsCommand::Retire { accounts } => {
            let body = json!({ "accounts": accounts });
            call(api, Method::POST, "/v1/channels/retire", Some(body)).await
        }
        ChannelsCommand::Unlock { tx_hashes } => {
            let body = json!({ "tx_hashes": tx_hashes });
            call(api, Method::POST, "/v1/channels/unlock", Some(body)).await
        }
    }
}

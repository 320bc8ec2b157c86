//! `signer-host soroban authorize`: `POST /v1/soroban/authorize` from the command line.

use clap::Subcommand;
use hyper::Method;
use serde_json::json;

use super::{Api, argument_or_stdin, call};

#[derive(Debug, Subcommand)]
pub enum SorobanCommand {
    /// Sign a Soroban authorization entry (address credentials) for the account it
    /// names, the distribution account, valid through a ledger; only for contracts
    /// the enclave's policy lists.
    ///
    /// Example: `signer-host soroban authorize --expiration-ledger 51234567 AAAAAQAAAA...`
    Authorize {
        /// The entry, base64 XDR SorobanAuthorizationEntry; `-` or nothing reads
        /// standard input.
        entry: Option<String>,
        /// The last ledger the signature is valid for.
        #[arg(long)]
        expiration_ledger: u32,
        /// The key to sign with (default: the distribution account).
        #[arg(long)]
        signer: Option<String>,
        /// The network (default: the host's stellar.network_passphrase).
        #[arg(long)]
        network_passphrase: Option<String>,
    },
}

pub async fn run(api: &Api, command: SorobanCommand) -> anyhow::Result<()> {
    let SorobanCommand::Authorize {
        entry,
        expiration_ledger,
        signer,
        network_passphrase,
    } = command;
    let entry = argument_or_stdin(entry.as_deref(), "authorization entry")?;
    let mut body = json!({ "entry": entry, "signature_expiration_ledger": expiration_ledger });
    if let Some(signer) = signer {
        body["signer"] = json!(signer);
    }
    if let Some(network) = network_passphrase {
        body["network_passphrase"] = json!(network);
    }
    call(api, Method::POST, "/v1/soroban/authorize", Some(body)).await
}

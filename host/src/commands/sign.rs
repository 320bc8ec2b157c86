//! `signer-host sign`: `POST /v1/sign` from the command line.

use clap::Args;
use hyper::Method;
use serde_json::json;

use super::{Api, SocketArg, argument_or_stdin, call};

/// Sign a transaction envelope (base64 XDR: v0, v1 or fee-bump) with stored keys, each
/// a required signer; prints the signed envelope, its hash and the signatures.
///
/// Example: `signer-host sign --signer GCHANNEL... AAAAAgAAAA...` or
/// `build-tx | signer-host sign --signer GCHANNEL... --json | jq -r .transaction`
#[derive(Debug, Args)]
pub struct SignArgs {
    #[command(flatten)]
    pub target: SocketArg,
    /// The envelope, base64 XDR; `-` or nothing reads it from standard input.
    pub transaction: Option<String>,
    /// A key to sign with (repeatable, 1 to 20).
    #[arg(long = "signer", required = true)]
    pub signers: Vec<String>,
    /// The network the transaction is for (default: the host's stellar.network_passphrase).
    #[arg(long)]
    pub network_passphrase: Option<String>,
}

pub async fn run(api: &Api, args: SignArgs) -> anyhow::Result<()> {
    let transaction = argument_or_stdin(args.transaction.as_deref(), "transaction")?;
    let mut body = json!({ "transaction": transaction, "signers": args.signers });
    if let Some(network) = args.network_passphrase {
        body["network_passphrase"] = json!(network);
    }
    call(api, Method::POST, "/v1/sign", Some(body)).await
}

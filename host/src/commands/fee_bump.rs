//! `signer-host fee-bump`: `POST /v1/fee-bump` from the command line.

use anyhow::bail;
use clap::Args;
use hyper::Method;
use serde_json::json;

use super::{Api, SocketArg, argument_or_stdin, call};

/// Wrap a signed transaction (v1 or v0, sourced by an account this signer manages) in
/// a fee-bump the distribution account pays and signs; prints the fee-bump envelope,
/// its hash and the inner hash (the one `channels unlock` takes).
///
/// Example: `signer-host sign --signer GCHANNEL... "$TX" --json | jq -r .transaction |
/// signer-host fee-bump --base-fee 200`
#[derive(Debug, Args)]
pub struct FeeBumpArgs {
    #[command(flatten)]
    pub target: SocketArg,
    /// The signed inner envelope, base64 XDR; `-` or nothing reads standard input.
    pub transaction: Option<String>,
    /// Fee per operation, plus one for the fee-bump itself (stroops).
    #[arg(long, conflicts_with = "max_fee")]
    pub base_fee: Option<i64>,
    /// The whole fee-bump fee (stroops).
    #[arg(long)]
    pub max_fee: Option<i64>,
}

pub async fn run(api: &Api, args: FeeBumpArgs) -> anyhow::Result<()> {
    let transaction = argument_or_stdin(args.transaction.as_deref(), "transaction")?;
    let body = match (args.base_fee, args.max_fee) {
        (Some(base_fee), None) => json!({ "transaction": transaction, "base_fee": base_fee }),
        (None, Some(max_fee)) => json!({ "transaction": transaction, "max_fee": max_fee }),
        _ => bail!("give --base-fee or --max-fee"),
    };
    call(api, Method::POST, "/v1/fee-bump", Some(body)).await
}

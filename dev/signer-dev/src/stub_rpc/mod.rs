//! `signer-dev stub-rpc`: a Stellar RPC stand-in on loopback for tests and local runs.
//! It speaks JSON-RPC 2.0 with the published shapes of getHealth, getNetwork,
//! getLedgerEntries (accounts), sendTransaction and getTransaction, over a small
//! ledger that closes every `--ledger-ms` (see [`ledger`]). `scripts/check-stub-rpc.py`
//! reads it with the Python stellar-sdk, so the stub and this project's client cannot
//! agree on a shape Stellar RPC does not publish.
//!
//! One non-standard method, `stubLedger`, lists the ledger for tests.

mod ledger;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::stellar::envelope::{decode_bounded, decode_envelope, hex, network_id};
use serde_json::{Value, json};
use stellar_xdr::{
    AccountEntry, AccountEntryExt, AccountId, LedgerEntryData, LedgerKey, Limits, OperationMeta,
    PublicKey, SequenceNumber, String32, Thresholds, TransactionMeta, TransactionMetaV2,
    TransactionResult, Uint256, WriteXdr,
};

use ledger::{Admission, Ledger};

/// The protocol the stub reports.
const PROTOCOL_VERSION: u32 = 23;

/// Options of `signer-dev stub-rpc`.
#[derive(Debug, Clone)]
pub struct StubOptions {
    pub listen: SocketAddr,
    pub network_passphrase: String,
    /// Accounts that exist from the start, with their balance in stroops.
    pub funded: Vec<(String, i64)>,
    pub ledger_interval: Duration,
    /// Fault: the first N account reads report each sequence one lower than it is (an
    /// RPC node lagging behind the network), so a transaction built on them is refused
    /// with `txBAD_SEQ`.
    pub stale_sequence_reads: u32,
}

struct Stub {
    ledger: Mutex<Ledger>,
    stale_reads_left: Mutex<u32>,
    passphrase: String,
}

type Shared = Arc<Stub>;

/// Serves until the process is stopped; prints `stub-rpc listening on http://ADDR`.
pub async fn run(options: StubOptions) -> anyhow::Result<()> {
    let funded = options
        .funded
        .iter()
        .map(|(key, balance)| {
            stellar_strkey::ed25519::PublicKey::from_string(key)
                .map(|k| (k.0, *balance))
                .with_context(|| format!("--fund {key}: not a G... key"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let stub = Arc::new(Stub {
        ledger: Mutex::new(Ledger::new(
            network_id(&options.network_passphrase),
            common::now_unix_secs(),
            &funded,
        )),
        stale_reads_left: Mutex::new(options.stale_sequence_reads),
        passphrase: options.network_passphrase.clone(),
    });
    let closer = stub.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(options.ledger_interval);
        loop {
            ticks.tick().await;
            if let Ok(mut ledger) = closer.ledger.lock() {
                ledger.close(common::now_unix_secs());
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding {}", options.listen))?;
    println!("stub-rpc listening on http://{}", listener.local_addr()?);
    let app = Router::new().route("/", post(handle)).with_state(stub);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn handle(State(stub): State<Shared>, body: Bytes) -> axum::Json<Value> {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return axum::Json(error(&Value::Null, -32700, "parse error"));
    };
    let id = request["id"].clone();
    if request["jsonrpc"] != "2.0" || !request["method"].is_string() {
        return axum::Json(error(&id, -32600, "invalid request"));
    }
    let params = &request["params"];
    let answer = match request["method"].as_str().unwrap_or_default() {
        "getHealth" => Ok(stub.health()),
        "getNetwork" => Ok(json!({
            "passphrase": stub.passphrase,
            "protocolVersion": PROTOCOL_VERSION,
        })),
        "getLedgerEntries" => stub.ledger_entries(params),
        "sendTransaction" => stub.send_transaction(params),
        "getTransaction" => stub.get_transaction(params),
        "stubLedger" => Ok(stub.listing()),
        other => Err((-32601, format!("method not found: {other}"))),
    };
    axum::Json(match answer {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err((code, message)) => error(&id, code, &message),
    })
}

fn error(id: &Value, code: i64, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

type RpcResult = Result<Value, (i64, String)>;

fn invalid_params(message: impl Into<String>) -> (i64, String) {
    (-32602, message.into())
}

fn xdr_base64(value: &impl WriteXdr) -> String {
    B64.encode(value.to_xdr(Limits::none()).unwrap_or_default())
}

impl Stub {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn health(&self) -> Value {
        let ledger = self.ledger();
        json!({
            "status": "healthy",
            "latestLedger": ledger.sequence,
            "oldestLedger": 2,
            "ledgerRetentionWindow": 120_960,
        })
    }

    fn ledger_entries(&self, params: &Value) -> RpcResult {
        let keys = params["keys"]
            .as_array()
            .ok_or_else(|| invalid_params("keys: a list of base64 LedgerKey XDR"))?;
        let stale = {
            let mut left = self
                .stale_reads_left
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let stale = *left > 0;
            *left = left.saturating_sub(1);
            stale
        };
        let ledger = self.ledger();
        let mut entries = Vec::new();
        for key in keys {
            let text = key
                .as_str()
                .ok_or_else(|| invalid_params("keys: strings"))?;
            let bytes = B64
                .decode(text)
                .map_err(|e| invalid_params(format!("key: {e}")))?;
            let ledger_key: LedgerKey =
                decode_bounded(&bytes).map_err(|e| invalid_params(format!("key: {e}")))?;
            let LedgerKey::Account(account_key) = ledger_key else {
                continue;
            };
            let PublicKey::PublicKeyTypeEd25519(Uint256(raw)) = account_key.account_id.0.clone();
            let Some(account) = ledger.accounts.get(&raw) else {
                continue;
            };
            let sequence = if stale {
                account.sequence - 1
            } else {
                account.sequence
            };
            let entry = LedgerEntryData::Account(AccountEntry {
                account_id: AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(raw))),
                balance: account.balance,
                seq_num: SequenceNumber(sequence),
                num_sub_entries: 0,
                inflation_dest: None,
                flags: 0,
                home_domain: String32::default(),
                thresholds: Thresholds([1, 0, 0, 0]),
                signers: Default::default(),
                ext: AccountEntryExt::V0,
            });
            entries.push(json!({
                "key": text,
                "xdr": xdr_base64(&entry),
                "lastModifiedLedgerSeq": account.last_modified,
            }));
        }
        Ok(json!({ "entries": entries, "latestLedger": ledger.sequence }))
    }

    fn send_transaction(&self, params: &Value) -> RpcResult {
        let text = params["transaction"]
            .as_str()
            .ok_or_else(|| invalid_params("transaction: base64 TransactionEnvelope XDR"))?;
        let bytes = B64
            .decode(text)
            .map_err(|e| invalid_params(format!("transaction: {e}")))?;
        let envelope =
            decode_envelope(&bytes).map_err(|e| invalid_params(format!("transaction: {e}")))?;
        let mut ledger = self.ledger();
        let (hash, admission) = ledger.admit(envelope);
        let mut answer = json!({
            "hash": hex(&hash),
            "latestLedger": ledger.sequence,
            "latestLedgerCloseTime": ledger.close_time.to_string(),
        });
        let status = match admission {
            Admission::Pending => "PENDING",
            Admission::Duplicate => "DUPLICATE",
            Admission::TryAgainLater => "TRY_AGAIN_LATER",
            Admission::Error(result) => {
                answer["errorResultXdr"] = json!(xdr_base64(&result));
                "ERROR"
            }
        };
        answer["status"] = json!(status);
        Ok(answer)
    }

    fn get_transaction(&self, params: &Value) -> RpcResult {
        let hash_text = params["hash"]
            .as_str()
            .ok_or_else(|| invalid_params("hash: hex transaction hash"))?;
        let hash: [u8; 32] = common::unhex(hash_text)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| invalid_params("hash: 64 hex characters"))?;
        let ledger = self.ledger();
        let mut answer = json!({
            "txHash": hash_text,
            "latestLedger": ledger.sequence,
            "latestLedgerCloseTime": ledger.close_time.to_string(),
            "oldestLedger": 2,
            "oldestLedgerCloseTime": ledger.oldest_close_time.to_string(),
        });
        let Some(applied) = ledger.applied.get(&hash) else {
            answer["status"] = json!("NOT_FOUND");
            return Ok(answer);
        };
        answer["status"] = json!(if applied.succeeded() {
            "SUCCESS"
        } else {
            "FAILED"
        });
        answer["applicationOrder"] = json!(applied.application_order);
        answer["feeBump"] = json!(false);
        answer["envelopeXdr"] = json!(xdr_base64(&applied.envelope));
        answer["resultXdr"] = json!(xdr_base64(&applied.result));
        answer["resultMetaXdr"] = json!(xdr_base64(&empty_meta(&applied.result)));
        answer["ledger"] = json!(applied.ledger);
        answer["createdAt"] = json!(applied.close_time.to_string());
        Ok(answer)
    }

    /// `stubLedger`: every account and the number of applied transactions.
    fn listing(&self) -> Value {
        let ledger = self.ledger();
        let accounts: Vec<Value> = ledger
            .accounts
            .iter()
            .map(|(key, account)| {
                json!({
                    "account": format!("{}", stellar_strkey::ed25519::PublicKey(*key)),
                    "sequence": account.sequence.to_string(),
                    "balance": account.balance,
                    "sponsored": account.sponsor.is_some(),
                })
            })
            .collect();
        let succeeded = ledger.applied.values().filter(|a| a.succeeded()).count();
        json!({
            "accounts": accounts,
            "transactions": ledger.applied.len(),
            "successful_transactions": succeeded,
            "ledger": ledger.sequence,
        })
    }
}

/// A transaction meta with one (empty) entry per operation: the stub tracks balances,
/// not ledger-entry changes.
fn empty_meta(result: &TransactionResult) -> TransactionMeta {
    let operations = match &result.result {
        stellar_xdr::TransactionResultResult::TxSuccess(ops)
        | stellar_xdr::TransactionResultResult::TxFailed(ops) => ops.len(),
        _ => 0,
    };
    TransactionMeta::V2(TransactionMetaV2 {
        tx_changes_before: Default::default(),
        operations: vec![OperationMeta::default(); operations]
            .try_into()
            .unwrap_or_default(),
        tx_changes_after: Default::default(),
    })
}

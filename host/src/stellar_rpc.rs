//! A Stellar RPC client: JSON-RPC 2.0 over HTTP(S), in the shapes Stellar RPC publishes
//! (developers.stellar.org/docs/data/apis/rpc/api-reference), for the methods channel
//! provisioning needs. Nothing it reads is trusted for safety: the enclave checks what
//! it signs, and the ledger is only consulted to learn what already happened.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{Value, json};
use stellar_xdr::{
    AccountId, LedgerEntryData, LedgerKey, LedgerKeyAccount, Limits, PublicKey, ReadXdr,
    TransactionResult, TransactionResultResult, Uint256, WriteXdr,
};

/// Keys per `getLedgerEntries` call (Stellar RPC's limit is 200).
const MAX_KEYS_PER_CALL: usize = 200;
/// Largest answer read: a few hundred account entries, with room to spare.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// Why a call to Stellar RPC did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("Stellar RPC URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("Stellar RPC at {url} is unreachable ({method}): {reason}")]
    Unreachable {
        url: String,
        method: &'static str,
        reason: String,
    },
    #[error("Stellar RPC {method} gave no answer within {secs} s")]
    Timeout { method: &'static str, secs: u64 },
    #[error("Stellar RPC answered {method} with HTTP {status}")]
    Http { method: &'static str, status: u16 },
    #[error("Stellar RPC {method} failed with error {code}: {message}")]
    Rpc {
        method: &'static str,
        code: i64,
        message: String,
    },
    #[error("Stellar RPC {method}: unexpected answer: {reason}")]
    Shape {
        method: &'static str,
        reason: String,
    },
}

/// `getNetwork`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    pub passphrase: String,
    pub protocol_version: u32,
}

/// An account as the ledger holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountState {
    /// The sequence number of its last transaction; the next one uses this plus one.
    pub sequence: i64,
    /// Balance in stroops.
    pub balance: i64,
}

/// What `sendTransaction` did with a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submission {
    /// Accepted for a coming ledger (`PENDING`), or already known (`DUPLICATE`).
    Accepted,
    /// Not accepted now (`TRY_AGAIN_LATER`): the node is busy; the same envelope may be
    /// sent again.
    TryAgainLater,
    /// Refused (`ERROR`): the result code, e.g. `txBadSeq`.
    Refused { result: String },
}

/// What `getTransaction` knows of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionStatus {
    pub outcome: TransactionOutcome,
    /// Close time (Unix seconds) of the latest ledger the node knows: once it is past a
    /// transaction's `maxTime`, a transaction still `NOT_FOUND` can never be applied.
    pub latest_ledger_close_time: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionOutcome {
    /// Applied successfully in `ledger`.
    Success { ledger: u32 },
    /// Applied in `ledger` but failed: the result code (its fee was charged).
    Failed { ledger: u32, result: String },
    /// Not in any ledger the node keeps (yet, or ever).
    NotFound,
}

/// One Stellar RPC endpoint.
#[derive(Debug)]
pub struct StellarRpc {
    url: Uri,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    next_id: AtomicU64,
    timeout: Duration,
}

impl StellarRpc {
    /// A client for `url` (http or https; https verified against the web PKI roots).
    pub fn new(url: &str, timeout: Duration) -> Result<StellarRpc, RpcError> {
        let bad = |reason: String| RpcError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let parsed: Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
        match parsed.scheme_str() {
            Some("http" | "https") => {}
            other => return Err(bad(format!("scheme {other:?}; use http:// or https://"))),
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("TLS: {e}")))?
            .with_root_certificates(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(StellarRpc {
            url: parsed,
            client: Client::builder(TokioExecutor::new()).build(https),
            next_id: AtomicU64::new(1),
            timeout,
        })
    }

    /// The endpoint, for messages.
    pub fn url(&self) -> String {
        self.url.to_string()
    }

    /// `getNetwork`: the network the endpoint serves.
    pub async fn network(&self) -> Result<NetworkInfo, RpcError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            passphrase: String,
            protocol_version: u32,
        }
        let answer: Answer = self.call("getNetwork", json!({})).await?;
        Ok(NetworkInfo {
            passphrase: answer.passphrase,
            protocol_version: answer.protocol_version,
        })
    }

    /// `getLedgerEntries` for account entries: those that exist, by raw public key.
    pub async fn accounts(
        &self,
        public_keys: &[[u8; 32]],
    ) -> Result<HashMap<[u8; 32], AccountState>, RpcError> {
        const METHOD: &str = "getLedgerEntries";
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            entries: Option<Vec<Entry>>,
        }
        #[derive(Deserialize)]
        struct Entry {
            xdr: String,
        }
        let mut found = HashMap::new();
        for chunk in public_keys.chunks(MAX_KEYS_PER_CALL) {
            let keys = chunk
                .iter()
                .map(account_ledger_key)
                .collect::<Result<Vec<_>, _>>()?;
            let answer: Answer = self.call(METHOD, json!({ "keys": keys })).await?;
            for entry in answer.entries.unwrap_or_default() {
                let data = decode_xdr::<LedgerEntryData>(METHOD, &entry.xdr)?;
                let LedgerEntryData::Account(account) = data else {
                    return Err(shape(METHOD, "an entry that is not an account"));
                };
                let AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(key))) = account.account_id;
                if !chunk.contains(&key) {
                    return Err(shape(METHOD, "an account that was not asked for"));
                }
                found.insert(
                    key,
                    AccountState {
                        sequence: account.seq_num.0,
                        balance: account.balance,
                    },
                );
            }
        }
        Ok(found)
    }

    /// `sendTransaction` with a base64 envelope.
    pub async fn send_transaction(&self, envelope_base64: &str) -> Result<Submission, RpcError> {
        const METHOD: &str = "sendTransaction";
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            status: String,
            #[serde(default)]
            error_result_xdr: Option<String>,
        }
        let answer: Answer = self
            .call(METHOD, json!({ "transaction": envelope_base64 }))
            .await?;
        match answer.status.as_str() {
            "PENDING" | "DUPLICATE" => Ok(Submission::Accepted),
            "TRY_AGAIN_LATER" => Ok(Submission::TryAgainLater),
            "ERROR" => {
                let result = match answer.error_result_xdr {
                    Some(xdr) => result_code(&decode_xdr::<TransactionResult>(METHOD, &xdr)?),
                    None => "unknown".to_string(),
                };
                Ok(Submission::Refused { result })
            }
            other => Err(shape(METHOD, &format!("status {other:?}"))),
        }
    }

    /// `getTransaction` by hex hash.
    pub async fn transaction(&self, hash_hex: &str) -> Result<TransactionStatus, RpcError> {
        const METHOD: &str = "getTransaction";
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            status: String,
            latest_ledger_close_time: StringOrNumber,
            #[serde(default)]
            ledger: Option<u32>,
            #[serde(default)]
            result_xdr: Option<String>,
        }
        let answer: Answer = self.call(METHOD, json!({ "hash": hash_hex })).await?;
        let latest_ledger_close_time = answer.latest_ledger_close_time.parse(METHOD)?;
        let ledger = || answer.ledger.ok_or_else(|| shape(METHOD, "no ledger"));
        let outcome = match answer.status.as_str() {
            "SUCCESS" => TransactionOutcome::Success { ledger: ledger()? },
            "FAILED" => {
                let result = match &answer.result_xdr {
                    Some(xdr) => result_code(&decode_xdr::<TransactionResult>(METHOD, xdr)?),
                    None => "unknown".to_string(),
                };
                TransactionOutcome::Failed {
                    ledger: ledger()?,
                    result,
                }
            }
            "NOT_FOUND" => TransactionOutcome::NotFound,
            other => return Err(shape(METHOD, &format!("status {other:?}"))),
        };
        Ok(TransactionStatus {
            outcome,
            latest_ledger_close_time,
        })
    }

    /// One JSON-RPC 2.0 call with named parameters.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &'static str,
        params: Value,
    ) -> Result<T, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let request = hyper::Request::post(self.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| shape(method, &e.to_string()))?;
        let exchange = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|e| RpcError::Unreachable {
                        url: self.url(),
                        method,
                        reason: common::error_chain(&e),
                    })?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| RpcError::Unreachable {
                    url: self.url(),
                    method,
                    reason: e.to_string(),
                })?
                .to_bytes();
            if !status.is_success() {
                return Err(RpcError::Http {
                    method,
                    status: status.as_u16(),
                });
            }
            Ok(bytes)
        };
        let bytes = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| RpcError::Timeout {
                method,
                secs: self.timeout.as_secs(),
            })??;
        parse_answer(method, id, &bytes)
    }
}

/// The `result` of a JSON-RPC 2.0 answer to request `id`, or its `error`.
fn parse_answer<T: serde::de::DeserializeOwned>(
    method: &'static str,
    id: u64,
    bytes: &[u8],
) -> Result<T, RpcError> {
    #[derive(Deserialize)]
    struct Envelope {
        jsonrpc: String,
        id: Value,
        #[serde(default)]
        result: Option<Value>,
        #[serde(default)]
        error: Option<ErrorObject>,
    }
    #[derive(Deserialize)]
    struct ErrorObject {
        code: i64,
        message: String,
    }
    let answer: Envelope =
        serde_json::from_slice(bytes).map_err(|e| shape(method, &format!("not JSON-RPC: {e}")))?;
    if answer.jsonrpc != "2.0" || answer.id != json!(id) {
        return Err(shape(method, "not the answer to this request"));
    }
    if let Some(error) = answer.error {
        return Err(RpcError::Rpc {
            method,
            code: error.code,
            message: error.message,
        });
    }
    let result = answer.result.ok_or_else(|| shape(method, "no result"))?;
    serde_json::from_value(result).map_err(|e| shape(method, &e.to_string()))
}

/// Stellar RPC sends int64s and close times as strings; older nodes sent numbers.
#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrNumber {
    String(String),
    Number(u64),
}

impl StringOrNumber {
    fn parse(&self, method: &'static str) -> Result<u64, RpcError> {
        match self {
            StringOrNumber::Number(n) => Ok(*n),
            StringOrNumber::String(s) => s
                .parse()
                .map_err(|_| shape(method, &format!("{s:?} is not a number"))),
        }
    }
}

/// Base64 XDR of the ledger key of an account.
fn account_ledger_key(public_key: &[u8; 32]) -> Result<String, RpcError> {
    let key = LedgerKey::Account(LedgerKeyAccount {
        account_id: AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(*public_key))),
    });
    key.to_xdr(Limits::none())
        .map(|xdr| B64.encode(xdr))
        .map_err(|e| shape("getLedgerEntries", &e.to_string()))
}

fn decode_xdr<T: ReadXdr + WriteXdr>(method: &'static str, base64: &str) -> Result<T, RpcError> {
    let bytes = B64
        .decode(base64)
        .map_err(|e| shape(method, &format!("base64: {e}")))?;
    common::stellar::envelope::decode_bounded(&bytes).map_err(|e| shape(method, &e.to_string()))
}

/// A transaction result's code as Stellar names it (`txSuccess`, `txBadSeq`, ...),
/// with the first failing operation's code for `txFailed`.
pub fn result_code(result: &TransactionResult) -> String {
    let code = result.result.name();
    let code = format!("tx{}", code.strip_prefix("Tx").unwrap_or(code));
    let failed_op = match &result.result {
        TransactionResultResult::TxFailed(ops) => ops.iter().enumerate().find_map(|(index, op)| {
            operation_failure(op).map(|name| format!("op {index}: {name}"))
        }),
        _ => None,
    };
    match failed_op {
        Some(op) => format!("{code} ({op})"),
        None => code,
    }
}

/// The failure of an operation result, e.g. `CreateAccount AlreadyExist`; `None` for a
/// success, and for operations this project does not build.
fn operation_failure(result: &stellar_xdr::OperationResult) -> Option<String> {
    use stellar_xdr::{
        AccountMergeResult, BeginSponsoringFutureReservesResult, CreateAccountResult,
        EndSponsoringFutureReservesResult, OperationResult, OperationResultTr,
    };
    let OperationResult::OpInner(inner) = result else {
        return Some(result.name().to_string());
    };
    let outcome = match inner {
        OperationResultTr::CreateAccount(CreateAccountResult::Success)
        | OperationResultTr::BeginSponsoringFutureReserves(
            BeginSponsoringFutureReservesResult::Success,
        )
        | OperationResultTr::EndSponsoringFutureReserves(
            EndSponsoringFutureReservesResult::Success,
        )
        | OperationResultTr::AccountMerge(AccountMergeResult::Success(_)) => return None,
        OperationResultTr::CreateAccount(r) => r.name(),
        OperationResultTr::BeginSponsoringFutureReserves(r) => r.name(),
        OperationResultTr::EndSponsoringFutureReserves(r) => r.name(),
        OperationResultTr::AccountMerge(r) => r.name(),
        // Not built here: which arm is the success is not spelled out, so say nothing.
        _ => return None,
    };
    Some(format!("{} {outcome}", inner.name()))
}

fn shape(method: &'static str, reason: &str) -> RpcError {
    RpcError::Shape {
        method,
        reason: reason.to_string(),
    }
}

//! Channel accounts entering and leaving the ledger (`signer-host channels ensure`
//! drives these): `provision` signs the creation of pending accounts and `activate`
//! adds them to the pool once on the ledger; `withdraw` takes idle accounts out of the
//! pool, `merge` signs their merge into the distribution account, and `retire` retires
//! their keys once the accounts are gone.

use axum::extract::{ConnectInfo, State};
use common::stellar::envelope::hex;
use common::wire::ErrorCode;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::json::encode_base64;
use super::state::AppState;
use crate::signing::{MAX_PROVISIONING_WINDOW_SECS, ProvisionRequest};
use crate::store::{AuditEntry, KeyRole, KeyState, LedgerChange, PendingFor, StoreError, blocking};

/// Most accounts one withdrawal, activation or retirement may name.
const MAX_SETTLE: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionBody {
    /// Channel keys pending for this (creation or merge), 1 to 19.
    accounts: Vec<String>,
    /// The distribution account's current sequence number, as a decimal string (an
    /// int64, as Stellar RPC and Horizon write it).
    sequence: String,
    /// Seconds until the transaction's `maxTime`; at most 300, the default.
    #[serde(default = "default_window")]
    max_time_secs: u64,
    /// Fee per operation in stroops (default 100, the network's base fee).
    #[serde(default = "default_fee_per_operation")]
    fee_per_operation: u32,
    network_passphrase: Option<String>,
}

fn default_window() -> u64 {
    MAX_PROVISIONING_WINDOW_SECS
}

fn default_fee_per_operation() -> u32 {
    100
}

/// `POST /v1/channels/provision`: the sponsored creation of pending accounts.
pub async fn provision(
    state: State<AppState>,
    caller: ConnectInfo<Caller>,
    body: ApiJson<ProvisionBody>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    sign(LedgerChange::Creation, state, caller, body).await
}

/// `POST /v1/channels/merge`: the merge of withdrawn accounts into the distribution
/// account.
pub async fn merge(
    state: State<AppState>,
    caller: ConnectInfo<Caller>,
    body: ApiJson<ProvisionBody>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    sign(LedgerChange::Merge, state, caller, body).await
}

async fn sign(
    purpose: LedgerChange,
    State(state): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    ApiJson(body): ApiJson<ProvisionBody>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let network = state.signing.network(body.network_passphrase)?;
    let sequence: i64 = body.sequence.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("sequence: {:?} is not an int64", body.sequence),
        )
    })?;
    let request = ProvisionRequest {
        purpose,
        accounts: body.accounts.clone(),
        distribution_sequence: sequence,
        window_secs: body.max_time_secs,
        fee_per_operation: body.fee_per_operation,
    };
    let signed = state
        .signing
        .provision(caller.uid, &network, request)
        .await?;
    tracing::info!(
        accounts = body.accounts.len(),
        purpose = purpose.as_str(),
        tx_hash = %hex(&signed.tx_hash),
        uid = ?caller.uid,
        "channel transaction signed"
    );
    Ok(axum::Json(json!({
        "transaction": encode_base64(&signed.transaction),
        "tx_hash": hex(&signed.tx_hash),
        "max_time": signed.max_time,
        "distribution": signed.distribution,
        "accounts": body.accounts,
        "network_passphrase": network,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithdrawBody {
    /// How many idle accounts to take out of the pool.
    count: u32,
}

/// `POST /v1/channels/withdraw`: up to `count` idle accounts leave the pool (never a
/// locked one); their keys wait, pending, for the merge.
pub async fn withdraw(
    State(state): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    ApiJson(body): ApiJson<WithdrawBody>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    if body.count == 0 || body.count as usize > MAX_SETTLE {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("count: 1 to {MAX_SETTLE}, not {}", body.count),
        ));
    }
    let store = state.store.clone();
    let accounts = blocking(move || store.withdraw_idle(body.count, caller.uid)).await?;
    tracing::info!(count = accounts.len(), uid = ?caller.uid, "channel accounts withdrawn");
    Ok(axum::Json(json!({ "accounts": accounts })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettleBody {
    /// Channel accounts (`G...`): seen on the ledger (activate), or gone from it
    /// (retire).
    accounts: Vec<String>,
}

/// `POST /v1/channels/activate`: pending channel keys whose accounts exist on the
/// ledger join the pool.
pub async fn activate(
    state: State<AppState>,
    caller: ConnectInfo<Caller>,
    body: ApiJson<SettleBody>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    settle(LedgerChange::Creation, state, caller, body).await
}

/// `POST /v1/channels/retire`: withdrawn channel keys whose accounts were merged are
/// retired; a retired key never signs again.
pub async fn retire(
    state: State<AppState>,
    caller: ConnectInfo<Caller>,
    body: ApiJson<SettleBody>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    settle(LedgerChange::Merge, state, caller, body).await
}

/// Moves keys pending for `purpose` to where it leads (creation: active; merge:
/// retired). Keys already there are reported, not an error, so a re-run is harmless.
async fn settle(
    purpose: LedgerChange,
    State(state): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    ApiJson(body): ApiJson<SettleBody>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    if body.accounts.is_empty() || body.accounts.len() > MAX_SETTLE {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("accounts: 1 to {MAX_SETTLE}, not {}", body.accounts.len()),
        ));
    }
    let (target, kind, done, already_done) = match purpose {
        LedgerChange::Creation => (
            KeyState::Active,
            "channel_activated",
            "activated",
            "already_active",
        ),
        LedgerChange::Merge => (
            KeyState::Retired,
            "channel_retired",
            "retired",
            "already_retired",
        ),
    };
    let store = state.store.clone();
    let (settled, already) = blocking(move || {
        let mut settled = Vec::new();
        let mut already = Vec::new();
        for account in body.accounts {
            let key = store
                .key(&account)?
                .filter(|key| key.role == KeyRole::Channel)
                .ok_or_else(|| StoreError::UnknownChannelAccount(account.clone()))?;
            let waits_for = key.pending_for.unwrap_or(PendingFor::Creation);
            if key.state == target {
                already.push(account);
            } else if key.state == KeyState::Pending && waits_for == purpose.pending_for() {
                let audit = AuditEntry {
                    caller_uid: caller.uid,
                    public_key: Some(account.clone()),
                    tx_hash: key.provisioning.map(|p| p.tx_hash),
                    kind: kind.into(),
                    outcome: "ok".into(),
                    detail: None,
                };
                store.set_key_state(&account, target, &[audit])?;
                settled.push(account);
            } else {
                return Err(StoreError::InvalidKey(format!(
                    "{account} is {} (pending for {}), not pending for a {}",
                    key.state.as_str(),
                    waits_for.as_str(),
                    purpose.as_str()
                )));
            }
        }
        Ok((settled, already))
    })
    .await?;
    tracing::info!(count = settled.len(), state = target.as_str(), uid = ?caller.uid, "channel keys settled");
    Ok(axum::Json(json!({ done: settled, already_done: already })))
}

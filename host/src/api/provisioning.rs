//! `POST /v1/channels/provision` and `POST /v1/channels/activate`: creating channel
//! accounts on the ledger from pending channel keys (`signer-host channels ensure`
//! drives them).

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
use crate::store::{AuditEntry, KeyRole, KeyState, StoreError, blocking};

/// Most accounts one activation may name.
const MAX_ACTIVATE: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionBody {
    /// Pending channel keys to create, 1 to 19.
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

pub async fn provision(
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
        accounts: body.accounts.clone(),
        distribution_sequence: sequence,
        window_secs: body.max_time_secs,
        fee_per_operation: body.fee_per_operation,
    };
    let provisioned = state
        .signing
        .provision(caller.uid, &network, request)
        .await?;
    tracing::info!(
        accounts = body.accounts.len(),
        tx_hash = %hex(&provisioned.tx_hash),
        uid = ?caller.uid,
        "channel creation transaction signed"
    );
    Ok(axum::Json(json!({
        "transaction": encode_base64(&provisioned.transaction),
        "tx_hash": hex(&provisioned.tx_hash),
        "max_time": provisioned.max_time,
        "distribution": provisioned.distribution,
        "accounts": body.accounts,
        "network_passphrase": network,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateBody {
    /// Channel accounts (`G...`) seen on the ledger.
    accounts: Vec<String>,
}

/// Pending channel keys whose accounts exist on the ledger join the pool. Already
/// active ones are reported, not an error, so a re-run is harmless.
pub async fn activate(
    State(state): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    ApiJson(body): ApiJson<ActivateBody>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    if body.accounts.is_empty() || body.accounts.len() > MAX_ACTIVATE {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("accounts: 1 to {MAX_ACTIVATE}, not {}", body.accounts.len()),
        ));
    }
    let store = state.store.clone();
    let (activated, already_active) = blocking(move || {
        let mut activated = Vec::new();
        let mut already_active = Vec::new();
        for account in body.accounts {
            let key = store
                .key(&account)?
                .filter(|key| key.role == KeyRole::Channel)
                .ok_or_else(|| StoreError::UnknownChannelAccount(account.clone()))?;
            match key.state {
                KeyState::Active => already_active.push(account),
                KeyState::Retired => {
                    return Err(StoreError::InvalidKey(format!(
                        "{account} is retired; a retired key never signs again"
                    )));
                }
                KeyState::Pending => {
                    let audit = AuditEntry {
                        caller_uid: caller.uid,
                        public_key: Some(account.clone()),
                        tx_hash: key.provisioning.map(|p| p.tx_hash),
                        kind: "channel_activated".into(),
                        outcome: "ok".into(),
                        detail: None,
                    };
                    store.set_key_state(&account, KeyState::Active, &[audit])?;
                    activated.push(account);
                }
            }
        }
        Ok((activated, already_active))
    })
    .await?;
    tracing::info!(count = activated.len(), uid = ?caller.uid, "channel accounts activated");
    Ok(axum::Json(json!({
        "activated": activated,
        "already_active": already_active,
    })))
}

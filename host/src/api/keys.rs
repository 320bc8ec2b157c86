//! `GET /v1/keys` and `POST /v1/keys/generate`; importing (`POST /v1/keys`) is in
//! `key_import`.

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;

use common::wire::ErrorCode;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Caller};
use super::state::AppState;
use crate::store::blocking;
use crate::store::{
    AuditEntry, KeyFormat, KeyRecord, KeyRole, KeyState, NewKey, active_distribution,
};
use common::wire::messages::{KeyMaterial, MAX_GENERATED_KEYS, Request, Response};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    role: Option<KeyRole>,
}

pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let store = state.store.clone();
    let keys: Vec<KeyRecord> = blocking(move || store.list_keys(query.role)).await?;
    Ok(axum::Json(json!({ "keys": keys })))
}

/// Asks the enclave for new keys (`envelope` format, generated and sealed inside it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateKeys {
    role: KeyRole,
    count: u32,
    /// `active` (the default) or `pending`: channel keys whose accounts are not yet on
    /// the ledger (`signer-host channels ensure` creates them).
    #[serde(default = "active")]
    state: KeyState,
}

fn active() -> KeyState {
    KeyState::Active
}

/// How long the enclave may take for `count` keys: one KMS call each, a bounded number
/// at once, plus slack for KMS latency.
fn generation_timeout(count: u32) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(200) * count
}

/// One at a time: the check that no distribution key is active, and the insert.
static DISTRIBUTION_GENERATION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn generate(
    State(state): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    ApiJson(request): ApiJson<GenerateKeys>,
) -> Result<(StatusCode, axum::Json<serde_json::Value>), ApiError> {
    let GenerateKeys {
        role,
        count,
        state: key_state,
    } = request;
    check_generation(role, count, key_state)?;
    let _distribution_guard = if role == KeyRole::Distribution {
        if count != 1 {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("there is one distribution key; count must be 1, not {count}"),
            ));
        }
        let guard = DISTRIBUTION_GENERATION.lock().await;
        let store = state.store.clone();
        if let Some(active) = blocking(move || active_distribution(store.as_ref())).await? {
            return Err(ApiError::new(
                ErrorCode::KeyExists,
                format!(
                    "distribution key {} is active; a new one is generated only while none is",
                    active.public_key
                ),
            ));
        }
        Some(guard)
    } else {
        None
    };
    let answer = state
        .enclave
        .call_with_timeout(Request::GenerateKeys { count }, generation_timeout(count))
        .await
        .map_err(|e| ApiError::from(e.to_wire()))?;
    let keys = match answer {
        Response::KeysGenerated { keys } if keys.len() == count as usize => keys,
        other => {
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!("the enclave answered {count} keys with {other:?}"),
            ));
        }
    };
    let summary =
        store_sealed(&state, caller.uid, (role, key_state), keys, "key_generated").await?;
    tracing::info!(count, role = role.as_str(), uid = ?caller.uid, "keys generated in the enclave");
    Ok((StatusCode::CREATED, axum::Json(json!({ "keys": summary }))))
}

/// Stores keys the enclave sealed (`envelope` format) as `role` in `key_state`,
/// durably and with one audit row each (`kind`), before the caller hears of them; their
/// summaries for the answer.
pub(super) async fn store_sealed(
    state: &AppState,
    caller_uid: Option<u32>,
    (role, key_state): (KeyRole, KeyState),
    keys: Vec<KeyMaterial>,
    kind: &'static str,
) -> Result<Vec<serde_json::Value>, ApiError> {
    let new_keys: Vec<NewKey> = keys
        .into_iter()
        .map(|key| NewKey {
            public_key: key.public_key,
            role,
            format: KeyFormat::Envelope,
            kms_key_id: key.kms_key_id,
            kms_ciphertext: key.ciphertext,
            sealed_seed: key.sealed_seed,
            state: key_state,
            pending_for: None,
        })
        .collect();
    let summary: Vec<serde_json::Value> = new_keys
        .iter()
        .map(|key| {
            json!({
                "public_key": key.public_key,
                "role": key.role.as_str(),
                "format": key.format.as_str(),
                "state": key.state.as_str(),
            })
        })
        .collect();
    let store = state.store.clone();
    blocking(move || {
        // Durable (fsynced) before the answer, with its audit rows in the same commit:
        // a key the caller hears of is never lost, and none is stored unrecorded.
        let audit: Vec<AuditEntry> = new_keys
            .iter()
            .map(|key| key_audit(caller_uid, kind, key))
            .collect();
        store.insert_keys_audited(&new_keys, &audit)
    })
    .await?;
    Ok(summary)
}

/// What may be generated: 1 to 100 keys, active (or pending channel keys).
fn check_generation(role: KeyRole, count: u32, key_state: KeyState) -> Result<(), ApiError> {
    if key_state == KeyState::Retired
        || (key_state == KeyState::Pending && role != KeyRole::Channel)
    {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "state: a generated {} key is active{}, not {}",
                role.as_str(),
                if role == KeyRole::Channel {
                    " or pending"
                } else {
                    ""
                },
                key_state.as_str()
            ),
        ));
    }
    if !(1..=MAX_GENERATED_KEYS).contains(&count) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("count: 1 to {MAX_GENERATED_KEYS} keys at once, not {count}"),
        ));
    }
    Ok(())
}

/// The audit row recording that `key` was stored by `kind` (registered, generated).
pub(super) fn key_audit(caller_uid: Option<u32>, kind: &str, key: &NewKey) -> AuditEntry {
    AuditEntry {
        caller_uid,
        public_key: Some(key.public_key.clone()),
        tx_hash: None,
        kind: kind.into(),
        outcome: "ok".into(),
        detail: Some(format!("{} {}", key.role.as_str(), key.format.as_str())),
    }
}

//! `GET /v1/keys`, `POST /v1/keys`.

use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;

use common::wire::ErrorCode;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::json::decode_base64_or;
use super::state::AppState;
use crate::store::blocking;
use crate::store::{AuditEntry, KeyFormat, KeyRecord, KeyRole, KeyState, NewKey};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    role: Option<KeyRole>,
}

pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|r| ApiError::new(ErrorCode::BadRequest, r.body_text()))?;
    let store = state.store.clone();
    let keys: Vec<KeyRecord> = blocking(move || store.list_keys(query.role)).await?;
    Ok(axum::Json(json!({ "keys": keys })))
}

/// Registers an existing key in the `kms-direct` format: the operator encrypted the
/// secret with KMS themselves (context `{"pubkey": "G..."}`), so the host only ever
/// sees the ciphertext.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterKey {
    public_key: String,
    role: KeyRole,
    kms_key_id: String,
    /// Base64 of the KMS `CiphertextBlob`.
    ciphertext: String,
    #[serde(default = "default_format")]
    format: KeyFormat,
}

fn default_format() -> KeyFormat {
    KeyFormat::KmsDirect
}

pub async fn register(
    State(state): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    ApiJson(request): ApiJson<RegisterKey>,
) -> Result<(StatusCode, axum::Json<KeyRecord>), ApiError> {
    if request.format != KeyFormat::KmsDirect {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "only kms-direct keys can be registered; envelope keys are generated inside the enclave",
        ));
    }
    // The enclave signs only with keys under its one measured KMS key, named by ARN;
    // an alias or bare id would be stored only to be refused at every signature.
    request
        .kms_key_id
        .parse::<common::kms_key::KmsKeyArn>()
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("kms_key_id: {e}")))?;
    let ciphertext = decode_base64_or(ErrorCode::BadRequest, "ciphertext", &request.ciphertext)?;
    let key = NewKey {
        public_key: request.public_key.clone(),
        role: request.role,
        format: KeyFormat::KmsDirect,
        kms_key_id: request.kms_key_id,
        kms_ciphertext: ciphertext,
        sealed_seed: None,
        state: KeyState::Active,
    };
    let store = state.store.clone();
    let public_key = request.public_key;
    let stored = blocking(move || {
        store.insert_keys(std::slice::from_ref(&key))?;
        store.append_audit(&AuditEntry {
            caller_uid: caller.uid,
            public_key: Some(key.public_key.clone()),
            tx_hash: None,
            kind: "key_registered".into(),
            outcome: "ok".into(),
            detail: Some(format!("{} {}", key.role.as_str(), key.format.as_str())),
        })?;
        store.key(&key.public_key)
    })
    .await?;
    let stored = stored.ok_or_else(|| {
        ApiError::new(
            ErrorCode::Internal,
            format!("{public_key} vanished after insert"),
        )
    })?;
    tracing::info!(public_key = %stored.public_key, role = stored.role.as_str(), uid = ?caller.uid, "key registered");
    Ok((StatusCode::CREATED, axum::Json(stored)))
}

//! `POST /v1/keys/rewrap` and `POST /v1/keys/retire`: a key's later life. Rewrap moves
//! a key to the KMS key the enclave now seals under (a rotation), swapping its record
//! atomically; retire ends a key's use: a retired key never signs again.

use axum::extract::{ConnectInfo, State};
use common::wire::ErrorCode;
use common::wire::messages::{KeyFormat as WireKeyFormat, KeyMaterial, Request, Response};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::state::AppState;
use crate::store::{AuditEntry, KeyFormat, KeyRecord, KeyState, NewKey, blocking};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewrapKey {
    public_key: String,
    /// The KMS key (ARN) the operator expects the key to move to: the enclave's
    /// current key, in a build that still names the previous one.
    to_kms_key: String,
}

/// The stored record of `public_key`, or `unknown_key`.
async fn stored(state: &AppState, public_key: &str) -> Result<KeyRecord, ApiError> {
    let store = state.store.clone();
    let lookup = public_key.to_string();
    blocking(move || store.key(&lookup))
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownKey, format!("{public_key} is not stored")))
}

pub async fn rewrap(
    State(state): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    ApiJson(request): ApiJson<RewrapKey>,
) -> Result<axum::Json<KeyRecord>, ApiError> {
    let key = stored(&state, &request.public_key).await?;
    if key.state == KeyState::Retired {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "{} is retired; a retired key is never rewrapped",
                key.public_key
            ),
        ));
    }
    let expected_ciphertext = key.kms_ciphertext.clone();
    let answer = state
        .enclave
        .call(Request::RewrapKey {
            key: KeyMaterial::from(key.clone()),
        })
        .await
        .map_err(|e| ApiError::from(e.to_wire()))?;
    let Response::KeyRewrapped { key: rewrapped } = answer else {
        return Err(ApiError::new(
            ErrorCode::Internal,
            format!("the enclave answered a rewrap with {answer:?}"),
        ));
    };
    if rewrapped.kms_key_id != request.to_kms_key
        || rewrapped.public_key != key.public_key
        || rewrapped.format != WireKeyFormat::Envelope
    {
        return Err(ApiError::new(
            ErrorCode::KmsKeyMismatch,
            format!(
                "the enclave sealed {} under {}, not {}: run the rotation build, which \
                 names {} as its KMS key and the old key as the previous one",
                key.public_key, rewrapped.kms_key_id, request.to_kms_key, request.to_kms_key
            ),
        ));
    }
    let replacement = NewKey {
        public_key: key.public_key.clone(),
        role: key.role,
        format: KeyFormat::Envelope,
        kms_key_id: rewrapped.kms_key_id,
        kms_ciphertext: rewrapped.ciphertext,
        sealed_seed: rewrapped.sealed_seed,
        state: key.state,
        pending_for: key.pending_for,
    };
    let audit = AuditEntry {
        caller_uid: caller.uid,
        public_key: Some(key.public_key.clone()),
        tx_hash: None,
        kind: "key_rewrapped".into(),
        outcome: "ok".into(),
        detail: Some(format!("{} -> {}", key.kms_key_id, replacement.kms_key_id)),
    };
    let store = state.store.clone();
    blocking(move || store.replace_key_seal(&replacement, &expected_ciphertext, &[audit])).await?;
    tracing::info!(public_key = %key.public_key, to = %request.to_kms_key, uid = ?caller.uid, "key rewrapped");
    Ok(axum::Json(stored(&state, &key.public_key).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetireKey {
    public_key: String,
}

/// A retired key never signs again (the host never sends it to the enclave), and a
/// channel leaves the pool at once. To shrink the pool without stranding the accounts'
/// sponsored reserves, use `channels ensure` with a smaller count instead.
pub async fn retire(
    State(state): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    ApiJson(request): ApiJson<RetireKey>,
) -> Result<axum::Json<KeyRecord>, ApiError> {
    let key = stored(&state, &request.public_key).await?;
    if key.state != KeyState::Retired {
        let audit = AuditEntry {
            caller_uid: caller.uid,
            public_key: Some(key.public_key.clone()),
            tx_hash: None,
            kind: "key_retired".into(),
            outcome: "ok".into(),
            detail: Some(format!("{} {}", key.role.as_str(), key.state.as_str())),
        };
        let store = state.store.clone();
        let public_key = key.public_key.clone();
        blocking(move || store.set_key_state(&public_key, KeyState::Retired, &[audit])).await?;
        tracing::info!(public_key = %key.public_key, role = key.role.as_str(), uid = ?caller.uid, "key retired");
    }
    Ok(axum::Json(stored(&state, &key.public_key).await?))
}

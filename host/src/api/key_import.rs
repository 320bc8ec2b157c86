//! Importing existing keys. `POST /v1/keys` and `POST /v1/keys/verify`: a `kms-direct`
//! key is stored pending, and becomes active only once the enclave has checked it
//! (`crate::signing` verify_key). `POST /v1/keys/import/wallet-backend`:
//! stellar/wallet-backend's channel keys, re-sealed inside the enclave.

use std::time::Duration;

use common::wire::messages::{MAX_IMPORTED_KEYS, Request, Response, WalletBackendKey};

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use common::wire::ErrorCode;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::json::decode_base64_or;
use super::keys::{key_audit, store_sealed};
use super::state::AppState;
use crate::store::{
    KeyFormat, KeyRecord, KeyRole, KeyState, NewKey, PendingFor, StoreError, active_distribution,
    blocking,
};

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
        // Active only once the enclave has checked it.
        state: KeyState::Pending,
        pending_for: Some(PendingFor::Verification),
    };
    let store = state.store.clone();
    let is_distribution = key.role == KeyRole::Distribution;
    let stored = blocking(move || {
        if is_distribution && let Some(active) = active_distribution(store.as_ref())? {
            return Err(StoreError::DistributionExists {
                active: active.public_key,
                new: key.public_key,
            });
        }
        let audit = key_audit(caller.uid, "key_registered", &key);
        store.insert_keys_audited(std::slice::from_ref(&key), &[audit])?;
        store.key(&key.public_key)
    })
    .await?;
    let stored = stored.ok_or_else(|| {
        ApiError::new(
            ErrorCode::Internal,
            format!("{} vanished after insert", request.public_key),
        )
    })?;
    tracing::info!(public_key = %stored.public_key, role = stored.role.as_str(), uid = ?caller.uid, "key registered; verifying");
    verified(&state, caller.uid, stored).await
}

/// Re-checks an imported key still pending (after KMS was down, or the key policy was
/// fixed): `POST /v1/keys/verify`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyKey {
    public_key: String,
}

pub async fn verify(
    State(state): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    ApiJson(request): ApiJson<VerifyKey>,
) -> Result<(StatusCode, axum::Json<KeyRecord>), ApiError> {
    let store = state.store.clone();
    let public_key = request.public_key.clone();
    let key = blocking(move || store.key(&public_key))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::UnknownKey,
                format!("{} is not stored", request.public_key),
            )
        })?;
    let (_, answer) = verified(&state, caller.uid, key).await?;
    Ok((StatusCode::OK, answer))
}

/// Has the enclave check `key`; the stored record once it is active. A refusal keeps
/// it pending with the reason, and is answered with the enclave's code.
async fn verified(
    state: &AppState,
    caller_uid: Option<u32>,
    key: KeyRecord,
) -> Result<(StatusCode, axum::Json<KeyRecord>), ApiError> {
    let public_key = key.public_key.clone();
    if let Err(refusal) = state.signing.verify_key(caller_uid, key).await {
        tracing::warn!(%public_key, code = %refusal.code, error = %refusal.message, "imported key not verified; it stays pending");
        return Err(ApiError::new(
            refusal.code,
            format!(
                "{}; {public_key} is stored as pending and never signs until verified \
                 (POST /v1/keys/verify once the cause is fixed)",
                refusal.message
            ),
        ));
    }
    let store = state.store.clone();
    let stored = blocking(move || store.key(&public_key))
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "a verified key vanished"))?;
    tracing::info!(public_key = %stored.public_key, "imported key verified and active");
    Ok((StatusCode::CREATED, axum::Json(stored)))
}

/// stellar/wallet-backend's channel keys: `POST /v1/keys/import/wallet-backend`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalletBackendImport {
    /// Base64 of the KMS `CiphertextBlob` of wallet-backend's
    /// `CHANNEL_ACCOUNT_ENCRYPTION_PASSPHRASE` (context `purpose=wallet-backend-import`).
    passphrase_ciphertext: String,
    /// Rows of its `channel_accounts` table, 1 to 100.
    channels: Vec<WalletBackendChannel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalletBackendChannel {
    public_key: String,
    /// As wallet-backend stores it: base64(nonce ‖ AES-128-GCM ciphertext ‖ tag).
    encrypted_private_key: String,
}

/// The enclave opens each key with the passphrase (decrypted only inside it) and
/// re-seals it in the `envelope` format; the keys are stored active (the accounts exist
/// on the ledger already), all or none.
pub async fn wallet_backend(
    State(state): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    ApiJson(request): ApiJson<WalletBackendImport>,
) -> Result<(StatusCode, axum::Json<serde_json::Value>), ApiError> {
    let count = request.channels.len();
    if count == 0 || count > MAX_IMPORTED_KEYS {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("channels: 1 to {MAX_IMPORTED_KEYS} per request, not {count}"),
        ));
    }
    let passphrase_ciphertext = decode_base64_or(
        ErrorCode::BadRequest,
        "passphrase_ciphertext",
        &request.passphrase_ciphertext,
    )?;
    let channels = request
        .channels
        .into_iter()
        .map(|channel| {
            let field = format!("encrypted_private_key of {}", channel.public_key);
            let encrypted = decode_base64_or(
                ErrorCode::BadRequest,
                &field,
                channel.encrypted_private_key.trim(),
            )?;
            Ok(WalletBackendKey {
                public_key: channel.public_key,
                encrypted,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let request = Request::ImportWalletBackend {
        passphrase_ciphertext,
        channels,
    };
    let timeout = Duration::from_secs(30) + Duration::from_millis(200) * count as u32;
    let answer = state
        .enclave
        .call_with_timeout(request, timeout)
        .await
        .map_err(|e| ApiError::from(e.to_wire()))?;
    let keys = match answer {
        Response::KeysImported { keys } if keys.len() == count => keys,
        other => {
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!("the enclave answered an import of {count} keys with {other:?}"),
            ));
        }
    };
    let role_state = (KeyRole::Channel, KeyState::Active);
    let summary = store_sealed(&state, caller.uid, role_state, keys, "key_imported").await?;
    tracing::info!(count, uid = ?caller.uid, "wallet-backend channel keys imported");
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "keys": summary })),
    ))
}

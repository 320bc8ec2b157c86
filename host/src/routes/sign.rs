//! `POST /v1/sign`: sign a transaction envelope with keys this signer holds.

use axum::extract::{ConnectInfo, State};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::protocol::{KeyFormat as WireKeyFormat, KeyMaterial, Request, Response, SignatureInfo};
use common::stellar::{
    MAX_SIGNATURES, decode_envelope, hex, network_id, required_signers, sequence_owner,
};
use common::{ErrorCode, WireError};
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ApiJson, AppState, Caller, blocking};
use crate::store::{AuditEntry, KeyFormat, KeyRecord, KeyRole, KeyState, StoreError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// Base64 XDR of a TransactionEnvelope (v0, v1 or fee-bump).
    transaction: String,
    /// Public keys (`G...`) to sign with.
    signers: Vec<String>,
    /// Defaults to `stellar.network_passphrase`; the enclave refuses any network but its own.
    network_passphrase: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SignatureOut {
    public_key: String,
    /// Hex of the 4-byte signature hint.
    hint: String,
    /// Base64 of the 64-byte ed25519 signature.
    signature: String,
}

#[derive(Debug, Serialize)]
pub struct SignAnswer {
    /// Base64 XDR of the envelope with the new signatures appended.
    pub transaction: String,
    /// Hex of the signature payload hash, computed by the enclave.
    pub hash: String,
    pub signatures: Vec<SignatureOut>,
}

pub async fn sign(
    State(state): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    ApiJson(request): ApiJson<SignRequest>,
) -> Result<axum::Json<SignAnswer>, ApiError> {
    let network = network_of(&state, request.network_passphrase)?;
    let xdr = decode_base64(&request.transaction)?;
    // Decoded here too, untrusted as on the enclave side, to fail early and for lock
    // bookkeeping; the enclave decodes and hashes independently.
    let envelope = decode_envelope(&xdr).map_err(|e| ApiError(e.into()))?;
    let signed = sign_envelope(
        &state,
        caller,
        &network,
        (&envelope, xdr),
        request.signers,
        "sign",
    )
    .await?;
    Ok(axum::Json(signed))
}

pub fn network_of(state: &AppState, requested: Option<String>) -> Result<String, ApiError> {
    requested
        .or_else(|| state.network_passphrase.clone())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::BadRequest,
                "no network_passphrase in the request and none configured in [stellar]",
            )
        })
}

pub fn decode_base64(text: &str) -> Result<Vec<u8>, ApiError> {
    B64.decode(text.trim()).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedTransaction,
            format!("transaction is not base64: {e}"),
        )
    })
}

impl From<SignatureInfo> for SignatureOut {
    fn from(s: SignatureInfo) -> SignatureOut {
        SignatureOut {
            public_key: s.public_key,
            hint: hex(&s.hint),
            signature: B64.encode(&s.signature),
        }
    }
}

/// What the enclave needs to open a stored key: its public key and ciphertexts.
pub fn key_material(key: KeyRecord) -> KeyMaterial {
    KeyMaterial {
        public_key: key.public_key,
        format: match key.format {
            KeyFormat::KmsDirect => WireKeyFormat::KmsDirect,
            KeyFormat::Envelope => WireKeyFormat::Envelope,
        },
        kms_key_id: key.kms_key_id,
        ciphertext: key.kms_ciphertext,
        sealed_seed: key.sealed_seed,
    }
}

/// The enclave's policy, checked here first with the host's copy of its settings and
/// the stored distribution key, so a violation costs no round trip. Not a security
/// boundary: the enclave checks again.
fn precheck_policy(
    state: &AppState,
    envelope: &stellar_xdr::TransactionEnvelope,
    signers: &[String],
    distribution: Option<&str>,
) -> Result<(), ApiError> {
    let Some(distribution) =
        distribution.and_then(|d| stellar_strkey::ed25519::PublicKey::from_string(d).ok())
    else {
        return Ok(());
    };
    let policy = state
        .policy
        .signing_policy(distribution.0)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e))?;
    let now = common::now_unix_secs();
    let required = required_signers(envelope);
    for signer in signers {
        if let Ok(key) = stellar_strkey::ed25519::PublicKey::from_string(signer)
            && required.contains(&key.0)
        {
            policy
                .check(envelope, &key.0, now)
                .map_err(|v| ApiError(v.into()))?;
        }
    }
    Ok(())
}

/// Looks the signers up, has the enclave sign the envelope (given decoded and as the
/// XDR bytes to send), audits every outcome as `kind`, and keeps the channel whose
/// sequence the transaction consumes locked.
pub async fn sign_envelope(
    state: &AppState,
    caller: Caller,
    network: &str,
    (envelope, xdr): (&stellar_xdr::TransactionEnvelope, Vec<u8>),
    signers: Vec<String>,
    kind: &'static str,
) -> Result<SignAnswer, ApiError> {
    // Duplicates anywhere in the list, not only adjacent ones: one KMS call per key.
    let mut seen = std::collections::HashSet::new();
    let signers: Vec<String> = signers
        .into_iter()
        .filter(|s| seen.insert(s.clone()))
        .collect();
    if signers.is_empty() || signers.len() > MAX_SIGNATURES {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("name 1 to {MAX_SIGNATURES} signers, not {}", signers.len()),
        ));
    }
    let store = state.store.clone();
    let lookup = signers.clone();
    let want_distribution = state.policy.precheck;
    // One trip to the store for the signers and, for the pre-check, the distribution key.
    let (keys, distribution) = blocking(move || {
        let keys = lookup
            .iter()
            .map(|pk| store.key(pk).map(|k| (pk.clone(), k)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let distribution = if want_distribution {
            store
                .list_keys(Some(KeyRole::Distribution))?
                .into_iter()
                .find(|k| k.state == KeyState::Active)
                .map(|k| k.public_key)
        } else {
            None
        };
        Ok((keys, distribution))
    })
    .await?;
    // Every outcome from here on is audited, refusals by the host's own checks included.
    let outcome = async {
        precheck_policy(state, envelope, &signers, distribution.as_deref()).map_err(|e| e.0)?;
        let mut material = Vec::with_capacity(keys.len());
        for (public_key, key) in keys {
            let key = key.filter(|k| k.state == KeyState::Active).ok_or_else(|| {
                WireError::new(
                    ErrorCode::UnknownKey,
                    format!("{public_key} is not an active key of this signer"),
                )
            })?;
            material.push(key_material(key));
        }
        state
            .enclave
            .call(Request::Sign {
                network_passphrase: network.to_string(),
                transaction: xdr,
                signers: material,
            })
            .await
            .map_err(|e| e.to_wire())
    }
    .await;
    let (transaction, hash, signatures) = match &outcome {
        Ok(Response::Signed {
            transaction,
            hash,
            signatures,
        }) => (transaction.clone(), *hash, signatures.clone()),
        Ok(other) => {
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!("unexpected enclave answer {other:?}"),
            ));
        }
        Err(_) => (Vec::new(), [0u8; 32], Vec::new()),
    };
    let audit_outcome = match &outcome {
        Ok(_) => "ok".to_string(),
        Err(e) => e.code.to_string(),
    };
    let tx_hash = outcome.as_ref().ok().map(|_| hex(&hash));
    let audit_detail = outcome.as_ref().err().map(|e| e.message.clone());
    // Channel bookkeeping: the account whose sequence this transaction consumes stays
    // locked until the transaction can no longer land.
    let owner = sequence_owner(envelope, network_id(network)).ok();
    let store = state.store.clone();
    let locks = state.locks.clone();
    let audited = signers.clone();
    let signed = outcome.is_ok();
    blocking(move || {
        for public_key in &audited {
            store.append_audit(&AuditEntry {
                caller_uid: caller.uid,
                public_key: Some(public_key.clone()),
                tx_hash: tx_hash.clone(),
                kind: kind.into(),
                outcome: audit_outcome.clone(),
                detail: audit_detail.clone(),
            })?;
        }
        if signed && let Some(owner) = owner {
            let account = format!("{}", stellar_strkey::ed25519::PublicKey(owner.account));
            match locks.record_signed(&account, &hex(&owner.hash), owner.max_time) {
                Ok(_) | Err(StoreError::UnknownChannelAccount(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await?;
    outcome.map_err(ApiError)?;
    Ok(SignAnswer {
        transaction: B64.encode(&transaction),
        hash: hex(&hash),
        signatures: signatures.into_iter().map(SignatureOut::from).collect(),
    })
}

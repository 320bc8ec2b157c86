//! `POST /v1/soroban/authorize`: sign a Soroban authorization entry (address
//! credentials) for the account it names, which must be this signer's distribution
//! account; channel accounts never authorize Soroban invocations.

use axum::extract::{ConnectInfo, State};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::policy::PolicyViolation;
use common::protocol::{Request, Response};
use common::soroban::{authorizing_account, decode_auth_entry};
use common::stellar::hex;
use common::{ErrorCode, WireError};
use serde::{Deserialize, Serialize};

use super::sign::{SignatureOut, decode_base64, key_material, network_of};
use crate::api::{ApiError, ApiJson, AppState, Caller, blocking};
use crate::store::{AuditEntry, KeyRole, KeyState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    /// Base64 XDR of a SorobanAuthorizationEntry with address credentials, as simulation
    /// returns it.
    entry: String,
    /// The last ledger at which the signature is valid (the caller knows the current
    /// ledger; the signer does not).
    signature_expiration_ledger: u32,
    /// The account expected to authorize; must match the entry's address.
    signer: Option<String>,
    network_passphrase: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AuthorizeAnswer {
    /// Base64 XDR of the entry with its expiration ledger and signature filled in.
    entry: String,
    /// Hex of the authorization payload hash, computed by the enclave.
    hash: String,
    signature: SignatureOut,
}

pub async fn authorize(
    State(state): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    ApiJson(request): ApiJson<AuthorizeRequest>,
) -> Result<axum::Json<AuthorizeAnswer>, ApiError> {
    let network = network_of(&state, request.network_passphrase)?;
    let xdr = decode_base64(&request.entry)?;
    let entry = decode_auth_entry(&xdr).map_err(|e| ApiError(e.into()))?;
    let account_raw = authorizing_account(&entry).map_err(|e| ApiError(e.into()))?;
    let account = format!("{}", stellar_strkey::ed25519::PublicKey(account_raw));
    if let Some(signer) = &request.signer
        && *signer != account
    {
        return Err(ApiError::new(
            ErrorCode::NotARequiredSigner,
            format!("the entry authorizes for {account}, not {signer}"),
        ));
    }
    if request.signature_expiration_ledger == 0 {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "signature_expiration_ledger must be above 0",
        ));
    }
    let store = state.store.clone();
    let lookup = account.clone();
    let key = blocking(move || store.key(&lookup)).await?;
    // Every outcome from here on is audited, refusals by the host's own checks included.
    let outcome = async {
        let key = key.filter(|k| k.state == KeyState::Active).ok_or_else(|| {
            WireError::new(
                ErrorCode::UnknownKey,
                format!("{account} is not an active key of this signer"),
            )
        })?;
        // The host knows roles; the enclave knows only the distribution account and
        // treats every other key as a channel. Same rule, same answer, no round trip.
        if state.policy.precheck {
            if key.role == KeyRole::Channel {
                return Err(PolicyViolation {
                    rule: "channel_soroban_auth",
                    detail: "channel accounts never authorize Soroban invocations".into(),
                }
                .into());
            }
            // This key is the distribution account (the store says so); the enclave
            // checks against its own configured one.
            state
                .policy
                .signing_policy(account_raw)
                .map_err(|e| WireError::new(ErrorCode::Internal, e))?
                .check_soroban_auth(&entry, &account_raw)?;
        }
        state
            .enclave
            .call(Request::AuthorizeSoroban {
                network_passphrase: network,
                entry: xdr,
                signature_expiration_ledger: request.signature_expiration_ledger,
                signer: key_material(key),
            })
            .await
            .map_err(|e| e.to_wire())
    }
    .await;
    let store = state.store.clone();
    let audit = AuditEntry {
        caller_uid: caller.uid,
        public_key: Some(account),
        tx_hash: match &outcome {
            Ok(Response::SorobanAuthorized { hash, .. }) => Some(hex(hash)),
            _ => None,
        },
        kind: "soroban_auth".into(),
        outcome: match &outcome {
            Ok(_) => "ok".to_string(),
            Err(e) => e.code.to_string(),
        },
        detail: outcome.as_ref().err().map(|e| e.message.clone()),
    };
    blocking(move || store.append_audit(&audit)).await?;
    match outcome.map_err(ApiError)? {
        Response::SorobanAuthorized {
            entry,
            hash,
            signature,
        } => Ok(axum::Json(AuthorizeAnswer {
            entry: B64.encode(&entry),
            hash: hex(&hash),
            signature: SignatureOut::from(signature),
        })),
        other => Err(ApiError::new(
            ErrorCode::Internal,
            format!("unexpected enclave answer {other:?}"),
        )),
    }
}

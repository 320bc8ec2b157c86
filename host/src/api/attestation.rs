//! `GET /v1/attestation?nonce=<hex>`: a fresh attestation document from the enclave,
//! carrying the caller's nonce and (as `user_data`) the digest of the enclave's measured
//! settings, so a host service can check which build it is talking to (`signer-host
//! attestation verify`). The document has no public key: KMS can never decrypt
//! anything to it.

use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::wire::ErrorCode;
use common::wire::messages::{MAX_ATTESTATION_NONCE, Request, Response as EnclaveResponse};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::ApiQuery;
use super::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationQuery {
    /// The caller's challenge, hex, 1 to 64 bytes.
    nonce: String,
}

pub async fn attestation(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AttestationQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let nonce = common::unhex(&query.nonce)
        .filter(|n| (1..=MAX_ATTESTATION_NONCE).contains(&n.len()))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("nonce must be 1 to {MAX_ATTESTATION_NONCE} bytes of hex"),
            )
        })?;
    let answer = state
        .enclave
        .call(Request::Attest {
            nonce: nonce.clone(),
        })
        .await
        .map_err(|e| ApiError(e.to_wire()))?;
    match answer {
        EnclaveResponse::Attested {
            document,
            settings_digest,
        } => Ok(axum::Json(json!({
            "document": B64.encode(&document),
            "nonce": common::hex(&nonce),
            "user_data": common::hex(&settings_digest),
            "enclave_build": state.enclave.peer().map(|peer| peer.build.to_string()),
        }))),
        other => Err(ApiError::new(
            ErrorCode::Internal,
            format!("unexpected enclave answer to an attestation request: {other:?}"),
        )),
    }
}

//! `POST /v1/sign`: sign a transaction envelope with keys this signer holds.

use axum::extract::{ConnectInfo, State};
use common::stellar::envelope::{decode_envelope, hex};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::json::{SignatureOut, decode_base64, encode_base64};
use super::state::AppState;
use crate::signing::{SignKind, SignedEnvelope};

/// The request body.
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

/// The answer.
#[derive(Debug, Serialize)]
pub struct SignAnswer {
    /// Base64 XDR of the envelope with the new signatures appended.
    pub transaction: String,
    /// Hex of the signature payload hash, computed by the enclave.
    pub hash: String,
    /// One per signer.
    pub signatures: Vec<SignatureOut>,
}

impl From<SignedEnvelope> for SignAnswer {
    fn from(signed: SignedEnvelope) -> SignAnswer {
        SignAnswer {
            transaction: encode_base64(&signed.transaction),
            hash: hex(&signed.hash),
            signatures: signed
                .signatures
                .into_iter()
                .map(SignatureOut::from)
                .collect(),
        }
    }
}

pub async fn sign(
    State(state): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    ApiJson(request): ApiJson<SignRequest>,
) -> Result<axum::Json<SignAnswer>, ApiError> {
    let network = state.signing.network(request.network_passphrase)?;
    let xdr = decode_base64("transaction", &request.transaction)?;
    // Decoded here too, untrusted as on the enclave side, to fail early and for lock
    // bookkeeping; the enclave decodes and hashes independently.
    let envelope = decode_envelope(&xdr).map_err(|e| ApiError(e.into()))?;
    let signed = state
        .signing
        .sign_envelope(
            caller.uid,
            &network,
            (&envelope, xdr),
            request.signers,
            SignKind::Sign,
        )
        .await?;
    Ok(axum::Json(signed.into()))
}

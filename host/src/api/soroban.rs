//! `POST /v1/soroban/authorize`: sign a Soroban authorization entry (address
//! credentials) for the account it names, which must be this signer's distribution
//! account; channel accounts never authorize Soroban invocations.

use axum::extract::{ConnectInfo, State};
use common::stellar::envelope::hex;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::json::{SignatureOut, decode_base64, encode_base64};
use super::state::AppState;

/// The request body.
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

/// The answer.
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
    let network = state.signing.network(request.network_passphrase)?;
    let xdr = decode_base64("entry", &request.entry)?;
    let authorized = state
        .signing
        .authorize_soroban(
            caller.uid,
            network,
            xdr,
            request.signature_expiration_ledger,
            request.signer,
        )
        .await?;
    Ok(axum::Json(AuthorizeAnswer {
        entry: encode_base64(&authorized.entry),
        hash: hex(&authorized.hash),
        signature: SignatureOut::from(authorized.signature),
    }))
}

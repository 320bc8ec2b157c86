//! `POST /v1/fee-bump`: wrap a signed transaction in a fee-bump paid by the distribution
//! account, and have the enclave sign it.

use axum::extract::{ConnectInfo, State};
use common::stellar::envelope::{decode_envelope, hex};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::json::decode_base64;
use super::sign::SignAnswer;
use super::state::AppState;
use crate::signing::FeeChoice;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeeBumpRequest {
    /// Base64 XDR of a signed v1 (or v0) transaction envelope.
    transaction: String,
    /// Fee per operation: the fee-bump pays `base_fee × (operations + 1)`.
    base_fee: Option<i64>,
    /// Or the total fee, directly.
    max_fee: Option<i64>,
    network_passphrase: Option<String>,
}

/// The answer.
#[derive(Debug, Serialize)]
pub struct FeeBumpAnswer {
    #[serde(flatten)]
    signed: SignAnswer,
    /// Hash of the inner transaction (what channel unlocks match).
    inner_hash: String,
    fee: i64,
    fee_source: String,
}

pub async fn fee_bump(
    State(state): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    ApiJson(request): ApiJson<FeeBumpRequest>,
) -> Result<axum::Json<FeeBumpAnswer>, ApiError> {
    let network = state.signing.network(request.network_passphrase)?;
    let envelope = decode_envelope(&decode_base64("transaction", &request.transaction)?)
        .map_err(|e| ApiError(e.into()))?;
    let fee = FeeChoice {
        base_fee: request.base_fee,
        max_fee: request.max_fee,
    };
    let bumped = state
        .signing
        .fee_bump(caller.uid, &network, envelope, fee)
        .await?;
    Ok(axum::Json(FeeBumpAnswer {
        signed: bumped.signed.into(),
        inner_hash: hex(&bumped.inner_hash),
        fee: bumped.fee,
        fee_source: bumped.fee_source,
    }))
}

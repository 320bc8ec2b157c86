//! `/v1/channels…`: the channel-account pool.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use common::wire::ErrorCode;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::json;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::state::AppState;
use crate::store::{ChannelLease, ChannelSummary, Unclaimed, UnlockOutcome};
use crate::store::{blocking, committed};

/// Most hashes one unlock call may carry.
const MAX_UNLOCK_HASHES: usize = 1000;

/// Parses a JSON body that may be absent altogether.
fn optional_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    /// Lock lifetime; `channels.default_lock_seconds` when absent.
    lock_seconds: Option<u64>,
}

pub async fn acquire(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<axum::Json<ChannelLease>, ApiError> {
    let request: AcquireRequest = optional_body(&body)?;
    let duration = request.lock_seconds.map(Duration::from_secs);
    let lease = committed(state.store.submit_acquire(duration))
        .await
        .map(Unclaimed::claim);
    crate::metrics::global().channel_acquisition(lease.as_ref().err().map(|e| e.code));
    Ok(axum::Json(lease?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    account: String,
    lock_token: String,
}

pub async fn release(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ReleaseRequest>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    committed(
        state
            .store
            .submit_release(&request.account, &request.lock_token),
    )
    .await?;
    Ok(axum::Json(json!({ "released": request.account })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlockRequest {
    /// Hashes (hex) of transactions seen in a ledger; for fee-bumps, the inner hash.
    tx_hashes: Vec<String>,
}

pub async fn unlock(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<UnlockRequest>,
) -> Result<axum::Json<UnlockOutcome>, ApiError> {
    if request.tx_hashes.is_empty() || request.tx_hashes.len() > MAX_UNLOCK_HASHES {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "tx_hashes must hold 1 to {MAX_UNLOCK_HASHES} hashes, got {}",
                request.tx_hashes.len()
            ),
        ));
    }
    if let Some(bad) = request
        .tx_hashes
        .iter()
        .find(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("{bad:?} is not a transaction hash (64 hex characters)"),
        ));
    }
    let locks = state.store.clone();
    let outcome = blocking(move || locks.unlock_by_tx_hashes(&request.tx_hashes)).await?;
    Ok(axum::Json(outcome))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryQuery {
    /// Include every account and its lock state.
    #[serde(default)]
    accounts: bool,
}

pub async fn summary(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<SummaryQuery>,
) -> Result<axum::Json<ChannelSummary>, ApiError> {
    let locks = state.store.clone();
    let summary = blocking(move || locks.summary(query.accounts)).await?;
    Ok(axum::Json(summary))
}

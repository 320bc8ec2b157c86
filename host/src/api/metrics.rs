//! `GET /metrics`: the Prometheus text format (see [`crate::metrics`]).

use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use common::wire::ErrorCode;
use common::wire::messages::{Request, Response as EnclaveResponse};

use super::error::ApiError;
use super::state::AppState;
use crate::metrics::{Scrape, global};
use crate::store::blocking;

/// How long a scrape waits for the enclave's counters before rendering without them
/// (`signer_enclave_up 0`).
const ENCLAVE_STATS_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn metrics(State(state): State<AppState>) -> Response {
    let enclave = match state
        .enclave
        .call_with_timeout(Request::Stats, ENCLAVE_STATS_TIMEOUT)
        .await
    {
        Ok(EnclaveResponse::Stats(stats)) => Some(stats),
        _ => None,
    };
    let store = state.store.clone();
    let channels = blocking(move || store.summary(false)).await.ok();
    let scrape = Scrape {
        enclave,
        channels,
        enclave_build: state.enclave.peer().map(|peer| peer.build.to_string()),
    };
    match global().render(scrape) {
        Ok(text) => ([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => {
            ApiError::new(ErrorCode::Internal, "rendering the metrics failed").into_response()
        }
    }
}

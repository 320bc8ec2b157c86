//! Every route of the host API, in one place.

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::wire::ErrorCode;

use super::error::ApiError;
use super::state::AppState;
use super::{channels, fee_bump, health, keys, sign, soroban};

/// The API with its error fallbacks and body limit.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/ping", get(health::ping))
        .route("/v1/sign", post(sign::sign))
        .route("/v1/fee-bump", post(fee_bump::fee_bump))
        .route("/v1/soroban/authorize", post(soroban::authorize))
        .route("/v1/keys", get(keys::list).post(keys::register))
        .route("/v1/channels", get(channels::summary))
        .route("/v1/channels/acquire", post(channels::acquire))
        .route("/v1/channels/release", post(channels::release))
        .route("/v1/channels/unlock", post(channels::unlock))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_while_shutting_down,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Once shutdown has begun, requests that arrive on connections still open are
/// refused with `shutting_down` (503) instead of starting work that may be cut off;
/// requests already running finish.
async fn refuse_while_shutting_down(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if state.shutdown.is_cancelled() {
        return ApiError::new(
            ErrorCode::ShuttingDown,
            "signer-host is shutting down; retry on another instance or after the restart",
        )
        .into_response();
    }
    next.run(request).await
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

//! Every route of the host API, in one place.

use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::wire::ErrorCode;

use super::callers::{CallerPolicy, authorize_and_log};
use super::error::ApiError;
use super::state::AppState;
use super::{
    attestation, channels, fee_bump, health, key_import, key_lifecycle, keys, metrics,
    provisioning, sign, soroban,
};

/// What a request body may be: at most `max_bytes`, all of it within `read_timeout`
/// of the headers.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub read_timeout: Duration,
}

/// The API with its error fallbacks, body limits and caller allow-lists.
pub fn router(state: AppState, body: BodyLimits, callers: CallerPolicy) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/ping", get(health::ping))
        .route("/v1/attestation", get(attestation::attestation))
        .route("/v1/sign", post(sign::sign))
        .route("/v1/fee-bump", post(fee_bump::fee_bump))
        .route("/v1/soroban/authorize", post(soroban::authorize))
        .route("/v1/keys", get(keys::list).post(key_import::register))
        .route("/v1/keys/generate", post(keys::generate))
        .route("/v1/keys/verify", post(key_import::verify))
        .route("/v1/keys/rewrap", post(key_lifecycle::rewrap))
        .route("/v1/keys/retire", post(key_lifecycle::retire))
        .route(
            "/v1/keys/import/wallet-backend",
            post(key_import::wallet_backend),
        )
        .route("/v1/channels", get(channels::summary))
        .route("/v1/channels/acquire", post(channels::acquire))
        .route("/v1/channels/release", post(channels::release))
        .route("/v1/channels/unlock", post(channels::unlock))
        .route("/v1/channels/provision", post(provisioning::provision))
        .route("/v1/channels/activate", post(provisioning::activate))
        .route("/v1/channels/withdraw", post(provisioning::withdraw))
        .route("/v1/channels/merge", post(provisioning::merge))
        .route("/v1/channels/retire", post(provisioning::retire))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(body.max_bytes))
        .layer(axum::middleware::from_fn(move |request, next| {
            read_body_within(body, request, next)
        }))
        // Outermost: during shutdown new work is refused before its body is read.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_while_shutting_down,
        ))
        // Outermost of all: a caller the allow-lists refuse has no body read, and every
        // request, refused or not, gets its log line.
        .layer(axum::middleware::from_fn_with_state(
            callers,
            authorize_and_log,
        ))
        .with_state(state)
}

/// Reads the whole body before any handler runs, within the deadline: a caller that
/// sends headers and then trickles (or withholds) the body gets `request_timeout` and
/// loses the connection instead of holding it. Every route takes a small JSON body,
/// so buffering it here costs nothing.
async fn read_body_within(limits: BodyLimits, request: Request, next: Next) -> Response {
    // Nothing to wait for (a GET, or an empty body): no deadline, no copy.
    if axum::body::HttpBody::is_end_stream(request.body()) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    match buffer_body(limits, body).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(refusal) => refusal.into_response(),
    }
}

async fn buffer_body(limits: BodyLimits, body: axum::body::Body) -> Result<bytes::Bytes, ApiError> {
    let read =
        http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limits.max_bytes));
    match tokio::time::timeout(limits.read_timeout, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the request body exceeds {} bytes (api.max_body_bytes)",
                limits.max_bytes
            ),
        )),
        Ok(Err(e)) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("reading the request body: {e}"),
        )),
        Err(_) => Err(ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} ms of its headers \
                 (api.body_read_timeout_ms)",
                limits.read_timeout.as_millis()
            ),
        )),
    }
}

/// Once shutdown has begun, requests that would start new work (signing, key
/// registration, acquiring a channel) and arrive on connections still open are refused
/// with `shutting_down` (503); requests already running finish. Reads (health,
/// readiness, listings) and the clean-up calls (release, unlock) still answer, so
/// probes see the drain and callers can free what they hold.
async fn refuse_while_shutting_down(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let clean_up = matches!(
        request.uri().path(),
        "/v1/channels/release" | "/v1/channels/unlock"
    );
    let starts_work = request.method() != axum::http::Method::GET && !clean_up;
    if starts_work && state.shutdown.is_cancelled() {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use common::wire::transport::Endpoint;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    use super::router;
    use crate::api::{AppState, Shared};
    use crate::enclave_client::EnclaveClient;
    use crate::signing::Signing;
    use crate::store::{LockLimits, SqliteStore};

    fn state(dir: &std::path::Path) -> AppState {
        let stop = CancellationToken::new();
        let enclave = EnclaveClient::start(
            Endpoint::Unix(dir.join("no-enclave.sock")),
            Duration::from_secs(1),
            Duration::from_millis(100),
            stop,
        );
        let store = Arc::new(
            SqliteStore::open(
                &dir.join("signer.db"),
                LockLimits::default(),
                Duration::from_secs(1),
            )
            .unwrap(),
        );
        AppState::new(Shared {
            signing: Signing::new(
                enclave.clone(),
                store.clone(),
                None,
                &Default::default(),
                true,
            )
            .unwrap(),
            enclave,
            store,
            shutdown: CancellationToken::new(),
            credentials: None,
            canary: None,
        })
    }

    async fn status_and_code(app: axum::Router, path: &str) -> (StatusCode, String) {
        answer(app, Request::get(path).body(Body::empty()).unwrap()).await
    }

    async fn call(app: axum::Router, path: &str, body: &'static str) -> (StatusCode, String) {
        let request = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        answer(app, request).await
    }

    async fn answer(app: axum::Router, request: Request<Body>) -> (StatusCode, String) {
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        (
            status,
            body["error"]["code"].as_str().unwrap_or("").to_string(),
        )
    }

    #[tokio::test]
    async fn requests_after_shutdown_began_are_refused_with_shutting_down() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let shutdown = state.shutdown.clone();
        let app = router(
            state,
            super::BodyLimits {
                max_bytes: 1024,
                read_timeout: Duration::from_secs(5),
            },
            crate::api::callers::CallerPolicy::new(crate::config::CallerRules::default()),
        );
        assert_eq!(
            status_and_code(app.clone(), "/v1/channels").await,
            (StatusCode::OK, String::new())
        );
        shutdown.cancel();
        // Reads and clean-up still answer during the drain.
        assert_eq!(
            status_and_code(app.clone(), "/v1/channels").await,
            (StatusCode::OK, String::new())
        );
        assert_eq!(
            call(
                app.clone(),
                "/v1/channels/unlock",
                r#"{"tx_hashes": ["0000000000000000000000000000000000000000000000000000000000000000"]}"#
            )
            .await,
            (StatusCode::OK, String::new())
        );
        // New work is refused.
        assert_eq!(
            call(app, "/v1/channels/acquire", "{}").await,
            (StatusCode::SERVICE_UNAVAILABLE, "shutting_down".to_string())
        );
    }
}

//! The host API: HTTP/JSON over a Unix socket. Every error is
//! `{"error": {"code": "...", "message": "..."}}` with a stable code.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::protocol::{BuildFlavor, Request, Response as EnclaveResponse};
use common::{ErrorCode, WireError};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::enclave_client::EnclaveClient;
use crate::store::{ChannelLocks, Store, StoreError};

/// How long `/readyz` waits for the enclave before calling it not ready.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct AppState {
    pub enclave: EnclaveClient,
    pub store: Store,
    /// The channel pool; SQLite today, the same store as `store`.
    pub locks: std::sync::Arc<dyn ChannelLocks>,
    /// `stellar.network_passphrase`, for sign requests that name no network.
    pub network_passphrase: Option<String>,
    /// The signing-policy settings the host pre-checks with.
    pub policy: crate::config::PolicyConfig,
}

impl AppState {
    pub fn new(enclave: EnclaveClient, store: Store) -> AppState {
        let locks = std::sync::Arc::new(store.clone());
        AppState {
            enclave,
            store,
            locks,
            network_passphrase: None,
            policy: crate::config::PolicyConfig::default(),
        }
    }
}

/// Who is calling, from the Unix socket's peer credentials (SO_PEERCRED).
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for Caller
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(cred) => Caller {
                uid: Some(cred.uid()),
                pid: cred.pid(),
            },
            Err(_) => Caller::default(),
        }
    }
}

/// Runs a blocking store call off the async workers.
pub async fn blocking<T, F>(call: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(|e| ApiError(e.to_wire())),
        Err(e) => Err(ApiError::new(
            ErrorCode::Internal,
            format!("store task failed: {e}"),
        )),
    }
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    use axum::routing::post;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/ping", get(ping))
        .route("/v1/sign", axum::routing::post(crate::routes::sign::sign))
        .route(
            "/v1/fee-bump",
            axum::routing::post(crate::routes::fee_bump::fee_bump),
        )
        .route(
            "/v1/soroban/authorize",
            post(crate::routes::soroban::authorize),
        )
        .route(
            "/v1/keys",
            get(crate::routes::keys::list).post(crate::routes::keys::register),
        )
        .route("/v1/channels", get(crate::routes::channels::summary))
        .route(
            "/v1/channels/acquire",
            post(crate::routes::channels::acquire),
        )
        .route(
            "/v1/channels/release",
            post(crate::routes::channels::release),
        )
        .route("/v1/channels/unlock", post(crate::routes::channels::unlock))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// An API error: rendered as the JSON error body with the code's HTTP status.
#[derive(Debug)]
pub struct ApiError(pub WireError);

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(WireError::new(code, message))
    }
}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({"error": {"code": self.0.code, "message": self.0.message}});
        (status, axum::Json(body)).into_response()
    }
}

/// `axum::Json`, but with rejections in our error format.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let code = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ErrorCode::PayloadTooLarge
    } else {
        ErrorCode::BadRequest
    };
    ApiError::new(code, rejection.body_text())
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

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(json!({"status": "ok"}))
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

async fn readyz(State(state): State<AppState>) -> Response {
    let mut checks = Vec::new();
    let store = state.store.clone();
    let store_check = blocking(move || store.check()).await;
    checks.push(Check {
        name: "store",
        ok: store_check.is_ok(),
        detail: match store_check {
            Ok(()) => format!("{} answers", state.store.path().display()),
            Err(e) => e.0.message,
        },
    });
    let started = Instant::now();
    let probe = state
        .enclave
        .call_with_timeout(Request::Ping { delay_ms: 0 }, READY_PROBE_TIMEOUT)
        .await;
    checks.push(match (probe, state.enclave.peer()) {
        (Ok(_), Some(peer)) => Check {
            name: "enclave",
            ok: true,
            detail: format!(
                "{} answered in {} µs ({} build, version {})",
                state.enclave.endpoint(),
                started.elapsed().as_micros(),
                peer.build,
                peer.software_version
            ),
        },
        (Ok(_), None) => Check {
            name: "enclave",
            ok: false,
            detail: "connection dropped right after answering".to_string(),
        },
        (Err(e), _) => Check {
            name: "enclave",
            ok: false,
            detail: e.to_string(),
        },
    });
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": checks,
    });
    (status, axum::Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PingQuery {
    /// Test aid, honoured by mock enclaves only.
    #[serde(default)]
    delay_ms: u32,
}

#[derive(Debug, Serialize)]
struct PingAnswer {
    enclave_build: BuildFlavor,
    round_trip_us: u128,
}

/// A no-op round trip through the enclave: the benchmark's unit of work.
async fn ping(
    State(state): State<AppState>,
    query: Result<Query<PingQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<PingAnswer>, ApiError> {
    let Query(query) = query.map_err(|r| ApiError::new(ErrorCode::BadRequest, r.body_text()))?;
    let started = Instant::now();
    let answer = state
        .enclave
        .call(Request::Ping {
            delay_ms: query.delay_ms,
        })
        .await
        .map_err(|e| ApiError(e.to_wire()))?;
    match answer {
        EnclaveResponse::Pong { build } => Ok(axum::Json(PingAnswer {
            enclave_build: build,
            round_trip_us: started.elapsed().as_micros(),
        })),
        other => Err(ApiError::new(
            ErrorCode::Internal,
            format!("unexpected enclave answer to a ping: {other:?}"),
        )),
    }
}

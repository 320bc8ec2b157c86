//! Every route of the host API, in one place.

use axum::Router;
use axum::routing::{get, post};
use common::wire::ErrorCode;

use super::callers::CallerPolicy;
use super::error::ApiError;
use super::gate::{BodyBudget, BodyLimits, Gate, gate};
use super::state::AppState;
use super::{
    attestation, channels, fee_bump, health, key_import, key_lifecycle, keys, metrics,
    provisioning, sign, soroban,
};

/// The API with its error fallbacks, and [`gate`] (caller allow-lists, the drain, body
/// limits, the log line) in front of every route.
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
        .layer(axum::middleware::from_fn_with_state(
            Gate {
                callers,
                body,
                budget: BodyBudget::new(&body),
                shutdown: state.shutdown.clone(),
            },
            gate,
        ))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route for {}", super::gate::shown_path(uri.path())),
    )
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
            readiness: Default::default(),
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
            crate::api::BodyLimits {
                max_bytes: 1024,
                read_timeout: Duration::from_secs(5),
                buffered_max_bytes: 4096,
            },
            crate::api::callers::CallerPolicy::new(crate::config::CallerRules::default()),
        );
        assert_eq!(
            status_and_code(app.clone(), "/v1/channels").await,
            (StatusCode::OK, String::new())
        );
        shutdown.cancel();
        // Reads (HEAD too, as probes send it) and clean-up still answer during the drain.
        assert_eq!(
            status_and_code(app.clone(), "/v1/channels").await,
            (StatusCode::OK, String::new())
        );
        let probe = Request::head("/healthz").body(Body::empty()).unwrap();
        assert_eq!(answer(app.clone(), probe).await.0, StatusCode::OK);
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

//! `GET /healthz`, `GET /readyz`, `GET /v1/ping`: is the host alive, can it serve, and
//! a no-op round trip through the enclave.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::wire::ErrorCode;
use common::wire::messages::{BuildFlavor, Request, Response as EnclaveResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::ApiError;
use super::extract::ApiQuery;
use super::state::AppState;
use crate::readiness::Verdict;
use crate::store::blocking;

/// How long `/readyz` waits for the enclave before calling it not ready.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(json!({"status": "ok"}))
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

async fn store_check(state: &AppState) -> Check {
    let store = state.store.clone();
    let outcome = blocking(move || store.check()).await;
    Check {
        name: "store",
        ok: outcome.is_ok(),
        detail: match outcome {
            Ok(()) => format!("{} answers, schema migrated", state.store.describe()),
            Err(e) => e.message,
        },
    }
}

async fn enclave_check(state: &AppState) -> Check {
    let started = Instant::now();
    let probe = state
        .enclave
        .call_with_timeout(Request::Ping { delay_ms: 0 }, READY_PROBE_TIMEOUT)
        .await;
    match (probe, state.enclave.peer()) {
        (Ok(_), Some(peer)) => Check {
            name: "enclave",
            ok: true,
            detail: format!(
                "{} answered in {} µs ({} build, {})",
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
    }
}

fn credentials_check(state: &AppState) -> Check {
    let verdict = match &state.credentials {
        Some(status) => status.verdict(state.enclave.connection_number(), common::now_unix_secs()),
        None => Verdict {
            ok: true,
            detail: "not pushed by this host ([kms] region unset)".to_string(),
        },
    };
    Check {
        name: "credentials",
        ok: verdict.ok,
        detail: verdict.detail,
    }
}

fn canary_check(state: &AppState) -> Check {
    let verdict = match &state.canary {
        Some(canary) => canary.verdict(),
        None => Verdict {
            ok: true,
            detail: "off (readiness.canary_period_secs = 0)".to_string(),
        },
    };
    Check {
        name: "canary",
        ok: verdict.ok,
        detail: verdict.detail,
    }
}

/// Ready when usable: the database answers at this binary's schema version, the
/// enclave answers, it holds unexpired credentials pushed on its current connection,
/// and the canary (when configured) passed within its period.
/// How long one run of the readiness checks answers `/readyz` for.
const READINESS_REUSED_FOR: Duration = Duration::from_secs(1);

/// The last run of the readiness checks. `/readyz` is open to every caller and each
/// run pings the enclave and queries the store: one run at a time, and its answer
/// reused for [`READINESS_REUSED_FOR`], so callers that ask and hang up cannot pile
/// probes up beyond the connection cap.
#[derive(Default)]
pub struct LastReadiness(tokio::sync::Mutex<Option<(Instant, StatusCode, serde_json::Value)>>);

impl LastReadiness {
    /// The last answer if it is recent enough, else `run`'s, kept; one run at a time.
    async fn reuse_or_run<F, Fut>(&self, run: F) -> (StatusCode, serde_json::Value)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = (StatusCode, serde_json::Value)>,
    {
        let mut last = self.0.lock().await;
        if let Some((at, status, body)) = last.as_ref()
            && at.elapsed() < READINESS_REUSED_FOR
        {
            return (*status, body.clone());
        }
        let (status, body) = run().await;
        *last = Some((Instant::now(), status, body.clone()));
        (status, body)
    }
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let run = || async {
        let checks = vec![
            store_check(&state).await,
            enclave_check(&state).await,
            credentials_check(&state),
            canary_check(&state),
        ];
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
        (status, body)
    };
    let (status, body) = state.readiness.reuse_or_run(run).await;
    (status, axum::Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingQuery {
    /// Test aid, honoured by mock enclaves only.
    #[serde(default)]
    delay_ms: u32,
}

#[derive(Debug, Serialize)]
pub struct PingAnswer {
    enclave_build: BuildFlavor,
    round_trip_us: u128,
}

/// A no-op round trip through the enclave: the benchmark's unit of work.
pub async fn ping(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PingQuery>,
) -> Result<axum::Json<PingAnswer>, ApiError> {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Callers at once share one run of the checks, callers within a second reuse its
    /// answer, and the first caller after that runs them again.
    #[tokio::test]
    async fn readiness_runs_its_checks_once_at_a_time_and_at_most_once_a_second() {
        let last = LastReadiness::default();
        let runs = AtomicU32::new(0);
        let run = || async {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            (StatusCode::OK, json!({ "run": n }))
        };
        let answers = futures_util::future::join_all((0..16).map(|_| last.reuse_or_run(run))).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(answers.iter().all(|(_, body)| body["run"] == 1));
        assert_eq!(last.reuse_or_run(run).await.1["run"], 1);
        tokio::time::sleep(READINESS_REUSED_FOR).await;
        assert_eq!(last.reuse_or_run(run).await.1["run"], 2);
    }
}

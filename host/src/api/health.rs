//! `GET /healthz`, `GET /readyz`, `GET /v1/ping`: is the host alive, can it serve, and
//! a no-op round trip through the enclave.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::wire::ErrorCode;
use common::wire::messages::{BuildFlavor, Request, Response as EnclaveResponse};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
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
    let outcome = tokio::time::timeout(READY_PROBE_TIMEOUT, blocking(move || store.check())).await;
    let detail = match &outcome {
        Ok(Ok(())) => format!("{} answers, schema migrated", state.store.describe()),
        Ok(Err(e)) => e.message.clone(),
        Err(_) => format!(
            "{} did not answer within {} ms",
            state.store.describe(),
            READY_PROBE_TIMEOUT.as_millis()
        ),
    };
    Check {
        name: "store",
        ok: matches!(outcome, Ok(Ok(()))),
        detail,
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

/// How long one run of the readiness checks answers `/readyz` for.
const READINESS_REUSED_FOR: Duration = Duration::from_secs(1);

type Answer = (StatusCode, serde_json::Value);

/// The readiness checks' last answer and the run under way. `/readyz` is open to every
/// caller and each run pings the enclave and queries the store: one run at a time, in
/// a task of its own (a caller that hangs up does not abandon it, nor make the next
/// caller start another), and its answer reused for [`READINESS_REUSED_FOR`], so
/// callers that ask and hang up cannot pile probes up beyond the connection cap.
#[derive(Default)]
pub struct LastReadiness(std::sync::Mutex<Readiness>);

#[derive(Default)]
struct Readiness {
    last: Option<(Instant, Answer)>,
    running: Option<Shared<BoxFuture<'static, Answer>>>,
}

impl LastReadiness {
    /// The last answer if it is recent enough, else that of the run under way, or of
    /// `run` started now.
    async fn reuse_or_run<F, Fut>(&self, run: F) -> Answer
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Answer> + Send + 'static,
    {
        let running = {
            let mut state = crate::lock(&self.0);
            if let Some((at, answer)) = &state.last
                && at.elapsed() < READINESS_REUSED_FOR
            {
                return answer.clone();
            }
            if let Some(running) = &state.running {
                running.clone()
            } else {
                let task = tokio::spawn(run());
                let running = async move {
                    task.await.unwrap_or_else(|_| {
                        let detail = "the readiness checks failed to finish";
                        let body = json!({ "status": "not_ready", "checks": [], "detail": detail });
                        (StatusCode::SERVICE_UNAVAILABLE, body)
                    })
                }
                .boxed()
                .shared();
                state.running = Some(running.clone());
                running
            }
        };
        let answer = running.clone().await;
        let mut state = crate::lock(&self.0);
        // The first caller to see this run finish keeps its answer.
        if state.running.as_ref().is_some_and(|r| r.ptr_eq(&running)) {
            state.running = None;
            state.last = Some((Instant::now(), answer.clone()));
        }
        answer
    }
}

/// Ready when usable: the database answers at this binary's schema version, the
/// enclave answers, it holds unexpired credentials pushed on its current connection,
/// and the canary (when configured) passed within its period.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let checked = state.clone();
    let run = || async move {
        let state = checked;
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
    /// answer, and the first caller after that runs them again; a caller that hangs up
    /// leaves the run going for the next.
    #[tokio::test]
    async fn readiness_runs_its_checks_once_at_a_time_and_at_most_once_a_second() {
        let last = LastReadiness::default();
        let runs = std::sync::Arc::new(AtomicU32::new(0));
        let run = || {
            let runs = runs.clone();
            async move {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                (StatusCode::OK, json!({ "run": n }))
            }
        };
        let answers = futures_util::future::join_all((0..16).map(|_| last.reuse_or_run(run))).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(answers.iter().all(|(_, body)| body["run"] == 1));
        assert_eq!(last.reuse_or_run(run).await.1["run"], 1);
        tokio::time::sleep(READINESS_REUSED_FOR).await;
        // The first caller of the next run hangs up; the next caller gets that run.
        let hung_up = tokio::time::timeout(Duration::from_millis(50), last.reuse_or_run(run)).await;
        assert!(hung_up.is_err());
        assert_eq!(last.reuse_or_run(run).await.1["run"], 2);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}

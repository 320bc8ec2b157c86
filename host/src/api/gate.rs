//! The one gate every request passes before its handler, in this order:
//! 1. the caller's allow-list ([`CallerPolicy`]): a refused caller has no body read;
//! 2. the drain: once shutdown has begun, requests that start new work are refused;
//! 3. the body, read in full within its deadline and size limit;
//!
//! and, after the handler, the request's metric and its one log line (refused or not).
//!
//! One middleware instead of one per step: axum boxes the inner service and the future
//! of every `from_fn` layer for every request, and this runs on every ping and signature.

use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use common::wire::ErrorCode;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::callers::{CallerPolicy, RouteGroup, id_text, signing_kind};
use super::error::ApiError;
use super::extract::Caller;

/// What a request body may be: at most `max_bytes`, all of it within `read_timeout`
/// of the headers.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub read_timeout: Duration,
}

/// What the gate checks against; cloned per request (two reference counts).
#[derive(Debug, Clone)]
pub struct Gate {
    pub callers: CallerPolicy,
    pub body: BodyLimits,
    /// Cancelled when shutdown begins.
    pub shutdown: CancellationToken,
}

pub async fn gate(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let caller = request
        .extensions()
        .get::<ConnectInfo<Caller>>()
        .map(|ConnectInfo(caller)| *caller)
        .unwrap_or_default();
    let method = request.method().clone();
    // The path only: no query string (it may carry a caller's nonce, never a secret,
    // but nothing in it is needed to read the log).
    let route = request.uri().path().to_string();
    let group = RouteGroup::of(&method, &route);
    let response = if !gate.callers.admits(group, &caller) {
        refuse_caller(&caller, &method, &route, group)
    } else if gate.shutdown.is_cancelled() && starts_work(&method, &route) {
        ApiError::new(
            ErrorCode::ShuttingDown,
            "signer-host is shutting down; retry on another instance or after the restart",
        )
        .into_response()
    } else {
        run_with_body(gate.body, request, next).await
    };
    if let Some(kind) = signing_kind(&method, &route) {
        crate::metrics::global().sign_duration(kind, started.elapsed());
    }
    info!(
        uid = %id_text(caller.uid),
        pid = ?caller.pid,
        %method,
        route = %shown_path(&route),
        status = response.status().as_u16(),
        duration_us = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}

/// During the drain, requests already running finish, and reads (health, readiness,
/// listings) and the clean-up calls (release, unlock) still answer, so probes see the
/// drain and callers can free what they hold. Everything else starts work.
fn starts_work(method: &Method, route: &str) -> bool {
    let read = matches!(*method, Method::GET | Method::HEAD);
    let clean_up = matches!(route, "/v1/channels/release" | "/v1/channels/unlock");
    !read && !clean_up
}

/// 403 `caller_not_allowed`, with a log line naming who tried what.
fn refuse_caller(caller: &Caller, method: &Method, route: &str, group: RouteGroup) -> Response {
    let route = shown_path(route);
    warn!(
        uid = %id_text(caller.uid),
        gid = %id_text(caller.gid),
        pid = ?caller.pid,
        %method,
        %route,
        group = group.as_str(),
        "caller not allowed"
    );
    ApiError::new(
        ErrorCode::CallerNotAllowed,
        format!(
            "uid {} (gid {}) may not call {} routes ({method} {route}); \
             see api.callers.{} in the host's configuration",
            id_text(caller.uid),
            id_text(caller.gid),
            group.as_str(),
            group.as_str()
        ),
    )
    .into_response()
}

/// The longest request path a log line or an answer repeats: any caller may send a
/// path of tens of KiB, and each would be written to the log.
const SHOWN_PATH: usize = 128;

/// `path` as logged and repeated in answers: at most [`SHOWN_PATH`] bytes, marked when
/// cut.
pub(super) fn shown_path(path: &str) -> std::borrow::Cow<'_, str> {
    if path.len() <= SHOWN_PATH {
        return path.into();
    }
    let mut end = SHOWN_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &path[..end], path.len()).into()
}

/// Reads the whole body before the handler runs, within the deadline: a caller that
/// sends headers and then trickles (or withholds) the body gets `request_timeout` and
/// loses the connection instead of holding it. Every route takes a small JSON body,
/// so buffering it here costs nothing. A body no route reads (on a GET or HEAD) or one
/// declared larger than the limit is refused before any of it is read.
async fn run_with_body(limits: BodyLimits, request: Request, next: Next) -> Response {
    // Nothing to wait for (a GET, or an empty body): no deadline, no copy.
    if axum::body::HttpBody::is_end_stream(request.body()) {
        return next.run(request).await;
    }
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return ApiError::new(
            ErrorCode::BadRequest,
            format!("a {} request carries no body", request.method()),
        )
        .into_response();
    }
    let declared = axum::body::HttpBody::size_hint(request.body()).lower();
    if declared > limits.max_bytes as u64 {
        return too_large(limits, Some(declared)).into_response();
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
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(limits, None)),
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

fn too_large(limits: BodyLimits, declared: Option<u64>) -> ApiError {
    let size = declared.map_or_else(String::new, |bytes| format!(" of {bytes} bytes"));
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "the request body{size} exceeds {} bytes (api.max_body_bytes)",
            limits.max_bytes
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_are_shown_cut_at_a_character_boundary() {
        assert_eq!(shown_path("/v1/keys"), "/v1/keys");
        let exact = "a".repeat(SHOWN_PATH);
        assert_eq!(shown_path(&exact), exact);
        // A three-byte character across the cut is left out whole.
        let path = format!("{}€{}", "a".repeat(SHOWN_PATH - 1), "b".repeat(50));
        let shown = shown_path(&path);
        assert_eq!(
            shown,
            format!("{}… ({} bytes)", "a".repeat(SHOWN_PATH - 1), path.len())
        );
    }
}

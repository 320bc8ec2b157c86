//! The one gate every request passes before its handler, in this order:
//! 1. the caller's allow-list ([`CallerPolicy`]): a refused caller has no body read;
//! 2. the drain: once shutdown has begun, requests that start new work are refused;
//! 3. the body, read in full within its deadline and size limit, once the bodies
//!    buffered at once leave room for it;
//!
//! and, after the handler, the request's metric and its one log line (refused or not).
//!
//! One middleware instead of one per step: axum boxes the inner service and the future
//! of every `from_fn` layer for every request, and this runs on every ping and signature.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use common::wire::ErrorCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::callers::{CallerPolicy, RouteGroup, id_text, signing_kind};
use super::error::ApiError;
use super::extract::Caller;

/// What a request body may be: at most `max_bytes`, all of it within `read_timeout`
/// of the headers; and all the bodies buffered at once (read or being read, until
/// their requests are answered), at most `buffered_max_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub read_timeout: Duration,
    pub buffered_max_bytes: usize,
}

impl BodyLimits {
    /// The configured limits.
    pub fn of(api: &crate::config::ApiConfig) -> BodyLimits {
        BodyLimits {
            max_bytes: api.max_body_bytes,
            read_timeout: api.body_read_timeout(),
            buffered_max_bytes: api.max_buffered_body_bytes,
        }
    }
}

/// The bytes of request bodies buffered at once, as permits: a body takes its declared
/// length (a body without one, `max_bytes`) before any of it is read, and gives it back
/// once its request is answered. One uid holds at most half of it, so a caller that
/// declares large bodies and withholds them stalls its own requests, not everyone's.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    all: Arc<Semaphore>,
    per_uid: Arc<std::sync::Mutex<HashMap<Option<u32>, Arc<Semaphore>>>>,
    uid_share: usize,
}

/// Which part of the budget had no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoRoom {
    /// The caller's uid holds its half.
    UidShare,
    /// Every caller together holds all of it.
    All,
}

/// A body's bytes of the budget, given back when dropped.
#[derive(Debug)]
struct Reserved {
    uid: OwnedSemaphorePermit,
    all: OwnedSemaphorePermit,
}

impl Reserved {
    /// Gives back all but `bytes`, once the body is read: a body without a declared
    /// length took the most a body may be.
    fn keep_only(&mut self, bytes: usize) {
        for permit in [&mut self.uid, &mut self.all] {
            let extra = permit.num_permits().saturating_sub(bytes);
            drop(permit.split(extra));
        }
    }
}

impl BodyBudget {
    pub fn new(limits: &BodyLimits) -> BodyBudget {
        let total = limits.buffered_max_bytes.min(Semaphore::MAX_PERMITS);
        BodyBudget {
            all: Arc::new(Semaphore::new(total)),
            per_uid: Default::default(),
            // Every body fits in a share: the configuration keeps the budget at least
            // `max_bytes`, and a share at least that.
            uid_share: (total / 2).max(limits.max_bytes).min(total),
        }
    }

    /// The semaphore of `uid`'s share; uids holding nothing are let go as others come.
    fn share_of(&self, uid: Option<u32>) -> Arc<Semaphore> {
        let mut per_uid = crate::lock(&self.per_uid);
        if per_uid.len() >= 64 && !per_uid.contains_key(&uid) {
            // Held (by a permit or a waiter) means another reference.
            per_uid.retain(|_, share| Arc::strong_count(share) > 1);
        }
        per_uid
            .entry(uid)
            .or_insert_with(|| Arc::new(Semaphore::new(self.uid_share)))
            .clone()
    }

    /// `bytes` of `uid`'s share and of the whole, once they are free, or which had no
    /// room at `deadline`.
    async fn reserve(
        &self,
        uid: Option<u32>,
        bytes: u64,
        deadline: tokio::time::Instant,
    ) -> Result<Reserved, NoRoom> {
        // A body is at most `max_bytes`, which the configuration keeps under u32::MAX.
        let bytes = u32::try_from(bytes).map_err(|_| NoRoom::All)?;
        let share = self.share_of(uid);
        let until = |semaphore: Arc<Semaphore>| {
            tokio::time::timeout_at(deadline, semaphore.acquire_many_owned(bytes))
        };
        let Ok(Ok(uid_part)) = until(share).await else {
            return Err(NoRoom::UidShare);
        };
        match until(self.all.clone()).await {
            Ok(Ok(all_part)) => Ok(Reserved {
                uid: uid_part,
                all: all_part,
            }),
            _ => Err(NoRoom::All),
        }
    }
}

/// What the gate checks against; cloned per request (three reference counts).
#[derive(Debug, Clone)]
pub struct Gate {
    pub callers: CallerPolicy,
    pub body: BodyLimits,
    pub budget: BodyBudget,
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
        let takes_body =
            group != RouteGroup::Health && !matches!(method, Method::GET | Method::HEAD);
        run_with_body(
            gate.body,
            &gate.budget,
            (caller.uid, takes_body),
            request,
            next,
        )
        .await
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
/// declared larger than the limit is refused before any of it is read; one the budget
/// has no room for within the deadline is answered `host_busy`, unread. `takes_body`:
/// the route reads one (not a GET or HEAD, nor a health probe, which anyone may call).
async fn run_with_body(
    limits: BodyLimits,
    budget: &BodyBudget,
    (uid, takes_body): (Option<u32>, bool),
    request: Request,
    next: Next,
) -> Response {
    // Nothing to wait for (a GET, or an empty body): no deadline, no copy.
    if axum::body::HttpBody::is_end_stream(request.body()) {
        return next.run(request).await;
    }
    if !takes_body {
        return ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "a {} {} request carries no body",
                request.method(),
                shown_path(request.uri().path())
            ),
        )
        .into_response();
    }
    let size = axum::body::HttpBody::size_hint(request.body());
    if size.lower() > limits.max_bytes as u64 {
        return too_large(limits, Some(size.lower())).into_response();
    }
    let deadline = tokio::time::Instant::now() + limits.read_timeout;
    // A declared length is all hyper lets through; without one, the most a body may be.
    let reserved = size.exact().unwrap_or(limits.max_bytes as u64);
    let mut permit = match budget.reserve(uid, reserved, deadline).await {
        Ok(permit) => permit,
        Err(no_room) => {
            // The body was not read: the connection cannot carry another request.
            let mut refusal = host_busy(limits, budget, (uid, reserved), no_room).into_response();
            refusal.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            return refusal;
        }
    };
    let (parts, body) = request.into_parts();
    let answer = match buffer_body(limits, deadline, body).await {
        Ok(bytes) => {
            permit.keep_only(bytes.len());
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(refusal) => refusal.into_response(),
    };
    drop(permit);
    answer
}

async fn buffer_body(
    limits: BodyLimits,
    deadline: tokio::time::Instant,
    body: axum::body::Body,
) -> Result<bytes::Bytes, ApiError> {
    let read =
        http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limits.max_bytes));
    match tokio::time::timeout_at(deadline, read).await {
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

/// 503 `host_busy`, naming the part of the budget that had no room for `bytes` more.
fn host_busy(
    limits: BodyLimits,
    budget: &BodyBudget,
    (uid, bytes): (Option<u32>, u64),
    no_room: NoRoom,
) -> ApiError {
    crate::metrics::global().limit_refusal(match no_room {
        NoRoom::UidShare => "max_buffered_body_bytes_per_uid",
        NoRoom::All => "max_buffered_body_bytes",
    });
    let within = match no_room {
        NoRoom::UidShare => format!(
            "uid {}'s share of request bodies held at once ({} bytes, half of \
             api.max_buffered_body_bytes)",
            id_text(uid),
            budget.uid_share
        ),
        NoRoom::All => format!(
            "the request bodies held at once (api.max_buffered_body_bytes, {} bytes)",
            limits.buffered_max_bytes
        ),
    };
    ApiError::new(
        ErrorCode::HostBusy,
        format!(
            "no room for {bytes} more bytes within {within} came within {} ms; the body \
             was not read; retry shortly",
            limits.read_timeout.as_millis()
        ),
    )
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
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    const MAX_BODY: usize = 1024;

    /// The gate in front of two routes, with a budget of `buffered` bytes (bodies of at
    /// most [`MAX_BODY`], 100 ms to read one): `/v1/sign` answers the body's length,
    /// `/v1/fee-bump` answers after 300 ms.
    fn gated(buffered: usize) -> (axum::Router, BodyBudget) {
        let limits = BodyLimits {
            max_bytes: MAX_BODY,
            read_timeout: Duration::from_millis(100),
            buffered_max_bytes: buffered,
        };
        let budget = BodyBudget::new(&limits);
        let app = axum::Router::new()
            .route(
                "/v1/sign",
                axum::routing::post(|body: bytes::Bytes| async move { body.len().to_string() }),
            )
            .route(
                "/v1/fee-bump",
                axum::routing::post(|| tokio::time::sleep(Duration::from_millis(300))),
            )
            .layer(axum::middleware::from_fn_with_state(
                Gate {
                    callers: CallerPolicy::new(crate::config::CallerRules::default()),
                    body: limits,
                    budget: budget.clone(),
                    shutdown: CancellationToken::new(),
                },
                gate,
            ));
        (app, budget)
    }

    async fn answer(app: &axum::Router, path: &str, body: Body) -> (u16, String) {
        answer_as(app, path, None, body).await
    }

    /// The status and body of the answer to a caller of `uid` (`None`: credentials not
    /// read) posting `body` to `path`.
    async fn answer_as(
        app: &axum::Router,
        path: &str,
        uid: Option<u32>,
        body: Body,
    ) -> (u16, String) {
        let mut request = axum::http::Request::post(path).body(body).unwrap();
        request.extensions_mut().insert(ConnectInfo(Caller {
            uid,
            ..Caller::default()
        }));
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// One uid holds at most half of the budget: with its half held, its next body is
    /// answered `host_busy` naming its share, while another uid's is read and served.
    #[tokio::test(start_paused = true)]
    async fn one_uid_holds_at_most_half_of_the_body_budget() {
        let (app, budget) = gated(4 * MAX_BODY);
        let share = budget.share_of(Some(1000));
        let held = share.acquire_many_owned(2 * MAX_BODY as u32).await.unwrap();
        let (status, refusal) = answer_as(&app, "/v1/sign", Some(1000), chunked("123456")).await;
        assert_eq!(status, 503, "{refusal}");
        assert!(
            refusal.contains("uid 1000") && refusal.contains("half"),
            "{refusal}"
        );
        assert_eq!(
            answer_as(&app, "/v1/sign", Some(1001), chunked("123456")).await,
            (200, "6".into())
        );
        drop(held);
        assert_eq!(
            answer_as(&app, "/v1/sign", Some(1000), chunked("123456")).await,
            (200, "6".into())
        );
        // Shares nobody holds are let go as other uids come.
        for uid in 0..100 {
            drop(budget.share_of(Some(uid)));
        }
        assert!(crate::lock(&budget.per_uid).len() <= 64);
    }

    /// A body without a declared length, in two chunks.
    fn chunked(text: &'static str) -> Body {
        let (first, second) = text.split_at(text.len() / 2);
        Body::from_stream(futures_util::stream::iter([
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(first.as_bytes())),
            Ok(bytes::Bytes::from_static(second.as_bytes())),
        ]))
    }

    /// A body waits for room in the budget, is answered `host_busy` unread when none
    /// comes within its deadline, and gives its share back once answered; a body of
    /// unknown length takes the most a body may be.
    #[tokio::test(start_paused = true)]
    async fn bodies_buffered_at_once_stay_within_the_budget() {
        let total = MAX_BODY + 10;
        let (app, budget) = gated(total);
        let sign = |body| answer(&app, "/v1/sign", body);
        // Answered bodies give their share back.
        assert_eq!(sign(Body::from("12345")).await, (200, "5".into()));
        assert_eq!(sign(chunked("123456")).await, (200, "6".into()));
        assert_eq!(budget.all.available_permits(), total);

        // 11 bytes taken: a declared 5-byte body fits, one of unknown length does not.
        let held = budget.all.clone().acquire_many_owned(11).await.unwrap();
        assert_eq!(sign(Body::from("12345")).await, (200, "5".into()));
        let (status, refusal) = sign(chunked("123456")).await;
        assert_eq!(status, 503, "{refusal}");
        assert!(
            refusal.contains("host_busy") && refusal.contains("api.max_buffered_body_bytes"),
            "{refusal}"
        );
        // Room that comes within the deadline is waited for.
        let waiting = tokio::spawn({
            let app = app.clone();
            async move { answer(&app, "/v1/sign", chunked("123456")).await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(held);
        assert_eq!(waiting.await.unwrap(), (200, "6".into()));
        assert_eq!(budget.all.available_permits(), total);

        // Once read, a body of unknown length keeps only its length, until answered.
        let running = tokio::spawn({
            let app = app.clone();
            async move { answer(&app, "/v1/fee-bump", chunked("123456")).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(budget.all.available_permits(), total - 6);
        assert_eq!(
            budget.share_of(None).available_permits(),
            budget.uid_share - 6
        );
        assert_eq!(running.await.unwrap().0, 200);
        assert_eq!(budget.all.available_permits(), total);

        // `host_busy` closes the connection: the body on it was never read.
        let held = budget
            .all
            .clone()
            .acquire_many_owned(total as u32)
            .await
            .unwrap();
        let request = axum::http::Request::post("/v1/sign")
            .body(Body::from("12345"))
            .unwrap();
        let refused = app.clone().oneshot(request).await.unwrap();
        assert_eq!(refused.status().as_u16(), 503);
        assert_eq!(refused.headers()[axum::http::header::CONNECTION], "close");
        drop(held);
    }

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

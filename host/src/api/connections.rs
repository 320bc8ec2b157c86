//! The host API's connections. `axum::serve` has no read deadlines and no cap, so a
//! caller that opens connections and sends half a request (or nothing) could hold the
//! socket's capacity for ever. Here each connection is served by hyper with a deadline
//! for a request's headers (which also closes a keep-alive connection idle that long),
//! the router reads each body within its own deadline (`gate::run_with_body`), a
//! caller that stops reading its answers is cut off once a write has waited as long,
//! and at most `max_connections` are open: the next caller gets `too_many_connections`
//! once its request's headers are in (an HTTP client that sees an answer before it sent
//! its request reports a closed connection instead) and the connection is closed. At most
//! [`MAX_REFUSING`] such connections are answered at once; beyond them a connection is
//! closed unanswered, so a flood cannot spend the descriptors kept for everything else.
//! One user (uid) holds at most `max_connections_per_uid`, so a caller whose pool runs
//! away, or a flood from one local account, leaves room for the other services, the
//! health probes and the operator. Callers on no allow-list (only the health probes
//! admit them) hold at most a quarter of the connections.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use common::wire::ErrorCode;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

use super::callers::CallerPolicy;
use super::extract::Caller;
use crate::counted_warnings::CountedWarnings;

/// What slow, idle or numerous callers may hold.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// Connections one uid may hold; `None`: half of `max_connections`.
    pub max_connections_per_uid: Option<usize>,
    /// A request's headers must arrive within this; an idle keep-alive connection is
    /// closed after it, and so is one whose answer waits this long to be read.
    pub header_read_timeout: Duration,
}

impl ConnectionLimits {
    /// The configured limits, the cap fitted under the open-file limit.
    pub fn of(api: &crate::config::ApiConfig) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: fit_to_open_file_limit(api.max_connections),
            max_connections_per_uid: api.max_connections_per_uid,
            header_read_timeout: api.header_read_timeout(),
        }
    }

    /// Connections of callers whose uid and gid only the health probes admit, at most:
    /// a quarter of the cap (at least one), so a process that may open the socket but
    /// is on no allow-list cannot take every connection from the callers that are.
    pub fn probe_only_connections(&self) -> usize {
        (self.max_connections / 4).max(1)
    }

    /// Connections one uid may hold: as configured (at most `max_connections`), or half
    /// of `max_connections` (at least one).
    pub fn per_uid_connections(&self) -> usize {
        self.max_connections_per_uid
            .unwrap_or(self.max_connections / 2)
            .clamp(1, self.max_connections.max(1))
    }
}

/// Which connection limit refused a connection.
#[derive(Debug, Clone, Copy)]
enum Cap {
    /// `api.max_connections`.
    All,
    /// [`ConnectionLimits::per_uid_connections`], for this uid.
    PerUid(Option<u32>),
    /// [`ConnectionLimits::probe_only_connections`].
    ProbeOnly,
}

impl Cap {
    /// The limit's setting, as the metrics name it.
    fn setting(self) -> &'static str {
        match self {
            Cap::All => "max_connections",
            Cap::PerUid(_) => "max_connections_per_uid",
            Cap::ProbeOnly => "probe_only",
        }
    }

    /// Why a connection was refused, for its answer.
    fn reason(self, limits: &ConnectionLimits) -> String {
        match self {
            Cap::All => format!(
                "signer-host has {} connections open, its limit (api.max_connections)",
                limits.max_connections
            ),
            Cap::PerUid(uid) => format!(
                "uid {} has {} connections open, the most one user may hold \
                 (api.max_connections_per_uid)",
                super::callers::id_text(uid),
                limits.per_uid_connections()
            ),
            Cap::ProbeOnly => format!(
                "signer-host has {} connections open from callers on no allow-list, \
                 their limit (a quarter of api.max_connections)",
                limits.probe_only_connections()
            ),
        }
    }
}

/// Connections open per uid (a caller whose credentials could not be read counts as
/// one user), each at most `limit`.
#[derive(Debug)]
struct PerUid {
    limit: usize,
    open: Mutex<HashMap<Option<u32>, usize>>,
}

/// One connection of a uid, counted until dropped.
#[derive(Debug)]
struct UidSlot {
    counts: Arc<PerUid>,
    uid: Option<u32>,
}

impl PerUid {
    fn new(limit: usize) -> Arc<PerUid> {
        Arc::new(PerUid {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection of `uid`, unless it holds `limit` already.
    fn try_hold(self: &Arc<Self>, uid: Option<u32>) -> Option<UidSlot> {
        let mut open = crate::lock(&self.open);
        let held = open.entry(uid).or_insert(0);
        if *held >= self.limit {
            return None;
        }
        *held += 1;
        Some(UidSlot {
            counts: self.clone(),
            uid,
        })
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut open = crate::lock(&self.counts.open);
        if let Some(held) = open.get_mut(&self.uid) {
            *held = held.saturating_sub(1);
            // Only users with connections open are kept: uids come and go.
            if *held == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

/// hyper's read buffer per connection: every request of this API has small headers
/// (bodies are bounded separately), so a large buffer would only be memory to fill.
const READ_BUFFER: usize = 64 * 1024;

/// How long a refused connection is given to send its request's headers: answered
/// after them, or after this without them.
const REFUSAL_HEAD_WAIT: Duration = Duration::from_millis(500);

/// How long a refused connection is given to take its answer and close.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// Refused connections answered at once, each held at most [`REFUSAL_HEAD_WAIT`] +
/// [`REFUSAL_WRITE_TIMEOUT`]: silent callers must open more than 64 a second to have
/// the next refused caller closed unanswered.
pub const MAX_REFUSING: usize = 64;

/// The most of a refused request's headers read before answering.
const REFUSAL_HEAD_LIMIT: usize = 16 * 1024;

/// Serves `app` on `listener` until `stop_accepting` is cancelled, then lets every open
/// connection finish its request in flight and waits for them.
pub async fn serve(
    listener: UnixListener,
    app: Router,
    limits: ConnectionLimits,
    callers: CallerPolicy,
    stop_accepting: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_uid = PerUid::new(limits.per_uid_connections());
    let probe_only_slots = Arc::new(Semaphore::new(limits.probe_only_connections()));
    let graceful = GracefulShutdown::new();
    let refusals = CountedWarnings::default();
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    // Beyond the refusals in hand, dropping the stream closes it unanswered.
    let refuse_over_cap = |stream: UnixStream, cap: Cap| {
        crate::metrics::global().limit_refusal(cap.setting());
        if let Some(refused) = refusals.count() {
            warn!(
                max_connections = limits.max_connections,
                per_uid_connections = limits.per_uid_connections(),
                probe_only_connections = limits.probe_only_connections(),
                refused,
                cap = ?cap,
                "connections refused at a connection limit (since the last such line)"
            );
        }
        if let Ok(refusing) = refusing.clone().try_acquire_owned() {
            let why = cap.reason(&limits);
            tokio::spawn(async move {
                refuse(stream, why).await;
                drop(refusing);
            });
        }
    };
    loop {
        let stream = tokio::select! {
            () = stop_accepting.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_transient(&e) => {
                    // Out of file descriptors and the like: the next accept may work.
                    warn!(error = %e, "accepting a connection failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse_over_cap(stream, Cap::All);
            continue;
        };
        let caller = Caller::of(&stream);
        let Some(uid_slot) = per_uid.try_hold(caller.uid) else {
            refuse_over_cap(stream, Cap::PerUid(caller.uid));
            continue;
        };
        let probe_only_slot = if callers.admits_beyond_health(&caller) {
            None
        } else if let Ok(probe_slot) = probe_only_slots.clone().try_acquire_owned() {
            Some(probe_slot)
        } else {
            refuse_over_cap(stream, Cap::ProbeOnly);
            continue;
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(caller));
            app.clone().oneshot(request)
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(READ_BUFFER)
            .serve_connection(
                TokioIo::new(WriteDeadline::new(stream, limits.header_read_timeout)),
                service,
            );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "host API connection ended with an error");
            }
            drop((slot, uid_slot, probe_only_slot));
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Descriptors kept for everything but callers: the store (up to 32 pooled SQLite
/// connections and the writer's, three each with the journal files), the KMS relay (two
/// per connection), the enclave link, listeners, logs and the runtime (32), and the
/// refused connections being answered.
const RESERVED_DESCRIPTORS: u64 =
    3 * 33 + 2 * crate::relay::MAX_RELAYED as u64 + 32 + MAX_REFUSING as u64;

/// Raises the open-file limit to its hard maximum and returns how many connections fit
/// under it: `max_connections`, or fewer (with a warning) when the limit is lower, so
/// the cap refuses callers before the process runs out of descriptors.
fn fit_to_open_file_limit(max_connections: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return max_connections;
    };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let fits = usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS))
        .unwrap_or(usize::MAX)
        .max(1);
    if fits < max_connections {
        warn!(
            max_connections,
            open_file_limit = soft,
            effective = fits,
            "api.max_connections does not fit under the open-file limit (raise LimitNOFILE); \
             capping connections lower"
        );
        return fits;
    }
    max_connections
}

/// Errors after which the listener is still usable.
fn is_transient(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)
    ) || e.kind() == std::io::ErrorKind::ConnectionAborted
}

/// Answers a connection over the cap with `too_many_connections`, once its request's
/// headers are in (or [`REFUSAL_HEAD_WAIT`] has passed), and closes it.
async fn refuse(mut stream: UnixStream, why: String) {
    let code = ErrorCode::TooManyConnections;
    let body = serde_json::json!({
        "error": {
            "code": code.as_str(),
            "message": format!("{why}; retry shortly or reuse a connection"),
        }
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 {} Service Unavailable\r\ncontent-type: application/json\r\n\
         connection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{body}",
        code.http_status(),
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_HEAD_WAIT, read_request_head(&mut stream)).await;
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the caller sent, so closing does not reset the connection under an
        // answer it has not read yet.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
}

/// Reads until the end of a request's headers (a blank line), the caller's end of
/// stream, an error or [`REFUSAL_HEAD_LIMIT`] bytes; what it read is not kept.
async fn read_request_head(stream: &mut UnixStream) {
    let mut chunk = [0u8; 1024];
    let mut head_end = HeadEnd::default();
    let mut total = 0;
    while total < REFUSAL_HEAD_LIMIT {
        let read = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if head_end.found_in(&chunk[..read]) {
            return;
        }
        total += read;
    }
}

/// How much of the blank line (`\r\n\r\n`) that ends a request's headers the bytes
/// so far end with, kept across reads: the blank line may be split between them.
#[derive(Default)]
struct HeadEnd {
    matched: usize,
}

impl HeadEnd {
    const BLANK_LINE: &[u8; 4] = b"\r\n\r\n";

    /// Whether the headers end within `bytes`, the next bytes read.
    fn found_in(&mut self, bytes: &[u8]) -> bool {
        for &byte in bytes {
            self.matched = if byte == Self::BLANK_LINE[self.matched] {
                self.matched + 1
            } else {
                // A line's end may begin again at a carriage return; nothing else begins one.
                usize::from(byte == b'\r')
            };
            if self.matched == Self::BLANK_LINE.len() {
                return true;
            }
        }
        false
    }
}

/// A connection whose writes fail once one has waited `timeout` for the peer to read:
/// hyper has no write deadline, and a caller that pipelines requests and never reads
/// the answers would otherwise hold its connection slot for ever.
struct WriteDeadline {
    stream: UnixStream,
    timeout: Duration,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteDeadline {
    fn new(stream: UnixStream, timeout: Duration) -> WriteDeadline {
        WriteDeadline {
            stream,
            timeout,
            waiting: None,
        }
    }

    /// An error once the current wait to write has lasted `timeout`.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let timeout = self.timeout;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(waiting.as_mut().poll(cx));
        Poll::Ready(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the caller did not read its answer in time",
        ))
    }

    /// A write's result, or the deadline while it cannot proceed.
    fn written(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        match result {
            Poll::Ready(written) => {
                self.waiting = None;
                Poll::Ready(written)
            }
            Poll::Pending => self.poll_deadline(cx).map(Err),
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.written(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.written(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A whole request without a body.
    const HEAD: &[u8] = b"GET /v1/channels HTTP/1.1\r\nhost: x\r\n\r\n";

    fn limits(max_connections: usize, per_uid: Option<usize>) -> ConnectionLimits {
        ConnectionLimits {
            max_connections,
            max_connections_per_uid: per_uid,
            header_read_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_uid_holds_half_the_connections_unless_configured() {
        assert_eq!(limits(1024, None).per_uid_connections(), 512);
        assert_eq!(limits(1, None).per_uid_connections(), 1);
        assert_eq!(limits(8, Some(3)).per_uid_connections(), 3);
        // Over the cap (fitted under the open-file limit at start): the cap.
        assert_eq!(limits(8, Some(100)).per_uid_connections(), 8);
    }

    /// Each uid (and the callers whose credentials could not be read, together) holds
    /// at most the limit; a slot it frees is its again, and a uid with nothing open is
    /// not kept.
    #[test]
    fn each_uid_holds_at_most_its_share_of_the_connections() {
        let per_uid = PerUid::new(2);
        let first = per_uid.try_hold(Some(1000)).unwrap();
        let second = per_uid.try_hold(Some(1000)).unwrap();
        assert!(per_uid.try_hold(Some(1000)).is_none());
        // Other users are not held back by it.
        let other = per_uid.try_hold(Some(1001)).unwrap();
        let unknown = [
            per_uid.try_hold(None).unwrap(),
            per_uid.try_hold(None).unwrap(),
        ];
        assert!(per_uid.try_hold(None).is_none());
        drop(first);
        let again = per_uid.try_hold(Some(1000)).unwrap();
        assert!(per_uid.try_hold(Some(1000)).is_none());
        drop((second, again, other, unknown));
        assert!(crate::lock(&per_uid.open).is_empty());
    }

    /// The end of a request's headers is found where it is, however the bytes are split
    /// between reads, and nowhere else.
    #[test]
    fn a_request_head_ends_at_its_blank_line_however_it_is_split() {
        let head = HEAD;
        for split in 0..=head.len() {
            let mut head_end = HeadEnd::default();
            let (first, second) = head.split_at(split);
            let ends_in_first = split == head.len();
            assert_eq!(head_end.found_in(first), ends_in_first, "split at {split}");
            if !ends_in_first {
                assert!(head_end.found_in(second), "split at {split}");
            }
        }
        let mut byte_by_byte = HeadEnd::default();
        let found_at: Vec<usize> = head
            .iter()
            .enumerate()
            .filter(|(_, byte)| byte_by_byte.found_in(&[**byte]))
            .map(|(at, _)| at)
            .collect();
        assert_eq!(found_at, vec![head.len() - 1]);
        // A stray carriage return before the blank line, and near misses.
        assert!(HeadEnd::default().found_in(b"a\r\n\r\r\n\r\n"));
        assert!(!HeadEnd::default().found_in(b"a\r\n\ra\r\n\n\r\r\n"));
    }

    /// A refused caller's request is read to its blank line, and one whose headers never
    /// end is given up on at the limit.
    #[tokio::test]
    async fn a_request_head_is_read_to_its_end_or_the_limit() {
        let (mut host_side, mut caller) = UnixStream::pair().unwrap();
        let reading = tokio::spawn(async move { read_request_head(&mut host_side).await });
        caller.write_all(HEAD).await.unwrap();
        let done = tokio::time::timeout(Duration::from_secs(5), reading).await;
        assert!(done.is_ok(), "the blank line was missed");

        // Headers that never end: read up to the limit, then given up on.
        let (mut host_side, mut caller) = UnixStream::pair().unwrap();
        let reading = tokio::spawn(async move { read_request_head(&mut host_side).await });
        let endless = vec![b'a'; REFUSAL_HEAD_LIMIT + 1024];
        caller.write_all(&endless).await.unwrap();
        let done = tokio::time::timeout(Duration::from_secs(5), reading).await;
        assert!(done.is_ok(), "read past the limit");
    }
}

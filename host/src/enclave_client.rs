//! The host's side of the vsock channel: one multiplexed connection to the enclave,
//! re-established with backoff whenever it drops.
//!
//! Any number of tasks call [`EnclaveClient::call`] at once. Each request gets an id,
//! goes out through a single writer task, and waits on its own oneshot; the reader
//! task routes each answer by id. The only shared lock is the short map insert/remove
//! around that id, so nothing serialises the sign path. When the connection drops,
//! every waiting request fails at once with `enclave_unavailable`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use common::wire::frame::{Batching, FrameCodec, decode_message, encode_message, write_queued};
use common::wire::hello;
use common::wire::messages::{BuildFlavor, EnclaveMessage, Hello, HostMessage, Request, Response};
use common::wire::transport::{Endpoint, Stream};
use common::wire::{ErrorCode, WireError};
use futures_util::StreamExt;
use rand::Rng;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const OUTGOING_QUEUE: usize = 1024;
/// A ping this often keeps an idle connection inside the enclave's idle timeout.
const KEEPALIVE: Duration = Duration::from_mins(2);

/// `signer-host` has one build: development tooling (`signer-dev`) and mocks live in
/// other crates, so no host binary carries development-only code.
const HOST_BUILD: BuildFlavor = BuildFlavor::Production;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("enclave at {endpoint} is unavailable: {reason}")]
    Unavailable {
        endpoint: Endpoint,
        reason: String,
        /// `enclave_unavailable`, or `protocol_mismatch` when the enclave speaks
        /// another protocol version.
        code: ErrorCode,
    },
    #[error("enclave at {endpoint} did not answer within {timeout:?}")]
    Timeout {
        endpoint: Endpoint,
        timeout: Duration,
    },
    #[error("enclave refused the request: {0}")]
    Enclave(WireError),
    #[error("request could not be encoded: {0}")]
    Encode(String),
}

impl CallError {
    pub fn to_wire(&self) -> WireError {
        match self {
            CallError::Unavailable { code, .. } => WireError::new(*code, self.to_string()),
            CallError::Timeout { .. } => {
                WireError::new(ErrorCode::EnclaveTimeout, self.to_string())
            }
            CallError::Enclave(wire) => wire.clone(),
            CallError::Encode(_) => WireError::new(ErrorCode::BadRequest, self.to_string()),
        }
    }
}

type Reply = Result<Response, WireError>;

#[derive(Debug)]
struct Connection {
    outgoing: mpsc::Sender<Bytes>,
    pending: Mutex<Pending>,
    peer: Hello,
}

#[derive(Debug, Default)]
struct Pending {
    /// Set once the connection is dead; no new waiter may register after that.
    closed: bool,
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
}

impl Connection {
    fn register(&self, id: u64, reply: oneshot::Sender<Reply>) -> bool {
        let mut pending = crate::lock(&self.pending);
        if pending.closed {
            return false;
        }
        pending.waiting.insert(id, reply);
        true
    }

    fn forget(&self, id: u64) {
        crate::lock(&self.pending).waiting.remove(&id);
    }

    fn complete(&self, id: u64, reply: Reply) {
        let waiter = crate::lock(&self.pending).waiting.remove(&id);
        // The caller may have timed out or gone away; that is fine.
        if let Some(waiter) = waiter {
            let _ = waiter.send(reply);
        } else {
            debug!(id, "answer for a request nobody waits for any more");
        }
    }

    /// Fails every waiting request (their oneshots are dropped) and refuses new ones.
    fn close(&self) -> usize {
        let mut pending = crate::lock(&self.pending);
        pending.closed = true;
        let failed = pending.waiting.len();
        pending.waiting.clear();
        failed
    }
}

#[derive(Debug)]
struct Inner {
    endpoint: Endpoint,
    request_timeout: Duration,
    current: RwLock<Option<Arc<Connection>>>,
    /// Why there is no connection right now, with the code callers get.
    last_error: Mutex<(ErrorCode, String)>,
    next_id: AtomicU64,
    /// Counts successful connections; watchers learn of every (re)connection.
    connections: tokio::sync::watch::Sender<u64>,
}

/// A cheap-to-clone handle to the enclave connection.
#[derive(Debug, Clone)]
pub struct EnclaveClient {
    inner: Arc<Inner>,
}

/// What the host knows about the enclave right now, for readiness checks.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub software_version: String,
    pub build: common::wire::messages::BuildFlavor,
}

impl EnclaveClient {
    /// Starts connecting in the background; calls fail with `enclave_unavailable`
    /// until the first connection is up. Stops reconnecting when `shutdown` fires.
    pub fn start(
        endpoint: Endpoint,
        request_timeout: Duration,
        max_backoff: Duration,
        shutdown: CancellationToken,
    ) -> EnclaveClient {
        let inner = Arc::new(Inner {
            endpoint,
            request_timeout,
            current: RwLock::new(None),
            last_error: Mutex::new((
                ErrorCode::EnclaveUnavailable,
                "not connected yet".to_string(),
            )),
            next_id: AtomicU64::new(1),
            connections: tokio::sync::watch::Sender::new(0),
        });
        tokio::spawn(supervise(
            inner.clone(),
            max_backoff.max(MIN_BACKOFF),
            shutdown,
        ));
        EnclaveClient { inner }
    }

    /// Changes after every successful (re)connection: per-connection setup (pushing
    /// credentials) waits on it.
    pub fn connections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.connections.subscribe()
    }

    /// How many connections to the enclave have been made: the current one's number.
    pub fn connection_number(&self) -> u64 {
        *self.inner.connections.borrow()
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    pub fn peer(&self) -> Option<PeerInfo> {
        let current = crate::read(&self.inner.current);
        current.as_ref().map(|c| PeerInfo {
            software_version: c.peer.software_version.clone(),
            build: c.peer.build,
        })
    }

    fn unavailable(&self, reason: String) -> CallError {
        self.unavailable_with(ErrorCode::EnclaveUnavailable, reason)
    }

    fn unavailable_with(&self, code: ErrorCode, reason: String) -> CallError {
        CallError::Unavailable {
            endpoint: self.inner.endpoint.clone(),
            reason,
            code,
        }
    }

    /// Sends one request and waits for its answer, at most the configured timeout.
    pub async fn call(&self, request: Request) -> Result<Response, CallError> {
        let started = std::time::Instant::now();
        let answer = self
            .call_with_timeout(request, self.inner.request_timeout)
            .await;
        crate::metrics::global().enclave_round_trip(started.elapsed());
        answer
    }

    pub async fn call_with_timeout(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let connection = {
            let current = crate::read(&self.inner.current);
            current.clone()
        };
        let Some(connection) = connection else {
            let (code, reason) = crate::lock(&self.inner.last_error).clone();
            return Err(self.unavailable_with(code, reason));
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_message(&HostMessage::Request { id, request })
            .map_err(|e| CallError::Encode(e.to_string()))?;
        let (reply_tx, reply_rx) = oneshot::channel();
        if !connection.register(id, reply_tx) {
            return Err(self.unavailable("connection closed".to_string()));
        }
        // Removes the waiter if this future is dropped (caller went away) or times out.
        let _forget = ForgetOnDrop {
            connection: &connection,
            id,
        };
        let exchange = async {
            connection
                .outgoing
                .send(frame)
                .await
                .map_err(|_| self.unavailable("connection closed".to_string()))?;
            match reply_rx.await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(wire)) => Err(CallError::Enclave(wire)),
                Err(_) => {
                    Err(self
                        .unavailable("connection lost while the request was in flight".to_string()))
                }
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout {
                endpoint: self.inner.endpoint.clone(),
                timeout,
            }),
        }
    }
}

struct ForgetOnDrop<'a> {
    connection: &'a Connection,
    id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.connection.forget(self.id);
    }
}

async fn supervise(inner: Arc<Inner>, max_backoff: Duration, shutdown: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    let mut failures: u32 = 0;
    loop {
        let attempt = tokio::select! {
            () = shutdown.cancelled() => return,
            attempt = connect(&inner.endpoint) => attempt,
        };
        match attempt {
            Ok((peer, reader, writer)) => {
                info!(
                    enclave = %inner.endpoint,
                    build = %peer.build,
                    version = %peer.software_version,
                    "connected to enclave"
                );
                failures = 0;
                backoff = MIN_BACKOFF;
                let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);
                let connection = Arc::new(Connection {
                    outgoing,
                    pending: Mutex::new(Pending::default()),
                    peer,
                });
                *crate::write(&inner.current) = Some(connection.clone());
                inner.connections.send_modify(|n| *n += 1);
                let reason = run_connection(&connection, reader, writer, queue, &shutdown).await;
                *crate::write(&inner.current) = None;
                let failed = connection.close();
                *crate::lock(&inner.last_error) = (ErrorCode::EnclaveUnavailable, reason.clone());
                if shutdown.is_cancelled() {
                    return;
                }
                warn!(
                    enclave = %inner.endpoint,
                    %reason,
                    failed_requests = failed,
                    "lost the enclave connection; reconnecting"
                );
            }
            Err(failure) => {
                failures = failures.saturating_add(1);
                // Log the first failure and then ever more rarely, not every 2 s forever.
                if failures.is_power_of_two() {
                    warn!(enclave = %inner.endpoint, reason = %failure.1, code = %failure.0, attempts = failures, "cannot reach the enclave");
                }
                *crate::lock(&inner.last_error) = failure;
            }
        }
        let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
        let pause = backoff + Duration::from_millis(jitter);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

type Reader = FramedRead<ReadHalf<Stream>, FrameCodec>;
type Writer = FramedWrite<WriteHalf<Stream>, FrameCodec>;

/// Opens a connection and says hello; a failure carries the code callers will get.
async fn connect(endpoint: &Endpoint) -> Result<(Hello, Reader, Writer), (ErrorCode, String)> {
    let unavailable = |reason: String| (ErrorCode::EnclaveUnavailable, reason);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, Stream::connect(endpoint))
        .await
        .map_err(|_| unavailable(format!("connect timed out after {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unavailable(format!("connect failed: {e}")))?;
    let (read_half, write_half) = tokio::io::split(stream);
    let mut reader = FramedRead::new(read_half, FrameCodec::new());
    let mut writer = FramedWrite::new(write_half, FrameCodec::new());
    let ours = Hello::current("signer-host", HOST_BUILD);
    let theirs = hello::offer(&mut reader, &mut writer, ours, HANDSHAKE_TIMEOUT)
        .await
        .map_err(|e| (e.code(), e.to_string()))?;
    Ok((theirs, reader, writer))
}

/// Runs one connection until it fails; returns why it ended.
async fn run_connection(
    connection: &Connection,
    mut reader: Reader,
    writer: Writer,
    queue: mpsc::Receiver<Bytes>,
    shutdown: &CancellationToken,
) -> String {
    let mut writer_task = tokio::spawn(write_queued(writer, queue, Batching::Gathered));
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    let reason = loop {
        let frame = tokio::select! {
            () = shutdown.cancelled() => break "host shutting down".to_string(),
            _ = keepalive.tick() => {
                // Id 0 is never a caller's: its answer is dropped on arrival.
                let ping = HostMessage::Request { id: 0, request: Request::Ping { delay_ms: 0 } };
                if let Ok(frame) = encode_message(&ping) {
                    let _ = connection.outgoing.try_send(frame);
                }
                continue;
            }
            finished = &mut writer_task => break match finished {
                Ok(Ok(())) => "writer stopped".to_string(),
                Ok(Err(e)) => format!("write failed: {e}"),
                Err(e) => format!("writer task failed: {e}"),
            },
            frame = reader.next() => frame,
        };
        match frame {
            None => break "enclave closed the connection".to_string(),
            Some(Err(e)) => break format!("bad frame from enclave: {e}"),
            Some(Ok(frame)) => match decode_message::<EnclaveMessage>(&frame) {
                Ok(EnclaveMessage::Response { id, response }) => connection.complete(id, response),
                Ok(other) => break format!("unexpected message from enclave: {other:?}"),
                Err(e) => break format!("bad frame from enclave: {e}"),
            },
        }
    };
    writer_task.abort();
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::wire::messages::{PROTOCOL_VERSION, peek_hello_version};
    use common::wire::transport::bind_unix;
    use futures_util::SinkExt;
    use tokio::io::AsyncWriteExt;

    fn client(path: &std::path::Path, shutdown: &CancellationToken) -> EnclaveClient {
        EnclaveClient::start(
            Endpoint::Unix(path.to_path_buf()),
            Duration::from_secs(5),
            Duration::from_millis(100),
            shutdown.clone(),
        )
    }

    /// Accepts one connection, completes the handshake, then hands the raw halves over.
    async fn accept_and_greet(
        listener: &tokio::net::UnixListener,
    ) -> (
        FramedRead<tokio::net::unix::OwnedReadHalf, FrameCodec>,
        FramedWrite<tokio::net::unix::OwnedWriteHalf, FrameCodec>,
    ) {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, w) = stream.into_split();
        let mut reader = FramedRead::new(r, FrameCodec::new());
        let mut writer = FramedWrite::new(w, FrameCodec::new());
        let hello = reader.next().await.unwrap().unwrap();
        assert_eq!(peek_hello_version(&hello), Some(PROTOCOL_VERSION));
        let reply = EnclaveMessage::Hello(Hello::current("test", BuildFlavor::Mock));
        writer.send(encode_message(&reply).unwrap()).await.unwrap();
        (reader, writer)
    }

    async fn wait_connected(client: &EnclaveClient) {
        for _ in 0..200 {
            if client.peer().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("client never connected");
    }

    #[tokio::test]
    async fn garbage_from_the_enclave_fails_in_flight_requests_and_reconnects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.sock");
        let bound = bind_unix(&path, 0o600).unwrap();
        let shutdown = CancellationToken::new();
        let client = client(&path, &shutdown);

        let (mut reader, writer) = accept_and_greet(&bound.listener).await;
        wait_connected(&client).await;
        let in_flight = tokio::spawn({
            let client = client.clone();
            async move { client.call(Request::Ping { delay_ms: 0 }).await }
        });
        // The request arrives; answer it with garbage instead of a response.
        reader.next().await.unwrap().unwrap();
        let mut raw = writer.into_inner();
        raw.write_all(&[0, 0, 0, 3, 0xde, 0xad, 0xbe])
            .await
            .unwrap();
        let error = in_flight.await.unwrap().unwrap_err();
        assert_eq!(
            error.to_wire().code,
            ErrorCode::EnclaveUnavailable,
            "{error}"
        );

        // The client comes back on its own, and the new connection serves requests.
        let (mut reader, mut writer) = accept_and_greet(&bound.listener).await;
        wait_connected(&client).await;
        let call = tokio::spawn({
            let client = client.clone();
            async move { client.call(Request::Ping { delay_ms: 0 }).await }
        });
        let frame = reader.next().await.unwrap().unwrap();
        let HostMessage::Request { id, .. } = decode_message(&frame).unwrap() else {
            panic!("expected a request");
        };
        let answer = EnclaveMessage::Response {
            id,
            response: Ok(Response::Pong {
                build: BuildFlavor::Mock,
            }),
        };
        writer.send(encode_message(&answer).unwrap()).await.unwrap();
        assert_eq!(
            call.await.unwrap().unwrap(),
            Response::Pong {
                build: BuildFlavor::Mock
            }
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn version_mismatch_is_reported_with_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.sock");
        let bound = bind_unix(&path, 0o600).unwrap();
        let shutdown = CancellationToken::new();
        let client = client(&path, &shutdown);
        let (stream, _) = bound.listener.accept().await.unwrap();
        let (r, w) = stream.into_split();
        let mut reader = FramedRead::new(r, FrameCodec::new());
        let mut writer = FramedWrite::new(w, FrameCodec::new());
        reader.next().await.unwrap().unwrap();
        let refusal = EnclaveMessage::VersionMismatch {
            enclave: PROTOCOL_VERSION + 1,
            host: PROTOCOL_VERSION,
        };
        writer
            .send(encode_message(&refusal).unwrap())
            .await
            .unwrap();
        drop(writer);
        // Wait for the client to record the failure, then check what a caller sees.
        let mut last = String::new();
        for _ in 0..200 {
            match client.call(Request::Ping { delay_ms: 0 }).await {
                Err(e @ CallError::Unavailable { .. }) if e.to_string().contains("mismatch") => {
                    assert_eq!(e.to_wire().code, ErrorCode::ProtocolMismatch);
                    last = e.to_string();
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                Ok(r) => panic!("unexpected answer {r:?}"),
            }
        }
        assert!(
            last.contains(&format!("enclave speaks {}", PROTOCOL_VERSION + 1))
                && last.contains(&format!("host speaks {PROTOCOL_VERSION}")),
            "{last}"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn no_enclave_fails_fast_with_enclave_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let client = client(&dir.path().join("nobody.sock"), &shutdown);
        let error = client
            .call(Request::Ping { delay_ms: 0 })
            .await
            .unwrap_err();
        // Unavailable, not Timeout: the call failed at once instead of waiting.
        assert_eq!(error.to_wire().code, ErrorCode::EnclaveUnavailable);
        shutdown.cancel();
    }
}

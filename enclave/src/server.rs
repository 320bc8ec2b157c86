//! The enclave's listener: one task per connection, one task per request, answers
//! written back in completion order and matched by request id on the host.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::wire::frame::{
    Batching, FrameCodec, FrameError, decode_message, encode_message, write_queued,
};
use common::wire::hello::{self, HandshakeError};
use common::wire::messages::{EnclaveMessage, Hello, HostMessage};
use common::wire::transport::{Listener, Stream};
use common::wire::{ErrorCode, WireError};
use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::BUILD_FLAVOR;
use crate::dispatch::Dispatcher;

/// How long a new connection may take to say hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once. The host keeps one; the rest cover a restart of the
/// host or a second one. Beyond this, a new connection is closed at once (and logged).
pub const MAX_CONNECTIONS: usize = 16;
/// Requests in flight across all connections. Beyond this a request waits up to
/// [`BUSY_WAIT`] for a slot (a burst of quick requests passes), then is answered
/// `enclave_busy`; with frames of at most 1 MiB, request memory stays under 128 MiB
/// whatever the host sends.
pub const MAX_IN_FLIGHT: usize = 128;
/// How long a request at the limit waits for a slot before it is refused. The
/// connection's reader waits with it, which slows a flooding peer down.
pub const BUSY_WAIT: Duration = Duration::from_millis(250);
/// A connection that sends nothing for this long is closed (the host pings every two
/// minutes), so idle connections cannot hold the slots.
pub const IDLE_TIMEOUT: Duration = Duration::from_mins(10);
/// Responses buffered for the writer before request tasks wait.
const WRITE_QUEUE: usize = 1024;

/// Serves connections until `shutdown` is cancelled.
pub async fn serve(listener: Listener, dispatcher: Arc<Dispatcher>, shutdown: CancellationToken) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                info!("shutting down: no longer accepting connections");
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = connections.clone().try_acquire_owned() else {
                        warn!(%peer, limit = MAX_CONNECTIONS, "connection refused: at the connection limit");
                        drop(stream);
                        continue;
                    };
                    let dispatcher = dispatcher.clone();
                    let shutdown = shutdown.clone();
                    let in_flight = in_flight.clone();
                    tokio::spawn(async move {
                        info!(%peer, "connection opened");
                        match serve_connection(stream, dispatcher, in_flight, shutdown).await {
                            Ok(()) => info!(%peer, "connection closed"),
                            Err(reason) => warn!(%peer, %reason, "connection closed"),
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The Hello exchange failed (timeout, not a hello, version mismatch).
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    /// A second hello after the handshake.
    #[error("unexpected hello after the handshake")]
    RepeatedHello,
    /// Nothing arrived for [`IDLE_TIMEOUT`].
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
}

async fn serve_connection(
    stream: Stream,
    dispatcher: Arc<Dispatcher>,
    in_flight: Arc<Semaphore>,
    shutdown: CancellationToken,
) -> Result<(), ConnectionError> {
    let (read_half, write_half) = tokio::io::split(stream);
    let mut reader = FramedRead::new(read_half, FrameCodec::new());
    let mut writer = FramedWrite::new(write_half, FrameCodec::new());

    let ours = Hello::current("signer-enclave", BUILD_FLAVOR);
    let host_hello = match hello::answer(&mut reader, &mut writer, ours, HANDSHAKE_TIMEOUT).await {
        Ok(theirs) => theirs,
        // A peer that connects and leaves (a health probe) is not an error.
        Err(HandshakeError::Closed) => return Ok(()),
        Err(e) => return Err(ConnectionError::Handshake(e)),
    };
    debug!(host_software = %host_hello.software_version, host_build = %host_hello.build, "handshake");

    let (responses, queue) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    let writer_task = tokio::spawn(write_queued(writer, queue, Batching::Immediate));

    let outcome = loop {
        let frame = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            frame = tokio::time::timeout(IDLE_TIMEOUT, reader.next()) => frame,
        };
        let Ok(frame) = frame else {
            break Err(ConnectionError::Idle(IDLE_TIMEOUT));
        };
        let frame = match frame {
            None => break Ok(()),
            Some(Err(e)) => break Err(ConnectionError::Frame(e)),
            Some(Ok(frame)) => frame,
        };
        let (id, request) = match decode_message::<HostMessage>(&frame) {
            Ok(HostMessage::Request { id, request }) => (id, request),
            Ok(HostMessage::Hello(_)) => break Err(ConnectionError::RepeatedHello),
            Err(e) => break Err(ConnectionError::Frame(e)),
        };
        let Ok(Ok(permit)) =
            tokio::time::timeout(BUSY_WAIT, in_flight.clone().acquire_owned()).await
        else {
            // Still at the limit: refuse without spawning anything.
            let busy = EnclaveMessage::Response {
                id,
                response: Err(WireError::new(
                    ErrorCode::EnclaveBusy,
                    format!("the enclave has {MAX_IN_FLIGHT} requests in flight; retry shortly"),
                )),
            };
            let Ok(bytes) = encode_message(&busy) else {
                break Ok(());
            };
            if responses.send(bytes).await.is_err() {
                break Ok(());
            }
            continue;
        };
        let dispatcher = dispatcher.clone();
        let responses = responses.clone();
        tokio::spawn(async move {
            let response = dispatcher.handle(request).await;
            let message = EnclaveMessage::Response { id, response };
            match encode_message(&message) {
                Ok(bytes) => {
                    // A closed queue means the connection is gone; the host has
                    // already failed this request as enclave_unavailable.
                    let _ = responses.send(bytes).await;
                }
                Err(e) => warn!(id, error = %e, "response could not be encoded"),
            }
            drop(permit);
        });
    };
    // Let requests already running finish and be written, unless the peer is gone.
    drop(responses);
    let _ = writer_task.await;
    outcome
}

//! The enclave's listener: one task per connection, one task per request, answers
//! written back in completion order and matched by request id on the host.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::wire::frame::{FrameCodec, FrameError, decode_message, encode_message, write_queued};
use common::wire::hello::{self, HandshakeError};
use common::wire::messages::{EnclaveMessage, Hello, HostMessage};
use common::wire::transport::{Listener, Stream};
use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::BUILD_FLAVOR;
use crate::dispatch::Dispatcher;

/// How long a new connection may take to say hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests one connection may have in flight; beyond this the enclave stops reading
/// from that connection until some finish (backpressure instead of unbounded memory).
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 4096;
/// Responses buffered for the writer before request tasks wait.
const WRITE_QUEUE: usize = 1024;

/// Serves connections until `shutdown` is cancelled.
pub async fn serve(listener: Listener, dispatcher: Arc<Dispatcher>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                info!("shutting down: no longer accepting connections");
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let dispatcher = dispatcher.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        info!(%peer, "connection opened");
                        match serve_connection(stream, dispatcher, shutdown).await {
                            Ok(()) => info!(%peer, "connection closed"),
                            Err(reason) => warn!(%peer, %reason, "connection closed"),
                        }
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
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
}

async fn serve_connection(
    stream: Stream,
    dispatcher: Arc<Dispatcher>,
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
    let writer_task = tokio::spawn(write_queued(writer, queue));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));

    let outcome = loop {
        let frame = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            frame = reader.next() => frame,
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
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break Ok(());
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

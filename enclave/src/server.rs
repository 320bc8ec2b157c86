//! The enclave's listener: one task per connection, one task per request, answers
//! written back in completion order and matched by request id on the host.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::frame::{FrameCodec, FrameError, decode_message, encode_message, write_queued};
use common::protocol::{EnclaveMessage, Hello, HostMessage, PROTOCOL_VERSION, peek_hello_version};
use common::transport::{Listener, Stream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::BUILD_FLAVOR;
use crate::handler::Handler;

/// How long a new connection may take to say hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests one connection may have in flight; beyond this the enclave stops reading
/// from that connection until some finish (backpressure instead of unbounded memory).
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 4096;
/// Responses buffered for the writer before request tasks wait.
const WRITE_QUEUE: usize = 1024;

/// Serves connections until `shutdown` is cancelled.
pub async fn serve(listener: Listener, handler: Arc<Handler>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                info!("shutting down: no longer accepting connections");
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let handler = handler.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        info!(%peer, "connection opened");
                        match serve_connection(stream, handler, shutdown).await {
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

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("no hello within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("first frame is not a hello")]
    NotHello,
    #[error("protocol version mismatch: host speaks {host}, enclave speaks {enclave}")]
    VersionMismatch { host: u32, enclave: u32 },
    #[error("unexpected hello after the handshake")]
    RepeatedHello,
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
}

async fn serve_connection(
    stream: Stream,
    handler: Arc<Handler>,
    shutdown: CancellationToken,
) -> Result<(), ConnectionError> {
    let (read_half, write_half) = tokio::io::split(stream);
    let mut reader = FramedRead::new(read_half, FrameCodec::new());
    let mut writer = FramedWrite::new(write_half, FrameCodec::new());

    let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next()).await {
        Err(_) => return Err(ConnectionError::HandshakeTimeout(HANDSHAKE_TIMEOUT)),
        Ok(None) => return Ok(()),
        Ok(Some(frame)) => frame?,
    };
    let host_version = peek_hello_version(&first).ok_or(ConnectionError::NotHello)?;
    if host_version != PROTOCOL_VERSION {
        let refusal = EnclaveMessage::VersionMismatch {
            enclave: PROTOCOL_VERSION,
            host: host_version,
        };
        // Best effort: the host learns both versions, then we close either way.
        let _ = writer.send(encode_message(&refusal)?).await;
        return Err(ConnectionError::VersionMismatch {
            host: host_version,
            enclave: PROTOCOL_VERSION,
        });
    }
    let HostMessage::Hello(host_hello) = decode_message::<HostMessage>(&first)? else {
        return Err(ConnectionError::NotHello);
    };
    debug!(host_software = %host_hello.software_version, "handshake");
    writer
        .send(encode_message(&EnclaveMessage::Hello(Hello::current(
            BUILD_FLAVOR,
        )))?)
        .await?;

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
        let handler = handler.clone();
        let responses = responses.clone();
        tokio::spawn(async move {
            let response = handler.handle(request).await;
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

//! The host API's connections. `axum::serve` has no read deadlines and no cap, so a
//! caller that opens connections and sends half a request (or nothing) could hold the
//! socket's capacity for ever. Here each connection is served by hyper with a deadline
//! for a request's headers (which also closes a keep-alive connection idle that long),
//! the router reads each body within its own deadline (`router::read_body_within`), and
//! at most `max_connections` are open: the next caller gets `too_many_connections` and
//! the connection is closed.

use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use common::wire::ErrorCode;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

use super::extract::Caller;

/// What slow, idle or numerous callers may hold.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// A request's headers must arrive within this; an idle keep-alive connection is
    /// closed after it.
    pub header_read_timeout: Duration,
}

/// How long a refused connection is given to take its answer.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `stop_accepting` is cancelled, then lets every open
/// connection finish its request in flight and waits for them.
pub async fn serve(
    listener: UnixListener,
    app: Router,
    limits: ConnectionLimits,
    stop_accepting: CancellationToken,
) -> std::io::Result<()> {
    let slots = std::sync::Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
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
            tokio::spawn(refuse(stream, limits.max_connections));
            continue;
        };
        let caller = Caller::of(&stream);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(caller));
            app.clone().oneshot(request)
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "host API connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Errors after which the listener is still usable.
fn is_transient(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)
    ) || e.kind() == std::io::ErrorKind::ConnectionAborted
}

/// Answers a connection over the cap with `too_many_connections` and closes it.
async fn refuse(mut stream: UnixStream, max_connections: usize) {
    let code = ErrorCode::TooManyConnections;
    let body = serde_json::json!({
        "error": {
            "code": code.as_str(),
            "message": format!(
                "signer-host has {max_connections} connections open, its limit \
                 (api.max_connections); retry shortly or reuse a connection"
            ),
        }
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 {} Service Unavailable\r\ncontent-type: application/json\r\n\
         connection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{body}",
        code.http_status(),
        body.len()
    );
    warn!(
        max_connections,
        "connection refused: at the connection limit"
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

//! The KMS relay: the enclave has no network, so its TCP connection to KMS is a vsock
//! stream to this relay, which copies bytes to the one configured KMS endpoint and to
//! nothing else. TLS runs end to end between the enclave and KMS: the relay sees only
//! ciphertext and cannot choose where the enclave's bytes go.

use std::time::Duration;

use common::wire::transport::{Listener, Stream};

use crate::counted_warnings::CountedWarnings;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Relayed connections open at once, at most. The enclave makes at most 64 KMS calls at
/// a time over connections it reuses; more than twice that is not the enclave's pool,
/// and each costs two descriptors and a task. Beyond it a connection is closed at once.
pub const MAX_RELAYED: usize = 128;

/// TCP keepalives on the connection to KMS, as on PostgreSQL's: a KMS endpoint that
/// vanishes without closing (a network partition) is noticed within about half a
/// minute, so the relay lets go of both ends instead of holding them forever.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;
/// Unacknowledged data is given up on after this.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// `host:port` of the KMS endpoint, e.g. `kms.eu-west-1.amazonaws.com:443`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayTarget {
    pub host: String,
    pub port: u16,
}

impl RelayTarget {
    /// From an endpoint URL such as `https://kms.eu-west-1.amazonaws.com` or
    /// `https://localhost:4443`.
    pub fn from_url(url: &str) -> Result<RelayTarget, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("KMS endpoint {url:?} must be an https:// URL"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("KMS endpoint {url:?} has no usable host"));
        }
        // Host names only (KMS endpoints are names); IPv6 literals are not supported.
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host.to_string(),
                port.parse::<u16>()
                    .map_err(|_| format!("KMS endpoint {url:?}: bad port {port:?}"))?,
            ),
            None => (authority.to_string(), 443),
        };
        Ok(RelayTarget { host, port })
    }
}

impl std::fmt::Display for RelayTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Accepts enclave connections until `shutdown`, relaying each to `target`, at most
/// `max_relayed` ([`MAX_RELAYED`]) at once.
pub async fn run(
    listener: Listener,
    target: RelayTarget,
    max_relayed: usize,
    shutdown: CancellationToken,
) {
    info!(%target, "KMS relay listening");
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_relayed));
    let refusals = CountedWarnings::default();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    drop(stream);
                    if let Some(refused) = refusals.count() {
                        warn!(
                            %peer,
                            max_relayed,
                            refused,
                            "KMS relay full; connections closed (since the last such line)"
                        );
                    }
                    continue;
                };
                let target = target.clone();
                tokio::spawn(async move {
                    if let Err(reason) = relay_one(stream, &target).await {
                        warn!(%peer, %target, %reason, "KMS relay connection failed");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                warn!(error = %e, "KMS relay accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn relay_one(mut enclave: Stream, target: &RelayTarget) -> Result<(), String> {
    let mut upstream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| format!("connect timed out after {CONNECT_TIMEOUT:?}"))?
    .map_err(|e| format!("connect failed: {e}"))?;
    tune_upstream(&upstream)?;
    match tokio::io::copy_bidirectional(&mut enclave, &mut upstream).await {
        Ok((up, down)) => {
            debug!(%target, bytes_up = up, bytes_down = down, "KMS relay connection closed");
            Ok(())
        }
        // A reset at either end is how keep-alive connections usually end.
        Err(e) => {
            debug!(%target, error = %e, "KMS relay connection ended");
            Ok(())
        }
    }
}

fn tune_upstream(upstream: &TcpStream) -> Result<(), String> {
    // Requests are small and latency-bound: never wait to coalesce segments.
    upstream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let socket = socket2::SockRef::from(upstream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    socket
        .set_tcp_keepalive(&keepalive)
        .map_err(|e| format!("TCP keepalive: {e}"))?;
    socket
        .set_tcp_user_timeout(Some(TCP_USER_TIMEOUT))
        .map_err(|e| format!("TCP_USER_TIMEOUT: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::wire::transport::Endpoint;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn targets_come_from_https_urls_only() {
        assert_eq!(
            RelayTarget::from_url("https://kms.eu-west-1.amazonaws.com").unwrap(),
            RelayTarget {
                host: "kms.eu-west-1.amazonaws.com".into(),
                port: 443
            }
        );
        assert_eq!(
            RelayTarget::from_url("https://localhost:4443/").unwrap(),
            RelayTarget {
                host: "localhost".into(),
                port: 4443
            }
        );
        assert!(RelayTarget::from_url("http://kms.example").is_err());
        assert!(RelayTarget::from_url("https://").is_err());
        assert!(RelayTarget::from_url("https://user@evil:1").is_err());
        assert!(RelayTarget::from_url("https://host:notaport").is_err());
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_to_the_configured_target_only() {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = upstream.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf.map(|b| b.to_ascii_uppercase()))
                .await
                .unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::Unix(dir.path().join("relay.sock"));
        let listener = Listener::bind(&endpoint, 0o600).unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(run(
            listener,
            RelayTarget {
                host: "127.0.0.1".into(),
                port,
            },
            MAX_RELAYED,
            shutdown.clone(),
        ));
        let mut client = Stream::connect(&endpoint).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut answer = [0u8; 5];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HELLO");
        shutdown.cancel();
    }

    /// The connection to KMS notices a vanished endpoint: keepalives and a user timeout.
    #[tokio::test]
    async fn the_connection_to_kms_notices_a_vanished_endpoint() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune_upstream(&upstream).unwrap();
        let socket = socket2::SockRef::from(&upstream);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(TCP_USER_TIMEOUT));
        assert!(upstream.nodelay().unwrap());
    }

    /// At most `max_relayed` connections are relayed at once; the next is closed at
    /// once, and once one ends a new one is relayed again.
    #[tokio::test]
    async fn connections_beyond_the_relays_bound_are_closed() {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = upstream.local_addr().unwrap().port();
        // Holds every upstream connection open, echoing one byte each.
        tokio::spawn(async move {
            while let Ok((mut s, _)) = upstream.accept().await {
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    while s.read_exact(&mut byte).await.is_ok() {
                        if s.write_all(&byte).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::Unix(dir.path().join("relay.sock"));
        let listener = Listener::bind(&endpoint, 0o600).unwrap();
        let shutdown = CancellationToken::new();
        let target = RelayTarget {
            host: "127.0.0.1".into(),
            port,
        };
        let max_relayed = 4;
        tokio::spawn(run(listener, target, max_relayed, shutdown.clone()));
        let echoes = |mut client: Stream| async move {
            client.write_all(b"x").await.ok()?;
            let mut byte = [0u8; 1];
            client.read_exact(&mut byte).await.ok()?;
            Some(client)
        };
        let mut relayed = Vec::new();
        for i in 0..max_relayed {
            let client = Stream::connect(&endpoint).await.unwrap();
            relayed.push(
                echoes(client)
                    .await
                    .unwrap_or_else(|| panic!("connection {i}")),
            );
        }
        let mut over = Stream::connect(&endpoint).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), over.read(&mut byte))
            .await
            .expect("the connection over the bound is closed, not left waiting");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        drop(relayed.pop());
        // The freed slot is taken again (the relay notices the close first).
        let again = async {
            loop {
                let client = Stream::connect(&endpoint).await.unwrap();
                if let Some(client) = echoes(client).await {
                    return client;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), again)
            .await
            .expect("a slot freed is used again");
        shutdown.cancel();
    }
}

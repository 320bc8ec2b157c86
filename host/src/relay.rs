//! The KMS relay: the enclave has no network, so its TCP connection to KMS is a vsock
//! stream to this relay, which copies bytes to the one configured KMS endpoint and to
//! nothing else. TLS runs end to end between the enclave and KMS: the relay sees only
//! ciphertext and cannot choose where the enclave's bytes go.

use std::time::Duration;

use common::wire::transport::{Listener, Stream};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Accepts enclave connections until `shutdown`, relaying each to `target`.
pub async fn run(listener: Listener, target: RelayTarget, shutdown: CancellationToken) {
    info!(%target, "KMS relay listening");
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let target = target.clone();
                tokio::spawn(async move {
                    if let Err(reason) = relay_one(stream, &target).await {
                        warn!(%peer, %target, %reason, "KMS relay connection failed");
                    }
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
    // Requests are small and latency-bound: never wait to coalesce segments.
    upstream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
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
            shutdown.clone(),
        ));
        let mut client = Stream::connect(&endpoint).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut answer = [0u8; 5];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HELLO");
        shutdown.cancel();
    }
}

//! Closed-loop load: each client runs its requests one after another on its own
//! connection, and the run reports throughput and latency percentiles.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::http::HttpConnection;

/// Throughput and latency of one run at one concurrency.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub per_s: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// One client's unit of work.
pub trait RoundTrip: Send + 'static {
    fn once(&mut self) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
}

/// Warm-up requests per client before the clock starts (connections, caches, pools).
const WARM_UP: usize = 10;

/// How many round trips [`measure`] makes for `requests` over `clients`, warm-up included.
pub fn requests_sent(clients: usize, requests: usize) -> usize {
    let clients = clients.max(1);
    (requests.div_ceil(clients).max(1) + WARM_UP) * clients
}

/// Runs `requests` round trips spread over `clients` connections made by `connect`.
pub async fn measure<C, F, Fut>(
    clients: usize,
    requests: usize,
    connect: F,
) -> anyhow::Result<Stats>
where
    C: RoundTrip,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<C>>,
{
    let clients = clients.max(1);
    let per_client = requests.div_ceil(clients).max(1);
    let mut connections = Vec::with_capacity(clients);
    for index in 0..clients {
        connections.push(connect(index).await?);
    }
    // Every client warms up at once and the clock starts when all are done, so no
    // connection sits idle long enough for the host to close it.
    let ready = std::sync::Arc::new(tokio::sync::Barrier::new(clients + 1));
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|mut client| {
            let ready = ready.clone();
            tokio::spawn(async move {
                let warmed = async {
                    for _ in 0..WARM_UP {
                        client.once().await?;
                    }
                    anyhow::Ok(())
                }
                .await;
                ready.wait().await;
                warmed?;
                let mut latencies = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let t = Instant::now();
                    client.once().await?;
                    latencies.push(t.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    ready.wait().await;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(per_client * clients);
    for task in tasks {
        latencies.extend(task.await.context("benchmark client")??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok(Stats {
        per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    })
}

/// A request to the host API whose answer must be 200.
pub struct ApiClient {
    connection: HttpConnection,
    method: &'static str,
    path: &'static str,
    body: Option<String>,
}

impl ApiClient {
    pub async fn connect(
        socket: &Path,
        method: &'static str,
        path: &'static str,
        body: Option<String>,
    ) -> anyhow::Result<ApiClient> {
        Ok(ApiClient {
            connection: HttpConnection::connect(socket).await?,
            method,
            path,
            body,
        })
    }

    pub async fn ping(socket: &Path) -> anyhow::Result<ApiClient> {
        ApiClient::connect(socket, "GET", "/v1/ping", None).await
    }

    /// The answer's body, if the status is 200.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<&[u8]> {
        let (status, answer) = self.connection.call(method, path, body).await?;
        ok_body(path, status, answer)
    }
}

fn ok_body<'a>(path: &str, status: u16, answer: &'a [u8]) -> anyhow::Result<&'a [u8]> {
    if status != 200 {
        bail!(
            "{path} answered {status}: {}",
            String::from_utf8_lossy(answer)
        );
    }
    Ok(answer)
}

impl RoundTrip for ApiClient {
    async fn once(&mut self) -> anyhow::Result<()> {
        let (status, answer) = self
            .connection
            .call(self.method, self.path, self.body.as_deref())
            .await?;
        ok_body(self.path, status, answer).map(drop)
    }
}

/// One unit is a channel acquire and the release of what it returned.
pub struct ChannelPairClient(ApiClient);

impl ChannelPairClient {
    pub async fn connect(socket: &Path) -> anyhow::Result<ChannelPairClient> {
        ApiClient::connect(socket, "POST", "/v1/channels/acquire", None)
            .await
            .map(ChannelPairClient)
    }
}

impl RoundTrip for ChannelPairClient {
    async fn once(&mut self) -> anyhow::Result<()> {
        let answer = self.0.call("POST", "/v1/channels/acquire", None).await?;
        let lease: serde_json::Value =
            serde_json::from_slice(answer).context("the acquire answer is not JSON")?;
        let release = serde_json::json!({
            "account": lease["account"],
            "lock_token": lease["lock_token"],
        });
        self.0
            .call("POST", "/v1/channels/release", Some(&release.to_string()))
            .await
            .map(drop)
    }
}

/// The size of a ping request on the wire is about this; the baseline echoes as much.
const ECHO_MESSAGE: usize = 96;

/// A bare Unix-socket round trip: write a ping-sized message, read it back.
pub struct EchoClient {
    stream: UnixStream,
    buf: [u8; ECHO_MESSAGE],
}

impl EchoClient {
    pub async fn connect(path: &Path) -> anyhow::Result<EchoClient> {
        Ok(EchoClient {
            stream: UnixStream::connect(path).await?,
            buf: [7; ECHO_MESSAGE],
        })
    }
}

impl RoundTrip for EchoClient {
    async fn once(&mut self) -> anyhow::Result<()> {
        self.stream.write_all(&self.buf).await?;
        self.stream.read_exact(&mut self.buf).await?;
        Ok(())
    }
}

/// Serves echo connections until the runtime stops.
pub async fn serve_echo(listener: UnixListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = [0u8; ECHO_MESSAGE];
            while stream.read_exact(&mut buf).await.is_ok() {
                if stream.write_all(&buf).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Counted(Arc<AtomicUsize>);

    impl RoundTrip for Counted {
        async fn once(&mut self) -> anyhow::Result<()> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    /// The CPU per request the benchmark reports divides by this count, so it must be
    /// every round trip made, warm-up included, also when the clients do not divide
    /// the requests evenly.
    #[tokio::test]
    async fn requests_sent_counts_every_round_trip_measure_makes() {
        for (clients, requests) in [(1, 1), (3, 10), (64, 1_000), (16, 5)] {
            let made = Arc::new(AtomicUsize::new(0));
            measure(clients, requests, |_| {
                let made = made.clone();
                async move { Ok(Counted(made)) }
            })
            .await
            .unwrap();
            assert_eq!(
                made.load(Ordering::Relaxed),
                requests_sent(clients, requests),
                "{clients} clients, {requests} requests"
            );
        }
    }
}

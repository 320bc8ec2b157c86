//! `signer-dev bench`: throughput and latency of a no-op request through the host
//! API to the enclave and back, next to a bare Unix-socket round trip measured in the
//! same run. It prints figures; it never fails on them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::{Method, StatusCode};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use host::api_client::{ApiConnection, request_once};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// An already running host; without it the benchmark starts `signer-dev up`.
    pub socket: Option<PathBuf>,
    pub requests_per_level: usize,
    pub clients: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct Stats {
    pub throughput: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// The size of a ping request on the wire is about this; the baseline echoes as much.
const BASELINE_MESSAGE: usize = 96;

pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let mut dev_stack = None;
    let socket = if let Some(socket) = &options.socket {
        socket.clone()
    } else {
        let (child, socket) = start_dev_stack(scratch.path()).await?;
        dev_stack = Some(child);
        socket
    };
    let result = run_levels(&options, &socket, scratch.path()).await;
    if let Some(mut child) = dev_stack {
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    }
    result
}

async fn run_levels(options: &BenchOptions, socket: &Path, scratch: &Path) -> anyhow::Result<()> {
    let (status, body) = request_once(socket, Method::GET, "/v1/ping", None)
        .await
        .context("pinging the host")?;
    if status != StatusCode::OK {
        bail!("the host is not answering pings ({status}): {body}");
    }
    let echo_path = scratch.join("echo.sock");
    let echo = UnixListener::bind(&echo_path).context("binding the baseline echo socket")?;
    tokio::spawn(serve_echo(echo));

    println!(
        "signer-dev bench: {} requests per level; host {} (enclave build: {})",
        options.requests_per_level,
        socket.display(),
        body["enclave_build"].as_str().unwrap_or("?")
    );
    println!(
        "{:>7}  {:>36}  {:>36}  {:>22}",
        "clients",
        "bare Unix-socket round trip",
        "GET /v1/ping (host -> enclave)",
        "ratio (ping / bare)"
    );
    println!(
        "{:>7}  {:>12}{:>12}{:>12}  {:>12}{:>12}{:>12}  {:>11}{:>11}",
        "", "req/s", "p50", "p99", "req/s", "p50", "p99", "req/s", "p50"
    );
    for &clients in &options.clients {
        let bare = measure(clients, options.requests_per_level, || {
            let path = echo_path.clone();
            async move { BareClient::connect(&path).await }
        })
        .await?;
        let ping = measure(clients, options.requests_per_level, || {
            let path = socket.to_path_buf();
            async move { PingClient::connect(&path).await }
        })
        .await?;
        println!(
            "{:>7}  {:>12.0}{:>12}{:>12}  {:>12.0}{:>12}{:>12}  {:>10.2}x{:>10.1}x",
            clients,
            bare.throughput,
            micros(bare.p50),
            micros(bare.p99),
            ping.throughput,
            micros(ping.p50),
            micros(ping.p99),
            ping.throughput / bare.throughput,
            ping.p50.as_secs_f64() / bare.p50.as_secs_f64().max(1e-9),
        );
    }
    sign_levels(options, socket).await
}

/// Signing throughput: each client signs a payment from its own channel account, so
/// every request is a full KMS round trip (decrypt with attestation) in the enclave.
/// Compared with the ping (the same path without KMS and the key work).
async fn sign_levels(options: &BenchOptions, socket: &Path) -> anyhow::Result<()> {
    let (status, keys) = request_once(socket, Method::GET, "/v1/keys?role=channel", None).await?;
    let channels: Vec<String> = keys["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["public_key"].as_str().map(str::to_string))
        .collect();
    if status != StatusCode::OK || channels.is_empty() {
        println!("\n(no channel keys on this host: signing not measured)");
        return Ok(());
    }
    let requests = (options.requests_per_level / 10).max(100);
    println!(
        "\nPOST /v1/sign, one signer per request ({requests} requests per level; every \
         signature is a KMS Decrypt with attestation, per-call, no cache)"
    );
    println!(
        "{:>7}  {:>12}{:>12}{:>12}  {:>18}",
        "clients", "sig/s", "p50", "p99", "p50 vs ping"
    );
    for &clients in &options.clients {
        let ping = measure(clients, requests, || {
            let path = socket.to_path_buf();
            async move { PingClient::connect(&path).await }
        })
        .await?;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let sign = measure(clients, requests, || {
            let path = socket.to_path_buf();
            let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let channel = channels[index % channels.len()].clone();
            async move { SignClient::connect(&path, &channel).await }
        })
        .await?;
        println!(
            "{:>7}  {:>12.0}{:>12}{:>12}  {:>17.1}x",
            clients,
            sign.throughput,
            micros(sign.p50),
            micros(sign.p99),
            sign.p50.as_secs_f64() / ping.p50.as_secs_f64().max(1e-9),
        );
    }
    Ok(())
}

struct SignClient {
    connection: ApiConnection,
    body: String,
}

impl SignClient {
    async fn connect(path: &Path, channel: &str) -> anyhow::Result<SignClient> {
        use base64::Engine;
        let xdr = benchmark_payment(channel)?;
        let body = serde_json::json!({
            "transaction": base64::engine::general_purpose::STANDARD.encode(xdr),
            "signers": [channel],
        })
        .to_string();
        Ok(SignClient {
            connection: ApiConnection::connect(path).await?,
            body,
        })
    }
}

impl RoundTrip for SignClient {
    async fn once(&mut self) -> anyhow::Result<()> {
        let (status, body) = self
            .connection
            .request_raw(Method::POST, "/v1/sign", Some(self.body.clone()))
            .await?;
        if status != StatusCode::OK {
            bail!(
                "sign failed with {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    }
}

/// A one-payment transaction sourced by `channel`, paying itself, valid two minutes.
fn benchmark_payment(channel: &str) -> anyhow::Result<Vec<u8>> {
    use stellar_xdr::{
        Asset, Limits, Memo, MuxedAccount, Operation, OperationBody, PaymentOp, Preconditions,
        SequenceNumber, TimeBounds, TimePoint, Transaction, TransactionEnvelope, TransactionExt,
        TransactionV1Envelope, Uint256, WriteXdr,
    };
    let account = stellar_strkey::ed25519::PublicKey::from_string(channel)
        .map_err(|e| anyhow::anyhow!("{channel}: {e}"))?
        .0;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let operation = Operation {
        // A user's account moves the funds: the channel only sequences and pays.
        source_account: Some(MuxedAccount::Ed25519(Uint256([0x75; 32]))),
        body: OperationBody::Payment(PaymentOp {
            destination: MuxedAccount::Ed25519(Uint256(account)),
            asset: Asset::Native,
            amount: 1,
        }),
    };
    let envelope = TransactionEnvelope::Tx(TransactionV1Envelope {
        tx: Transaction {
            source_account: MuxedAccount::Ed25519(Uint256(account)),
            fee: 100,
            seq_num: SequenceNumber(1),
            cond: Preconditions::Time(TimeBounds {
                min_time: TimePoint(0),
                max_time: TimePoint(now + 120),
            }),
            memo: Memo::None,
            operations: vec![operation]
                .try_into()
                .map_err(|_| anyhow::anyhow!("one operation"))?,
            ext: TransactionExt::V0,
        },
        signatures: Default::default(),
    });
    Ok(envelope.to_xdr(Limits::none())?)
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// One client's unit of work; each client runs its requests one after another.
trait RoundTrip: Send + 'static {
    fn once(&mut self) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
}

async fn measure<C, F, Fut>(clients: usize, requests: usize, connect: F) -> anyhow::Result<Stats>
where
    C: RoundTrip,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<C>>,
{
    let clients = clients.max(1);
    let per_client = requests.div_ceil(clients);
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut client = connect().await?;
        for _ in 0..20 {
            client.once().await?; // warm-up
        }
        connections.push(client);
    }
    let started = Instant::now();
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
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
    let mut latencies = Vec::with_capacity(per_client * clients);
    for task in tasks {
        latencies.extend(task.await.context("benchmark client")??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok(Stats {
        throughput: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    })
}

struct PingClient {
    connection: ApiConnection,
}

impl PingClient {
    async fn connect(path: &Path) -> anyhow::Result<PingClient> {
        Ok(PingClient {
            connection: ApiConnection::connect(path).await?,
        })
    }
}

impl RoundTrip for PingClient {
    async fn once(&mut self) -> anyhow::Result<()> {
        let (status, body) = self
            .connection
            .request_raw(Method::GET, "/v1/ping", None)
            .await?;
        if status != StatusCode::OK {
            bail!(
                "ping failed with {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    }
}

struct BareClient {
    stream: UnixStream,
    buf: [u8; BASELINE_MESSAGE],
}

impl BareClient {
    async fn connect(path: &Path) -> anyhow::Result<BareClient> {
        Ok(BareClient {
            stream: UnixStream::connect(path).await?,
            buf: [7; BASELINE_MESSAGE],
        })
    }
}

impl RoundTrip for BareClient {
    async fn once(&mut self) -> anyhow::Result<()> {
        self.stream.write_all(&self.buf).await?;
        self.stream.read_exact(&mut self.buf).await?;
        Ok(())
    }
}

async fn serve_echo(listener: UnixListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = [0u8; BASELINE_MESSAGE];
            while stream.read_exact(&mut buf).await.is_ok() {
                if stream.write_all(&buf).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn start_dev_stack(scratch: &Path) -> anyhow::Result<(tokio::process::Child, PathBuf)> {
    let me = std::env::current_exe().context("locating this executable")?;
    let dir = scratch.join("dev");
    let log = std::fs::File::create(scratch.join("dev.log")).context("creating dev.log")?;
    let child = tokio::process::Command::new(me)
        .arg("up")
        .arg("--dir")
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .env("SIGNER_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .context("starting signer-dev up")?;
    let socket = dir.join("host.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok((StatusCode::OK, _)) = request_once(&socket, Method::GET, "/readyz", None).await {
            return Ok((child, socket));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "signer-dev up did not become ready; its log: {}",
        std::fs::read_to_string(scratch.join("dev.log")).unwrap_or_default()
    )
}

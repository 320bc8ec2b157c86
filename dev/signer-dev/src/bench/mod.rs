//! `signer-dev bench`: every figure the performance section of the README quotes,
//! measured in one run next to baselines from the same run on the same machine:
//! the single-core cost of the cryptography, a bare Unix-socket round trip, pings and
//! signatures through host and enclave (per-call and with the enclave's key cache),
//! signatures under injected KMS latency, the enclave's CPU per signature, channel
//! acquire+release, and peak memory. It prints a table (and with `--json` writes the
//! same figures); it never fails on them.

mod baselines;
mod channels;
mod http;
mod load;
mod report;
mod stack;

use std::path::{Path, PathBuf};

use anyhow::Context;

use load::{ApiClient, Stats, measure};
use report::Report;
use stack::{KeyMode, Stack};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Pings per concurrency level; the slower measurements scale from it.
    pub requests: usize,
    pub clients: Vec<usize>,
    pub json: Option<PathBuf>,
    /// A PostgreSQL server (the URL of any database on it, as a role that may create
    /// databases) for the channel pool on PostgreSQL; not measured without it.
    pub postgres: Option<String>,
    /// The stack's `SIGNER_LOG` while measured.
    pub stack_log: String,
}

/// Concurrency of the measurements quoted at one level only.
const FULL_LOAD: usize = 64;
const KMS_LATENCIES_MS: [u64; 3] = [0, 10, 50];
const CHANNEL_POOLS: [u32; 2] = [1_000, 10_000];

pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let mut report = Report::default();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    report.set("machine.cores", cores as f64);
    eprintln!("signer-dev bench: baselines");
    report.set(
        "baseline.ed25519_sign_per_s",
        baselines::ed25519_sign_per_s()?,
    );
    report.set(
        "baseline.rsa_decrypt_per_s",
        baselines::rsa_decrypt_per_s()?,
    );
    let uds = baselines::uds_round_trip(scratch.path(), FULL_LOAD, options.requests).await?;
    report.set("baseline.uds_round_trip_per_s", uds.per_s);

    let dir = scratch.path().join("dev");
    eprintln!(
        "signer-dev bench: per-call stack (SIGNER_LOG={})",
        options.stack_log
    );
    let stack = Stack::start(&dir, KeyMode::PerCall, &options.stack_log).await?;
    let measured = per_call_figures(&options, &stack, scratch.path(), &mut report).await;
    record_peak_memory(&stack, &mut report);
    stack.stop().await;
    measured?;

    eprintln!("signer-dev bench: cached stack");
    let stack = Stack::start(&dir, KeyMode::Cached, &options.stack_log).await?;
    let measured = sign_levels(
        &options,
        &stack,
        "sign_cached",
        options.requests / 2,
        &mut report,
    )
    .await;
    record_peak_memory(&stack, &mut report);
    stack.stop().await;
    measured?;

    print!("{}", report.table());
    if let Some(path) = &options.json {
        std::fs::write(path, report.json())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nfigures written to {}", path.display());
    }
    Ok(())
}

async fn per_call_figures(
    options: &BenchOptions,
    stack: &Stack,
    scratch: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    eprintln!("signer-dev bench: ping");
    for &clients in &options.clients {
        let ping = measure_level(stack, report, "ping", clients, options.requests, || {
            measure(clients, options.requests, |_| {
                ApiClient::ping(&stack.socket)
            })
        })
        .await?;
        report.set_stats(&format!("ping.c{clients}"), ping);
    }
    let signatures = (options.requests / 10).max(200);
    sign_levels(options, stack, "sign_per_call", signatures, report).await?;
    enclave_cpu(stack, signatures, report).await?;
    eprintln!("signer-dev bench: KMS latency");
    for ms in KMS_LATENCIES_MS {
        stack.set_kms_latency(ms).await?;
        let stats = sign(stack, FULL_LOAD, signatures).await;
        stack.set_kms_latency(0).await?;
        report.set(
            &format!("sign_per_call_kms_latency.ms{ms}.per_s"),
            stats?.per_s,
        );
    }
    eprintln!("signer-dev bench: channels");
    let pairs = options.requests / 2;
    for accounts in CHANNEL_POOLS {
        let pool = (channels::PoolStore::Sqlite, accounts);
        let stats = channels::pairs(stack, scratch, pool, 1, FULL_LOAD, pairs).await?;
        report.set(&format!("channels.a{accounts}.pairs_per_s"), stats.per_s);
    }
    if let Some(server_url) = &options.postgres {
        eprintln!("signer-dev bench: channels on PostgreSQL");
        for hosts in [1, 3] {
            let pool = (channels::PoolStore::Postgres { server_url }, 1_000);
            let stats = channels::pairs(stack, scratch, pool, hosts, FULL_LOAD, pairs).await?;
            report.set(
                &format!("channels_postgres.hosts{hosts}.pairs_per_s"),
                stats.per_s,
            );
        }
    }
    Ok(())
}

async fn sign_levels(
    options: &BenchOptions,
    stack: &Stack,
    prefix: &str,
    signatures: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    eprintln!("signer-dev bench: {prefix}");
    for &clients in &options.clients {
        let stats = measure_level(stack, report, prefix, clients, signatures, || {
            sign(stack, clients, signatures)
        })
        .await?;
        report.set_stats(&format!("{prefix}.c{clients}"), stats);
    }
    Ok(())
}

/// Runs one level's measurement; at full load it also records the CPU time each process
/// used per request (`cpu_us_per_request.{name}.client|host|enclave|kms|total`, warm-up
/// requests included in both the time and the count) and how many cores were busy on
/// average (`cores_busy.{name}`, all four processes' CPU over the wall time).
async fn measure_level<F, Fut>(
    stack: &Stack,
    report: &mut Report,
    name: &str,
    clients: usize,
    requests: usize,
    run: F,
) -> anyhow::Result<Stats>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Stats>>,
{
    if clients != FULL_LOAD {
        return run().await;
    }
    let before = cpu_by_process(stack)?;
    let started = std::time::Instant::now();
    let stats = run().await?;
    let wall = started.elapsed();
    let after = cpu_by_process(stack)?;
    let count = load::requests_sent(clients, requests) as f64;
    let per_request_us = |used: std::time::Duration| used.as_secs_f64() * 1e6 / count;
    let mut used_by_all = std::time::Duration::ZERO;
    for ((process, start), (_, end)) in before.iter().zip(&after) {
        let used = end.saturating_sub(*start);
        used_by_all += used;
        report.set(
            &format!("cpu_us_per_request.{name}.{process}"),
            per_request_us(used),
        );
    }
    report.set(
        &format!("cpu_us_per_request.{name}.total"),
        per_request_us(used_by_all),
    );
    report.set(
        &format!("cores_busy.{name}"),
        used_by_all.as_secs_f64() / wall.as_secs_f64(),
    );
    Ok(stats)
}

/// CPU time so far of this process (the benchmark's clients) and of the stack's three.
fn cpu_by_process(stack: &Stack) -> anyhow::Result<[(&'static str, std::time::Duration); 4]> {
    let processes = &stack.processes;
    Ok([
        ("client", stack::cpu_time(std::process::id())?),
        ("host", stack::cpu_time(processes.host_pid)?),
        ("enclave", stack::cpu_time(processes.enclave_pid)?),
        ("kms", stack::cpu_time(processes.mock_kms_pid)?),
    ])
}

/// Each client signs a payment sourced by one of the stack's channel accounts.
async fn sign(stack: &Stack, clients: usize, signatures: usize) -> anyhow::Result<Stats> {
    use base64::Engine;
    let channels = &stack.channels;
    measure(clients, signatures, |index| {
        let channel = channels[index % channels.len()].clone();
        let socket = stack.socket.clone();
        async move {
            let xdr = benchmark_payment(&channel)?;
            let body = serde_json::json!({
                "transaction": base64::engine::general_purpose::STANDARD.encode(xdr),
                "signers": [channel],
            });
            ApiClient::connect(&socket, "POST", "/v1/sign", Some(body.to_string())).await
        }
    })
    .await
}

/// The enclave's CPU time over a per-call signing run, per signature (warm-up
/// requests included in both the time and the count).
async fn enclave_cpu(stack: &Stack, signatures: usize, report: &mut Report) -> anyhow::Result<()> {
    let clients = 16;
    let pid = stack.processes.enclave_pid;
    let before = stack::cpu_time(pid)?;
    sign(stack, clients, signatures).await?;
    let used = stack::cpu_time(pid)?.saturating_sub(before);
    let count = load::requests_sent(clients, signatures);
    report.set(
        "enclave_cpu_ms_per_signature",
        used.as_secs_f64() * 1e3 / count as f64,
    );
    Ok(())
}

fn record_peak_memory(stack: &Stack, report: &mut Report) {
    for (name, pid) in [
        ("host", stack.processes.host_pid),
        ("enclave", stack.processes.enclave_pid),
    ] {
        if let Ok(mib) = stack::peak_rss_mib(pid) {
            report.set_max(&format!("rss_mib.{name}"), mib);
        }
    }
}

/// A one-payment transaction sourced by `channel`, valid two minutes; a user's
/// account moves the funds, the channel only sequences and pays.
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

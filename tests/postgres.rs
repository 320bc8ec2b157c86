//! Several `signer-host serve` processes on one PostgreSQL database, as several Nitro
//! instances run them (README "Running several hosts"). Needs the throwaway server of
//! `scripts/with-postgres`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harness::postgres::{PostgresDb, hosts_on};
use harness::stellar::{b64, user_payment};
use harness::{Dev, acquire_exclusively};
use host::api_client::ApiConnection;
use host::store::ChannelLocks;
use hyper::{Method, StatusCode};
use serde_json::json;

/// Three hosts on one database, 64 clients spread over them, at least 100,000
/// acquisitions: no account is ever held by two clients at once, every host takes its
/// share, and every lock is released at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_one_database_100k_acquisitions_never_an_account_held_twice() {
    const ACCOUNTS: u32 = 256;
    let dir = tempfile::tempdir().unwrap();
    let db = PostgresDb::with_channels(ACCOUNTS);
    let (_enclave, hosts) = hosts_on(dir.path(), &db, 3, &[]).await;
    let sockets: Vec<_> = hosts.iter().map(|(_, socket)| socket.clone()).collect();

    let started = Instant::now();
    let per_host = acquire_exclusively(&sockets, ACCOUNTS, 64, 100_000).await;
    let elapsed = started.elapsed().as_secs_f64();
    let total: u64 = per_host.iter().sum();
    eprintln!(
        "{total} acquisitions through 3 hosts in {elapsed:.1} s ({:.0} pairs/s), per host {per_host:?}",
        total as f64 / elapsed
    );
    assert!(total >= 100_000);
    assert!(per_host.iter().all(|&n| n > 0), "{per_host:?}");
    let summary = db.with_store(|store| store.summary(false).unwrap());
    assert_eq!((summary.locked, summary.idle), (0, u64::from(ACCOUNTS)));
}

/// A host killed (SIGKILL) while its clients acquire: the locks it took, answered or
/// not, expire after the lock lifetime and the other host hands them out again; none
/// is held beyond its expiry, and no session of the dead host holds a transaction open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_acquire_leaks_no_lock_beyond_its_expiry() {
    const ACCOUNTS: u32 = 40;
    const LOCK_SECONDS: u64 = 2;
    let dir = tempfile::tempdir().unwrap();
    let db = PostgresDb::with_channels(ACCOUNTS);
    let lock = format!("channels.default_lock_seconds={LOCK_SECONDS}");
    let (_enclave, mut hosts) = hosts_on(dir.path(), &db, 2, &["--set", &lock]).await;
    let (survivor, survivor_socket) = hosts.pop().unwrap();
    let (victim, victim_socket) = hosts.pop().unwrap();

    // Clients on the victim acquire without releasing, as fast as they can.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (socket, stop) = (victim_socket.clone(), stop.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = ApiConnection::connect(&socket).await else {
                    return;
                };
                let acquire = json!({});
                while !stop.load(Ordering::Relaxed) {
                    let answered = conn
                        .request(Method::POST, "/v1/channels/acquire", Some(&acquire))
                        .await;
                    if answered.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    victim.signal(nix::sys::signal::Signal::SIGKILL);
    let killed_at = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    drop(victim);

    let locked = || db.with_store(|store| store.summary(false).unwrap().locked);
    assert!(locked() > 0, "the load never took a lock");
    // No lock outlives its lifetime: past it, the survivor hands out every account.
    let expiry = Duration::from_secs(LOCK_SECONDS) + Duration::from_millis(500);
    tokio::time::sleep(expiry.saturating_sub(killed_at.elapsed())).await;
    assert_eq!(locked(), 0);
    let mut conn = ApiConnection::connect(&survivor_socket).await.unwrap();
    let mut handed_out = std::collections::HashSet::new();
    for _ in 0..ACCOUNTS {
        let (status, lease) = conn
            .request(Method::POST, "/v1/channels/acquire", Some(&json!({})))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{lease}\n{}", survivor.log_text());
        handed_out.insert(lease["account"].as_str().unwrap().to_string());
    }
    assert_eq!(handed_out.len(), ACCOUNTS as usize);
    let open_transactions: i64 = db.with_client(|client| {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
                &[],
            )
            .unwrap()
            .get(0)
    });
    assert_eq!(open_transactions, 0);
}

/// `signer-dev up --store postgres://…`: the local stack on PostgreSQL. Keys are
/// generated and stored there (no SQLite file appears), a signature's audit row lands
/// there, a shutdown with pooled connections open is clean, and a restart finds its
/// distribution key there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_stack_runs_on_postgres_and_keeps_its_keys_there() {
    let db = PostgresDb::create();
    let dev = Dev::start(&["--store", &db.url]);
    let distribution = dev.keys("distribution").await;
    assert_eq!(distribution.len(), 1);
    let channel = dev.keys("channel").await.remove(0);
    let payment = b64(&user_payment(&channel, &channel, 1));
    let (status, body) = dev
        .call(
            Method::POST,
            "/v1/sign",
            Some(json!({"transaction": payment, "signers": [channel]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let signed_rows: i64 = db.with_client(|client| {
        client
            .query_one(
                "SELECT count(*) FROM audit_log \
                 WHERE kind = 'sign' AND outcome = 'ok' AND public_key = $1",
                &[&channel],
            )
            .unwrap()
            .get(0)
    });
    assert_eq!(signed_rows, 1);
    assert!(!dev.state().join("signer.db").exists());
    let (_, ready) = dev.call(Method::GET, "/readyz", None).await;
    assert!(
        ready.to_string().contains("PostgreSQL"),
        "the store check names the backend: {ready}"
    );
    // Readiness checks at once, so the pool holds several connections when the host
    // stops: closing them on an async worker would panic (and abort) at shutdown.
    let checks = (0..16).map(|_| dev.call(Method::GET, "/readyz", None));
    for (status, body) in futures_util::future::join_all(checks).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let (_, dir) = dev.stop_keeping_state();
    let dev = Dev::start_in(dir, &["--store", &db.url]);
    assert_eq!(dev.keys("distribution").await, distribution);
    dev.stop();
}

//! The PostgreSQL server restarting under load: requests fail with `store_error`
//! while it is down, succeed again once it is back (the host reconnects on its own),
//! and nothing that was acknowledged is lost. Needs `scripts/with-postgres`, whose
//! server this test stops and starts (a test binary of its own for that reason).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use harness::postgres::{PostgresDb, hosts_on, server_ctl};
use harness::wait_ready_at;
use host::api_client::ApiConnection;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// Acquire/release loops until `stop`; returns the error codes seen (with counts) and
/// how many pairs completed after the first error.
async fn churn(socket: std::path::PathBuf, stop: Arc<AtomicBool>) -> (BTreeMap<String, u32>, u32) {
    let mut errors = BTreeMap::new();
    let mut recovered = 0;
    let mut conn = ApiConnection::connect(&socket).await.unwrap();
    let note = |errors: &mut BTreeMap<String, u32>, status: StatusCode, body: &Value| {
        let code = body["error"]["code"].as_str().unwrap_or("?");
        *errors
            .entry(format!("{} {code}", status.as_u16()))
            .or_insert(0) += 1;
    };
    while !stop.load(Ordering::Relaxed) {
        let (status, lease) = conn
            .request(Method::POST, "/v1/channels/acquire", Some(&json!({})))
            .await
            .unwrap();
        if status != StatusCode::OK {
            note(&mut errors, status, &lease);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        // An acknowledged lease is released, retried until the store takes it. A
        // release answered store_error may still have committed (the server went down
        // between its commit and the answer: in doubt); then the retry finds the token
        // gone, which is that release's outcome, not a loss.
        let mut in_doubt = false;
        loop {
            let (status, body) = conn
                .request(
                    Method::POST,
                    "/v1/channels/release",
                    Some(&json!({"account": lease["account"], "lock_token": lease["lock_token"]})),
                )
                .await
                .unwrap();
            if status == StatusCode::OK {
                break;
            }
            if body["error"]["code"] == "lock_token_mismatch" {
                if !in_doubt {
                    note(&mut errors, status, &body);
                }
                break;
            }
            note(&mut errors, status, &body);
            in_doubt = true;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !errors.is_empty() {
            recovered += 1;
        }
    }
    (errors, recovered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_restarting_under_load_fails_requests_with_store_error_and_loses_nothing() {
    const HELD: u32 = 8;
    const ACCOUNTS: u32 = 64;
    let dir = tempfile::tempdir().unwrap();
    let db = PostgresDb::with_channels(ACCOUNTS);
    let (_enclave, mut hosts) = hosts_on(dir.path(), &db, 1, &[]).await;
    let (host, socket) = hosts.pop().unwrap();

    // Acknowledged before the outage: leases held across it.
    let mut held = Vec::new();
    for _ in 0..HELD {
        let (status, lease) = harness_request(
            &socket,
            "/v1/channels/acquire",
            json!({"lock_seconds": 300}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{lease}");
        held.push(lease);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|_| tokio::spawn(churn(socket.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking(|| server_ctl("-m fast -w stop"))
        .await
        .unwrap();
    // Down: the host answers, with store_error, and says it is not ready.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _) = harness_get(&socket, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    tokio::task::spawn_blocking(|| server_ctl("-w start"))
        .await
        .unwrap();
    wait_ready_at(&socket, true, &host).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut errors = BTreeMap::new();
    let mut recovered = 0;
    for task in load {
        let (seen, after) = task.await.unwrap();
        for (code, count) in seen {
            *errors.entry(code).or_insert(0) += count;
        }
        recovered += after;
    }
    eprintln!("while the database was down: {errors:?}; {recovered} pairs after recovery");
    assert!(!errors.is_empty(), "the load never met the outage");
    assert!(
        errors.keys().all(|code| code == "500 store_error"),
        "{errors:?}\n{}",
        host.log_text()
    );
    assert!(recovered > 0, "no request succeeded after the restart");

    // Every lease acknowledged before the outage is still held by its token.
    for lease in &held {
        let (status, body) = harness_request(
            &socket,
            "/v1/channels/release",
            json!({"account": lease["account"], "lock_token": lease["lock_token"]}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert!(host.log_text().contains("store writer reconnected"));
}

async fn harness_request(socket: &std::path::Path, path: &str, body: Value) -> (StatusCode, Value) {
    host::api_client::request_once(socket, Method::POST, path, Some(&body))
        .await
        .unwrap()
}

async fn harness_get(socket: &std::path::Path, path: &str) -> (StatusCode, Value) {
    host::api_client::request_once(socket, Method::GET, path, None)
        .await
        .unwrap()
}

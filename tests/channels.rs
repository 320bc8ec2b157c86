//! Keys and channel locks through the real host binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use harness::{
    Stack, acquire_exclusively, fake_ciphertext, register_body, spawn_host, test_account,
    wait_ready_at,
};
use host::api_client::{ApiConnection, request_once};
use host::store::{ChannelLocks, KeyRole, KeyStore, LockLimits, SqliteStore};
use hyper::{Method, StatusCode};
use nix::sys::signal::Signal;
use serde_json::json;

fn register_channels(stack: &Stack, range: std::ops::Range<u32>) {
    stack.store_active_keys(range, KeyRole::Channel);
}

#[tokio::test]
async fn keys_register_once_and_an_empty_pool_is_its_own_error() {
    let stack = Stack::start().await;

    // Empty pool: the operator must provision.
    let (status, body) = stack.post("/v1/channels/acquire", json!({})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "no_channel_accounts_configured");

    // An import is stored, then checked by the enclave; this one cannot reach KMS, so
    // the key stays pending, with the reason, and never enters the pool.
    for (i, role) in [(1000, "distribution"), (0, "channel"), (1, "channel")] {
        let (status, body) = stack.post("/v1/keys", register_body(i, role)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "kms_unavailable", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("stored as pending"),
            "{body}"
        );
    }
    let (_, keys) = stack.get("/v1/keys?role=distribution").await;
    let stored = &keys["keys"][0];
    assert_eq!(
        (&stored["state"], &stored["format"], &stored["pending_for"]),
        (
            &json!("pending"),
            &json!("kms-direct"),
            &json!("verification")
        )
    );
    assert!(
        stored["pending_reason"]
            .as_str()
            .unwrap()
            .starts_with("kms_unavailable: ")
    );
    assert!(stored.get("kms_ciphertext").is_none());
    let (status, body) = stack.post("/v1/channels/acquire", json!({})).await;
    assert_eq!(
        body["error"]["code"], "no_channel_accounts_configured",
        "{status}"
    );
    let (status, body) = stack
        .post("/v1/keys/verify", json!({ "public_key": test_account(0) }))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("kms_unavailable"))
    );
    let (status, body) = stack.post("/v1/keys", register_body(1, "channel")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "key_exists");
    let mut bad = register_body(5, "channel");
    bad["public_key"] = json!("GNOTAKEY");
    let (status, body) = stack.post("/v1/keys", bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_request");
    // An alias could be repointed, and the enclave uses only its measured key ARN.
    let mut alias = register_body(6, "channel");
    alias["kms_key_id"] = json!("alias/signer");
    let (status, body) = stack.post("/v1/keys", alias).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a KMS key ARN"),
        "{body}"
    );

    let (_, keys) = stack.get("/v1/keys?role=channel").await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);
    let (_, keys) = stack.get("/v1/keys").await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn acquire_exhaust_release_by_token_and_unlock_by_hash_over_the_api() {
    let stack = Stack::start().await;
    register_channels(&stack, 0..2);

    // The body may be omitted entirely.
    let (status, first) = request_once(
        &stack.host_socket,
        Method::POST,
        "/v1/channels/acquire",
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, second) = stack
        .post("/v1/channels/acquire", json!({"lock_seconds": 120}))
        .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    // Exhausted: retryable, and distinct from the empty pool.
    let (status, body) = stack.post("/v1/channels/acquire", json!({})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "no_idle_channel_account");
    let (status, body) = stack
        .post("/v1/channels/acquire", json!({"lock_seconds": 301}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );

    let (_, summary) = stack.get("/v1/channels").await;
    assert_eq!(
        summary,
        json!({"total": 2, "idle": 0, "locked": 2, "expired": 0})
    );
    let (_, listed) = stack.get("/v1/channels?accounts=true").await;
    let rows = listed["accounts"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r["status"] == "locked" && r.get("lock_token").is_none())
    );

    let (status, body) = stack
        .post(
            "/v1/channels/release",
            json!({"account": first["account"], "lock_token": "0".repeat(32)}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("lock_token_mismatch"))
    );
    let (status, body) = stack
        .post(
            "/v1/channels/release",
            json!({"account": test_account(999), "lock_token": "x"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_channel_account"))
    );
    let (status, body) = stack
        .post(
            "/v1/channels/release",
            json!({"account": first["account"], "lock_token": first["lock_token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Unlock by hash: the sign path records hashes; here the store stands in for it.
    let store = SqliteStore::open(
        &stack.db_path(),
        LockLimits::default(),
        Duration::from_secs(5),
    )
    .unwrap();
    let inner_hash = "7f".repeat(32);
    store
        .record_signed(second["account"].as_str().unwrap(), &inner_hash, None)
        .unwrap();
    let (status, body) = stack
        .post(
            "/v1/channels/unlock",
            json!({"tx_hashes": [inner_hash, "00".repeat(32)]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["unlocked"][0]["account"], second["account"]);
    assert_eq!(body["unmatched"], json!(["00".repeat(32)]));
    let (status, body) = stack
        .post("/v1/channels/unlock", json!({"tx_hashes": ["nothex"]}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );

    let (_, summary) = stack.get("/v1/channels").await;
    assert_eq!(summary["idle"], 2);
    let (_, ready) = stack.get("/readyz").await;
    assert!(
        ready["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "store" && c["ok"] == true)
    );
}

#[tokio::test]
async fn sixty_four_clients_on_two_host_processes_never_share_an_account() {
    const ACCOUNTS: u32 = 50;
    const CLIENTS: usize = 64;
    const ROUNDS: usize = 40;
    let stack = Stack::start().await;
    register_channels(&stack, 0..ACCOUNTS);
    let (_second, second_socket) = stack.second_host("host-b").await;
    let sockets = [stack.host_socket.clone(), second_socket];

    let per_host =
        acquire_exclusively(&sockets, ACCOUNTS, CLIENTS, (CLIENTS * ROUNDS) as u64).await;
    assert!(per_host.iter().all(|&n| n > 0), "{per_host:?}");
    let (_, summary) = stack.get("/v1/channels").await;
    assert_eq!(summary["locked"], 0);
    assert_eq!(summary["idle"], ACCOUNTS);
}

#[tokio::test]
async fn a_restart_keeps_keys_and_locks() {
    let mut stack = Stack::start().await;
    register_channels(&stack, 0..5);
    let (_, lease) = stack
        .post("/v1/channels/acquire", json!({"lock_seconds": 300}))
        .await;
    stack.host.signal(Signal::SIGTERM);
    assert!(stack.host.wait_exit(Duration::from_secs(15)).success());

    let socket = stack.dir.path().join("host-2.sock");
    let host = spawn_host(
        stack.dir.path(),
        "host-2",
        &socket,
        &stack.enclave_socket,
        &stack.db_path(),
    );
    wait_ready_at(&socket, true, &host).await;
    let (_, keys) = request_once(&socket, Method::GET, "/v1/keys", None)
        .await
        .unwrap();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 5);
    let (_, summary) = request_once(&socket, Method::GET, "/v1/channels?accounts=true", None)
        .await
        .unwrap();
    assert_eq!(summary["locked"], 1);
    let locked = summary["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "locked")
        .unwrap();
    assert_eq!(locked["account"], lease["account"]);
    // The lock token issued before the restart still releases it.
    let (status, body) = request_once(
        &socket,
        Method::POST,
        "/v1/channels/release",
        Some(&json!({"account": lease["account"], "lock_token": lease["lock_token"]})),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// SIGKILL the host at random moments while it stores keys: every key it acknowledged
/// is there afterwards, intact, and nothing half-written ever is.
#[tokio::test]
async fn sigkill_while_writing_keys_never_loses_or_tears_a_key() {
    let stack = Stack::start().await;
    let mut acknowledged: Vec<u32> = Vec::new();
    let mut next = 0u32;
    for round in 0..20u32 {
        let socket = stack.dir.path().join(format!("kill-{round}.sock"));
        let mut host = spawn_host(
            stack.dir.path(),
            &format!("kill-{round}"),
            &socket,
            &stack.enclave_socket,
            &stack.db_path(),
        );
        wait_ready_at(&socket, true, &host).await;
        let writer = {
            let socket = socket.clone();
            let start = next;
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let Ok(mut conn) = ApiConnection::connect(&socket).await else {
                    return acked;
                };
                for i in start..start + 10_000 {
                    match conn
                        .request(Method::POST, "/v1/keys", Some(&register_body(i, "channel")))
                        .await
                    {
                        // Stored, then refused verification (this enclave has no KMS):
                        // the key is kept, pending.
                        Ok((StatusCode::SERVICE_UNAVAILABLE, body))
                            if body["error"]["code"] == "kms_unavailable" =>
                        {
                            acked.push(i);
                        }
                        Ok((status, body)) => panic!("key {i}: {status} {body}"),
                        Err(_) => break, // the host died mid-request
                    }
                }
                acked
            })
        };
        let pause = 30 + (round * 37) % 150;
        tokio::time::sleep(Duration::from_millis(pause.into())).await;
        host.signal(Signal::SIGKILL);
        host.wait_exit(Duration::from_secs(10));
        let acked = writer.await.unwrap();
        // The request in flight when the host died may have been stored without an
        // answer: skip its key (the one after the last acknowledged, or the first).
        next = acked.last().map_or(next + 1, |last| last + 2);
        acknowledged.extend(acked);
    }
    assert!(
        acknowledged.len() > 20,
        "too few writes to mean anything: {}",
        acknowledged.len()
    );

    let store = SqliteStore::open(
        &stack.db_path(),
        LockLimits::default(),
        Duration::from_secs(5),
    )
    .unwrap();
    let conn = rusqlite::Connection::open(stack.db_path()).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    for &i in &acknowledged {
        let key = store
            .key(&test_account(i))
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged key {i} lost"));
        assert_eq!(key.kms_ciphertext, fake_ciphertext(i), "key {i} torn");
    }
    // Keys stored but not acknowledged (killed between commit and answer) are whole too.
    for key in store.list_keys(None).unwrap() {
        let i = (0..next + 2)
            .find(|&i| test_account(i) == key.public_key)
            .unwrap();
        assert_eq!(key.kms_ciphertext, fake_ciphertext(i));
    }
    let pool = store.summary(false).unwrap();
    assert_eq!(pool.total, 0, "unverified imports never enter the pool");
    eprintln!(
        "{} keys acknowledged across 20 SIGKILLs",
        acknowledged.len()
    );
}

fn channel_payment(source: &str, max_time_ahead: u64) -> String {
    use base64::Engine;
    use stellar_xdr::*;
    let raw = stellar_strkey::ed25519::PublicKey::from_string(source)
        .unwrap()
        .0;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let envelope = TransactionEnvelope::Tx(TransactionV1Envelope {
        tx: Transaction {
            source_account: MuxedAccount::Ed25519(Uint256(raw)),
            fee: 100,
            seq_num: SequenceNumber(1),
            cond: Preconditions::Time(TimeBounds {
                min_time: TimePoint(0),
                max_time: TimePoint(now + max_time_ahead),
            }),
            memo: Memo::None,
            operations: vec![Operation {
                // A user's account moves the funds: the channel only sequences and pays.
                source_account: Some(MuxedAccount::Ed25519(Uint256([0x75; 32]))),
                body: OperationBody::BumpSequence(BumpSequenceOp {
                    bump_to: SequenceNumber(2),
                }),
            }]
            .try_into()
            .unwrap(),
            ext: TransactionExt::V0,
        },
        signatures: VecM::default(),
    });
    base64::engine::general_purpose::STANDARD.encode(envelope.to_xdr(Limits::none()).unwrap())
}

/// The host applies the enclave's signing policy first: a violation is answered even
/// with the enclave down, while a compliant request goes on to the enclave.
#[tokio::test]
async fn the_host_prechecks_the_signing_policy_without_the_enclave() {
    let mut stack = Stack::start().await;
    stack.store_active_keys(500..501, KeyRole::Distribution);
    register_channels(&stack, 0..1);
    let mut enclave = stack.enclave.take().unwrap();
    enclave.signal(Signal::SIGKILL);
    enclave.wait_exit(Duration::from_secs(10));

    let far = json!({"transaction": channel_payment(&test_account(0), 3600), "signers": [test_account(0)],
                     "network_passphrase": "Test SDF Network ; September 2015"});
    let (status, body) = stack.post("/v1/sign", far).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "policy_violation");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_time_window"),
        "{body}"
    );

    let fine = json!({"transaction": channel_payment(&test_account(0), 60), "signers": [test_account(0)],
                      "network_passphrase": "Test SDF Network ; September 2015"});
    let (status, body) = stack.post("/v1/sign", fine).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "enclave_unavailable");
}

//! `signer-host channels ensure` against the stub Stellar RPC: keys generated in the
//! enclave and stored pending first, sponsored creation in transactions of at most 19
//! accounts signed in one enclave request, submission and confirmation, and the
//! re-run after a crash or a refusal, which reconciles with the ledger and never
//! creates a key or an account twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::stellar::envelope::{decode_envelope, signatures};
use harness::stub_rpc::StubRpc;
use harness::{Dev, host_bin, output_text};
use hyper::Method;
use serde_json::{Value, json};
use stellar_xdr::{OperationBody, Preconditions, TransactionEnvelope};

/// The dev stack starts with this many channel keys (active, not on the stub ledger).
const DEV_CHANNELS: usize = 8;
/// What the stub funds the distribution account with: 1,000 XLM.
const FUNDING: i64 = 10_000_000_000;

fn ensure_command(dev: &Dev, count: usize, args: &[&str]) -> Command {
    let mut command = Command::new(host_bin());
    command
        .arg("channels")
        .arg("--socket")
        .arg(dev.socket())
        .arg("ensure")
        .arg(count.to_string())
        .args(args)
        .env_remove("SIGNER_STELLAR_RPC_URL")
        .env_remove("SIGNER_HOST_CONFIG");
    command
}

fn ensure(dev: &Dev, count: usize, args: &[&str]) -> Output {
    ensure_command(dev, count, args).output().unwrap()
}

/// Channel keys: (active, pending).
async fn channel_keys(dev: &Dev) -> (Vec<Value>, Vec<Value>) {
    let (_, body) = dev.call(Method::GET, "/v1/keys?role=channel", None).await;
    let keys = body["keys"].as_array().unwrap().clone();
    keys.into_iter()
        .filter(|k| k["state"] != "retired")
        .partition(|k| k["state"] == "active")
}

async fn distribution(dev: &Dev) -> String {
    dev.keys("distribution").await.remove(0)
}

#[tokio::test]
async fn ensure_creates_45_accounts_in_three_transactions_a_rerun_changes_nothing_and_a_smaller_count_merges()
 {
    let dev = Dev::start(&[]);
    let distribution = distribution(&dev).await;
    // The dev stack's own channel accounts exist too (2 XLM each), so any can be merged.
    let dev_channels = dev.keys("channel").await;
    let mut funded: Vec<(&str, i64)> = vec![(&distribution, FUNDING)];
    funded.extend(dev_channels.iter().map(|c| (c.as_str(), 20_000_000)));
    let stub = StubRpc::start(&funded, &["--ledger-ms", "100"]);
    let target = DEV_CHANNELS + 45;
    let run = ensure(&dev, target, &["--rpc-url", &stub.url]);
    assert!(run.status.success(), "{}", output_text(&run));
    assert!(
        output_text(&run).contains("(45 activated, 0 retired in this run)"),
        "{}",
        output_text(&run)
    );

    let ledger = stub.ledger();
    assert_eq!(ledger["successful_transactions"], 3, "{ledger}");
    assert_eq!(ledger["transactions"], 3, "{ledger}");
    let on_ledger = stub.accounts();
    assert_eq!(on_ledger.len(), 1 + DEV_CHANNELS + 45);
    let (active, pending) = channel_keys(&dev).await;
    assert!(pending.is_empty(), "{pending:?}");
    assert_eq!(active.len(), target);
    let generated: Vec<&Value> = active
        .iter()
        .filter(|k| k["format"] == "envelope")
        .filter(|k| !dev_channels.iter().any(|d| k["public_key"] == d.as_str()))
        .collect();
    assert_eq!(
        generated.len(),
        45,
        "every new key was generated in the enclave"
    );
    for key in &generated {
        let account = key["public_key"].as_str().unwrap();
        assert!(
            on_ledger.iter().any(|a| a == account),
            "{account} is not on the ledger"
        );
    }
    let sponsored = ledger["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["sponsored"] == true)
        .count();
    assert_eq!(
        sponsored, 45,
        "the distribution account sponsors every reserve"
    );
    // Each creation's signatures are counted, by the role of each signer.
    let (_, _, metrics) = host::api_client::get_text(&dev.socket(), "/metrics")
        .await
        .unwrap();
    for (role, signatures) in [("distribution", 3), ("channel", 45)] {
        let series = format!(
            "signer_signatures_total{{role=\"{role}\",kind=\"channel_provisioning\",result=\"signed\"}} {signatures}"
        );
        assert!(metrics.lines().any(|l| l == series), "{series}\n{metrics}");
    }
    let (_, pool) = dev.call(Method::GET, "/v1/channels", None).await;
    assert_eq!(pool["total"], target);
    let provisioning_rows = dev
        .audit()
        .iter()
        .filter(|row| row.entry.kind == "channel_provisioning")
        .count();
    // Three transactions: the distribution key and each new key, one row each.
    assert_eq!(provisioning_rows, 3 + 45);

    let again = ensure(&dev, target, &["--rpc-url", &stub.url]);
    assert!(again.status.success(), "{}", output_text(&again));
    assert!(
        output_text(&again).contains("(0 activated, 0 retired in this run)"),
        "{}",
        output_text(&again)
    );
    assert_eq!(stub.ledger()["transactions"], 3, "a re-run submits nothing");
    assert_eq!(channel_keys(&dev).await.0.len(), target);

    shrinks_to_twenty(&dev, &stub).await;
    dev.stop();
}

/// Shrinking merges 33 idle accounts into the distribution account, in 2
/// transactions, and retires their keys; an account held by a caller stays.
async fn shrinks_to_twenty(dev: &Dev, stub: &StubRpc) {
    let (_, lease) = dev.call(Method::POST, "/v1/channels/acquire", None).await;
    let held = lease["account"].as_str().unwrap().to_string();
    let shrink = ensure(dev, 20, &["--rpc-url", &stub.url]);
    assert!(shrink.status.success(), "{}", output_text(&shrink));
    assert!(
        output_text(&shrink).contains("(0 activated, 33 retired in this run)"),
        "{}",
        output_text(&shrink)
    );
    let ledger = stub.ledger();
    assert_eq!(ledger["successful_transactions"], 5, "{ledger}");
    let on_ledger = stub.accounts();
    assert_eq!(on_ledger.len(), 1 + 20);
    let (active, pending) = channel_keys(dev).await;
    assert_eq!((active.len(), pending.len()), (20, 0));
    for key in &active {
        assert!(
            on_ledger
                .iter()
                .any(|a| a == key["public_key"].as_str().unwrap())
        );
    }
    assert!(
        active.iter().any(|k| k["public_key"] == held.as_str()),
        "the locked account was not merged"
    );
    let (_, pool) = dev.call(Method::GET, "/v1/channels", None).await;
    assert_eq!(pool["total"], 20);
    let (_, all) = dev.call(Method::GET, "/v1/keys?role=channel", None).await;
    let retired: Vec<String> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["state"] == "retired")
        .map(|k| k["public_key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(retired.len(), 33);
    assert!(
        retired.iter().all(|r| !on_ledger.contains(r)),
        "retired accounts are merged"
    );
    let payment = harness::stellar::transaction(&retired[0], 100, vec![]);
    let (status, answer) = dev
        .call(
            Method::POST,
            "/v1/sign",
            Some(
                json!({ "transaction": harness::stellar::b64(&payment), "signers": [retired[0]] }),
            ),
        )
        .await;
    assert_eq!(answer["error"]["code"], "unknown_key", "{status} {answer}");
}

#[tokio::test]
async fn a_crash_after_submission_is_reconciled_against_the_ledger_without_duplicates() {
    let dev = Dev::start(&[]);
    let distribution = distribution(&dev).await;
    // Slow ledgers, so the run is killed between submission and confirmation.
    let stub = StubRpc::start(&[(&distribution, FUNDING)], &["--ledger-ms", "2000"]);
    let target = DEV_CHANNELS + 19;
    // A short window, so a wrong rebuild would happen within the test, not pass by
    // waiting out the default five minutes.
    let window = ["--rpc-url", &stub.url, "--max-time-secs", "30"];
    let mut child = ensure_command(&dev, target, &window)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let progress = BufReader::new(child.stderr.take().unwrap());
    let submitted = progress
        .lines()
        .map_while(Result::ok)
        .any(|line| line.starts_with("submitted the creation of 19 accounts"));
    assert!(submitted, "the run never reported its submission");
    child.kill().unwrap();
    child.wait().unwrap();
    let (_, pending) = channel_keys(&dev).await;
    assert_eq!(
        pending.len(),
        19,
        "killed before confirmation: still pending"
    );
    let submitted = pending[0]["provisioning"]["tx_hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        pending
            .iter()
            .all(|k| k["provisioning"]["tx_hash"] == submitted.as_str())
    );

    let started = std::time::Instant::now();
    let rerun = ensure(&dev, target, &window);
    assert!(rerun.status.success(), "{}", output_text(&rerun));
    let (active, pending) = channel_keys(&dev).await;
    assert!(pending.is_empty());
    assert_eq!(active.len(), target, "no key was generated twice");
    let ledger = stub.ledger();
    assert_eq!(
        ledger["transactions"], 1,
        "the transaction was not rebuilt: {ledger}"
    );
    let applied = stub.call("getTransaction", &json!({ "hash": submitted }));
    assert_eq!(
        applied["status"], "SUCCESS",
        "the submitted one landed: {applied}"
    );
    assert_eq!(stub.accounts().len(), 20);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the re-run found the account; it did not wait out maxTime"
    );
    dev.stop();
}

#[tokio::test]
async fn a_refused_transaction_is_rebuilt_only_after_its_max_time() {
    let dev = Dev::start(&[]);
    let distribution = distribution(&dev).await;
    // The first sequence read lags one behind: the transaction gets txBAD_SEQ.
    let stub = StubRpc::start(
        &[(&distribution, FUNDING)],
        &["--ledger-ms", "200", "--stale-sequence-reads", "1"],
    );
    let target = DEV_CHANNELS + 5;
    let window = ["--rpc-url", &stub.url, "--max-time-secs", "2"];
    let refused = ensure(&dev, target, &window);
    assert!(!refused.status.success());
    assert!(
        output_text(&refused).contains("txBadSeq"),
        "{}",
        output_text(&refused)
    );
    let (_, pending) = channel_keys(&dev).await;
    assert_eq!(pending.len(), 5);
    let first_hash = pending[0]["provisioning"]["tx_hash"].clone();

    let rerun = ensure(&dev, target, &window);
    assert!(rerun.status.success(), "{}", output_text(&rerun));
    let (active, pending) = channel_keys(&dev).await;
    assert!(pending.is_empty());
    assert_eq!(
        active.len(),
        target,
        "the same five keys, none generated again"
    );
    let ledger = stub.ledger();
    assert_eq!(ledger["successful_transactions"], 1, "{ledger}");
    let audit = dev.audit();
    let rebuilt = audit
        .iter()
        .find(|row| row.entry.kind == "channel_provisioning")
        .and_then(|row| row.entry.tx_hash.clone())
        .unwrap();
    assert_ne!(
        json!(rebuilt),
        first_hash,
        "a new transaction, with the right sequence"
    );
    dev.stop();
}

#[tokio::test]
async fn an_unreachable_rpc_endpoint_fails_before_any_key_is_made() {
    let dev = Dev::start(&[]);
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let run = ensure(
        &dev,
        DEV_CHANNELS + 3,
        &["--rpc-url", &url, "--rpc-timeout-secs", "5"],
    );
    assert!(!run.status.success());
    assert!(
        output_text(&run).contains("unreachable"),
        "{}",
        output_text(&run)
    );
    let (active, pending) = channel_keys(&dev).await;
    assert_eq!((active.len(), pending.len()), (DEV_CHANNELS, 0));

    let neither = ensure(&dev, DEV_CHANNELS + 3, &[]);
    assert!(!neither.status.success());
    assert!(
        output_text(&neither).contains("--sequence"),
        "{}",
        output_text(&neither)
    );
    dev.stop();
}

#[tokio::test]
async fn offline_ensure_prints_envelopes_that_activate_accepts_once_applied() {
    let dev = Dev::start(&[]);
    let distribution = distribution(&dev).await;
    let stub = StubRpc::start(&[(&distribution, FUNDING)], &["--ledger-ms", "100"]);
    let sequence = stub.ledger()["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["account"] == distribution.as_str())
        .unwrap()["sequence"]
        .as_str()
        .unwrap()
        .to_string();
    let run = ensure(&dev, DEV_CHANNELS + 3, &["--sequence", &sequence]);
    assert!(run.status.success(), "{}", output_text(&run));
    let stdout = String::from_utf8(run.stdout).unwrap();
    let envelope = stdout.lines().next().unwrap();
    let decoded = decode_envelope(&B64.decode(envelope).unwrap()).unwrap();
    let TransactionEnvelope::Tx(v1) = &decoded else {
        panic!("a v1 envelope");
    };
    assert_eq!(v1.tx.seq_num.0, sequence.parse::<i64>().unwrap() + 1);
    assert_eq!(v1.tx.operations.len(), 9);
    assert!(matches!(
        v1.tx.operations[2].body,
        OperationBody::EndSponsoringFutureReserves
    ));
    let Preconditions::Time(bounds) = &v1.tx.cond else {
        panic!("time bounds");
    };
    assert!(bounds.max_time.0 <= common::now_unix_secs() + 300);
    assert_eq!(
        signatures(&decoded).len(),
        4,
        "the distribution and three new keys"
    );
    let (_, pending) = channel_keys(&dev).await;
    assert_eq!(pending.len(), 3);

    let sent = stub.call("sendTransaction", &json!({ "transaction": envelope }));
    assert_eq!(sent["status"], "PENDING", "{sent}");
    let hash = sent["hash"].as_str().unwrap().to_string();
    let mut status = Value::Null;
    for _ in 0..100 {
        status = stub.call("getTransaction", &json!({ "hash": hash }));
        if status["status"] != "NOT_FOUND" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status["status"], "SUCCESS", "{status}");

    let accounts: Vec<String> = pending
        .iter()
        .map(|k| k["public_key"].as_str().unwrap().to_string())
        .collect();
    let activate = Command::new(host_bin())
        .args(["channels", "--socket"])
        .arg(dev.socket())
        .arg("activate")
        .args(&accounts)
        .output()
        .unwrap();
    assert!(activate.status.success(), "{}", output_text(&activate));
    let (active, pending) = channel_keys(&dev).await;
    assert!(pending.is_empty());
    assert_eq!(active.len(), DEV_CHANNELS + 3);
    let (_, pool) = dev.call(Method::GET, "/v1/channels", None).await;
    assert_eq!(pool["total"], DEV_CHANNELS + 3);
    dev.stop();
}

#[tokio::test]
async fn provisioning_refuses_anything_but_pending_channel_keys_and_writes_nothing() {
    let dev = Dev::start(&[]);
    let active_channel = dev.keys("channel").await.remove(0);
    let distribution = distribution(&dev).await;
    let (status, generated) = dev
        .call(
            Method::POST,
            "/v1/keys/generate",
            Some(json!({ "role": "channel", "count": 2, "state": "pending" })),
        )
        .await;
    assert_eq!(status, 201, "{generated}");
    let pending: Vec<String> = generated["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["public_key"].as_str().unwrap().to_string())
        .collect();
    let unknown = harness::test_account(7);
    let provision = |accounts: Vec<String>, sequence: &str, window: u64| json!({ "accounts": accounts, "sequence": sequence, "max_time_secs": window });
    let twenty: Vec<String> = (0..20).map(harness::test_account).collect();
    let cases = [
        (
            provision(vec![active_channel.clone()], "1", 60),
            "bad_request",
            "active channel",
        ),
        (
            provision(vec![distribution.clone()], "1", 60),
            "bad_request",
            "distribution",
        ),
        (
            provision(vec![unknown.clone()], "1", 60),
            "unknown_key",
            "not stored",
        ),
        (provision(twenty, "1", 60), "bad_request", "1 to 19"),
        (provision(vec![], "1", 60), "bad_request", "1 to 19"),
        (
            provision(vec![pending[0].clone(), pending[0].clone()], "1", 60),
            "bad_request",
            "twice",
        ),
        (
            provision(pending.clone(), "one", 60),
            "bad_request",
            "int64",
        ),
        (
            provision(pending.clone(), "-1", 60),
            "bad_request",
            "sequence",
        ),
        (
            provision(pending.clone(), "1", 301),
            "bad_request",
            "max_time_secs",
        ),
        (
            provision(pending.clone(), "1", 0),
            "bad_request",
            "max_time_secs",
        ),
    ];
    for (body, code, what) in cases {
        let (status, answer) = dev
            .call(Method::POST, "/v1/channels/provision", Some(body))
            .await;
        assert!(status.is_client_error(), "{what}: {status} {answer}");
        assert_eq!(answer["error"]["code"], code, "{what}: {answer}");
    }
    let (_, keys) = channel_keys(&dev).await;
    assert!(
        keys.iter().all(|k| k["provisioning"].is_null()),
        "no refusal recorded a transaction: {keys:?}"
    );

    let (status, answer) = dev
        .call(
            Method::POST,
            "/v1/keys/generate",
            Some(json!({ "role": "distribution", "count": 1, "state": "pending" })),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &answer["error"]["code"]),
        (400, &json!("bad_request"))
    );
    settling_refuses_keys_not_pending_for_it(&dev, &unknown, &distribution).await;
    dev.stop();
}

/// Activation and retirement name only channel keys pending for them.
async fn settling_refuses_keys_not_pending_for_it(dev: &Dev, unknown: &str, distribution: &str) {
    for (body, code) in [
        (json!({ "accounts": [unknown] }), "unknown_channel_account"),
        (
            json!({ "accounts": [distribution] }),
            "unknown_channel_account",
        ),
        (json!({ "accounts": [] }), "bad_request"),
    ] {
        let (status, answer) = dev
            .call(Method::POST, "/v1/channels/activate", Some(body))
            .await;
        assert!(status.is_client_error(), "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }
    let (_, pool) = dev.call(Method::GET, "/v1/channels", None).await;
    assert_eq!(
        pool["total"], DEV_CHANNELS,
        "pending keys are not in the pool"
    );
}

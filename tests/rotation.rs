//! Rotating the KMS key on the local stack: the rotation build reads keys under both
//! mock KMS keys, `signer-host keys rewrap` moves every key to the new one while
//! signing goes on, and the build after the move signs with the new key alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use harness::stellar::{b64, user_payment};
use harness::{Dev, assert_no_secret_in, host_bin};
use host::api_client::ApiConnection;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

const NEXT: [&str; 2] = ["--kms-key-alias", "alias/signer-dev-next"];

fn payment(source: &str, destination: &str) -> String {
    b64(&user_payment(source, destination, 1))
}

async fn keys(dev: &Dev) -> Vec<Value> {
    let (_, body) = dev.call(Method::GET, "/v1/keys", None).await;
    body["keys"].as_array().unwrap().clone()
}

async fn sign(dev: &Dev, channel: &str, distribution: &str) -> (StatusCode, Value) {
    dev.call(
        Method::POST,
        "/v1/sign",
        Some(json!({ "transaction": payment(channel, distribution), "signers": [channel] })),
    )
    .await
}

/// Signs with every channel in turn until `done`: how many signed, and every failure.
fn keep_signing(
    dev: &Dev,
    channels: &[String],
    distribution: &str,
    done: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<Value>)> {
    let socket = dev.socket();
    let (channels, distribution) = (channels.to_vec(), distribution.to_string());
    tokio::spawn(async move {
        let mut conn = ApiConnection::connect(&socket).await.unwrap();
        let (mut signed, mut failures) = (0, Vec::new());
        for channel in channels.iter().cycle() {
            if done.load(Ordering::SeqCst) {
                break;
            }
            let body =
                json!({ "transaction": payment(channel, &distribution), "signers": [channel] });
            let (status, answer) = conn
                .request(Method::POST, "/v1/sign", Some(&body))
                .await
                .unwrap();
            if status == StatusCode::OK {
                signed += 1;
            } else {
                failures.push(answer);
            }
        }
        (signed, failures)
    })
}

#[tokio::test]
async fn keys_move_to_a_new_kms_key_while_signing_goes_on() {
    let (_, state) = Dev::start(&[]).stop_keeping_state();
    let rotating = Dev::start_in(
        state,
        &[
            NEXT[0],
            NEXT[1],
            "--previous-kms-key-alias",
            "alias/signer-dev",
        ],
    );
    let before = keys(&rotating).await;
    let old_arn = before[0]["kms_key_id"].as_str().unwrap().to_string();
    let distribution = rotating.keys("distribution").await.remove(0);
    let channels = rotating.keys("channel").await;
    assert_eq!(
        sign(&rotating, &channels[0], &distribution).await.0,
        StatusCode::OK
    );

    // Signing goes on, with every channel in turn, while the keys move.
    let done = Arc::new(AtomicBool::new(false));
    let signer = keep_signing(&rotating, &channels, &distribution, done.clone());
    // The new key's ARN: what the rotation build seals under.
    let (status, generated) = rotating
        .call(
            Method::POST,
            "/v1/keys/generate",
            Some(json!({ "role": "channel", "count": 1 })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{generated}");
    let new_arn = keys(&rotating)
        .await
        .into_iter()
        .map(|k| k["kms_key_id"].as_str().unwrap().to_string())
        .find(|arn| *arn != old_arn)
        .expect("a key under the new KMS key");
    let rewrap = Command::new(host_bin())
        .args(["keys", "--socket"])
        .arg(rotating.socket())
        .args(["rewrap", "--to-kms-key", &new_arn])
        .output()
        .unwrap();
    assert!(
        rewrap.status.success(),
        "{}",
        String::from_utf8_lossy(&rewrap.stderr)
    );
    done.store(true, Ordering::SeqCst);
    let (signed, failures) = signer.await.unwrap();
    assert!(
        failures.is_empty(),
        "signatures failed during the move: {failures:?}"
    );
    assert!(signed > 0);
    for key in keys(&rotating).await {
        assert_eq!(
            (&key["kms_key_id"], &key["format"]),
            (&json!(new_arn), &json!("envelope")),
            "{key}"
        );
    }
    let rewrapped = rotating
        .audit()
        .iter()
        .filter(|r| r.entry.kind == "key_rewrapped")
        .count();
    assert_eq!(rewrapped, before.len(), "every key, once");
    // Asking for another target than the enclave's key changes nothing.
    let (status, body) = rotating
        .call(
            Method::POST,
            "/v1/keys/rewrap",
            Some(json!({ "public_key": channels[0], "to_kms_key": old_arn })),
        )
        .await;
    assert!(status.is_client_error(), "{body}");
    let mut secrets = rotating.seeds();
    let (logs, state) = rotating.stop_keeping_state();

    // The build after the move names the new key alone, and signs.
    let after = Dev::start_in(state, &NEXT);
    assert_eq!(
        sign(&after, &channels[1], &distribution).await.0,
        StatusCode::OK
    );
    let (_, state) = after.stop_keeping_state();
    // The old build no longer can: its key opens nothing any more.
    let old_build = Dev::start_in(state, &[]);
    let (status, body) = sign(&old_build, &channels[1], &distribution).await;
    assert_eq!(body["error"]["code"], "kms_key_mismatch", "{status} {body}");
    secrets.extend(old_build.seeds());
    let more_logs = old_build.stop();
    assert_no_secret_in(&format!("{logs}{more_logs}"), &secrets);
}

#[tokio::test]
async fn a_retired_key_never_signs_again() {
    let dev = Dev::start(&[]);
    let distribution = dev.keys("distribution").await.remove(0);
    let channel = dev.keys("channel").await.remove(0);
    assert_eq!(sign(&dev, &channel, &distribution).await.0, StatusCode::OK);
    let retire = Command::new(host_bin())
        .args(["keys", "--socket"])
        .arg(dev.socket())
        .args(["retire", &channel])
        .output()
        .unwrap();
    assert!(
        retire.status.success(),
        "{}",
        String::from_utf8_lossy(&retire.stderr)
    );
    let (status, body) = sign(&dev, &channel, &distribution).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("unknown_key"))
    );
    let (_, pool) = dev.call(Method::GET, "/v1/channels", None).await;
    assert_eq!(pool["total"], 7, "it left the pool");
    // Idempotent, and audited once.
    let (status, body) = dev
        .call(
            Method::POST,
            "/v1/keys/retire",
            Some(json!({ "public_key": channel })),
        )
        .await;
    assert_eq!(
        (status, &body["state"]),
        (StatusCode::OK, &json!("retired"))
    );
    let retired = dev
        .audit()
        .iter()
        .filter(|r| r.entry.kind == "key_retired")
        .count();
    assert_eq!(retired, 1);
    let (status, body) = dev
        .call(
            Method::POST,
            "/v1/keys/rewrap",
            Some(json!({ "public_key": channel, "to_kms_key": "arn:aws:kms:us-east-1:111122223333:key/x" })),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("bad_request"))
    );
    dev.stop();
}

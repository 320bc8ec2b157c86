//! `signer-host import wallet-backend` on the local stack: stellar/wallet-backend's
//! channel keys (vectors made by Python's `cryptography`) move in with the passphrase
//! only as a KMS ciphertext; the enclave opens and re-seals them; they sign; no seed or
//! passphrase reaches a log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::{Command, Output};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use harness::stellar::{b64, user_payment};
use harness::{Dev, assert_no_secret_in, host_bin, output_text};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/wallet-backend-vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `plaintext` encrypted by the mock KMS under the development key with `context`, in
/// base64: what the operator's `aws kms encrypt --encryption-context ...` makes.
fn kms_encrypt(dev: &Dev, plaintext: &str, context: (&str, &str)) -> String {
    let kms = mock_kms::keystore::KeyStore::open(
        &dev.state().join("mock-kms-state.json"),
        "us-east-1",
        "111122223333",
    )
    .unwrap();
    let key_id = kms.resolve("alias/signer-dev").unwrap();
    let context = BTreeMap::from([(context.0.to_string(), context.1.to_string())]);
    B64.encode(
        kms.encrypt(&key_id, plaintext.as_bytes(), &context)
            .unwrap(),
    )
}

fn import(dev: &Dev, rows: &[&Value], passphrase_b64: &str) -> Output {
    let dir = dev.dir.path();
    let mut csv = String::from("public_key,encrypted_private_key\n");
    for row in rows {
        writeln!(
            csv,
            "{},{}",
            row["public_key"].as_str().unwrap(),
            row["encrypted_private_key"].as_str().unwrap()
        )
        .unwrap();
    }
    std::fs::write(dir.join("channels.csv"), csv).unwrap();
    std::fs::write(dir.join("passphrase.b64"), passphrase_b64).unwrap();
    Command::new(host_bin())
        .args(["import", "--socket"])
        .arg(dev.socket())
        .arg("wallet-backend")
        .arg("--channels")
        .arg(dir.join("channels.csv"))
        .arg("--passphrase-ciphertext")
        .arg(dir.join("passphrase.b64"))
        .output()
        .unwrap()
}

#[tokio::test]
async fn wallet_backend_channel_keys_are_resealed_in_the_enclave_and_sign() {
    let vectors = vectors();
    let dev = Dev::start(&[]);
    let distribution = dev.keys("distribution").await.remove(0);
    let passphrase = vectors["passphrase"].as_str().unwrap();
    let ciphertext = kms_encrypt(&dev, passphrase, ("purpose", "wallet-backend-import"));
    let channels: Vec<&Value> = vectors["channels"].as_array().unwrap().iter().collect();

    // One bad row refuses the whole batch: nothing of it is stored.
    for refused in vectors["refused"].as_array().unwrap() {
        let mut rows = channels.clone();
        rows.push(refused);
        let run = import(&dev, &rows, &ciphertext);
        assert!(!run.status.success());
        assert!(
            output_text(&run).contains(refused["code"].as_str().unwrap()),
            "{}: {}",
            refused["why"],
            output_text(&run)
        );
    }
    // A passphrase encrypted under another context is refused by KMS.
    let wrong_context = kms_encrypt(&dev, passphrase, ("pubkey", &distribution));
    let run = import(&dev, &channels, &wrong_context);
    assert!(
        output_text(&run).contains("kms_invalid_ciphertext"),
        "{}",
        output_text(&run)
    );
    assert_eq!(dev.keys("channel").await.len(), 8, "nothing was stored");

    let run = import(&dev, &channels, &ciphertext);
    assert!(run.status.success(), "{}", output_text(&run));
    let (_, keys) = dev.call(Method::GET, "/v1/keys?role=channel", None).await;
    for vector in &channels {
        let key = keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["public_key"] == vector["public_key"])
            .expect("imported");
        assert_eq!(
            (&key["format"], &key["state"]),
            (&json!("envelope"), &json!("active"))
        );
    }
    let (_, pool) = dev.call(Method::GET, "/v1/channels", None).await;
    assert_eq!(pool["total"], 8 + channels.len());

    // An imported key signs as itself, through KMS.
    let channel = channels[0]["public_key"].as_str().unwrap();
    let envelope = user_payment(channel, &distribution, 1);
    let (status, body) = dev
        .call(
            Method::POST,
            "/v1/sign",
            Some(json!({ "transaction": b64(&envelope), "signers": [channel] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let mut secrets = dev.seeds();
    let logs = dev.stop();
    for vector in &channels {
        let secret = vector["secret"].as_str().unwrap();
        assert!(
            !logs.contains(secret),
            "a wallet-backend seed reached the logs"
        );
        let seed = stellar_strkey::ed25519::PrivateKey::from_string(secret)
            .unwrap()
            .0;
        secrets.push(seed);
    }
    assert!(
        !logs.contains(passphrase),
        "the passphrase reached the logs"
    );
    assert_no_secret_in(&logs, &secrets);
}

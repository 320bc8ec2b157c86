//! Attested signing over the whole local stack: `signer-dev up` with the mock KMS
//! (enforcing the shipped key-policy template), the mock enclave and its mock NSM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use harness::stellar::{b64, network_id, raw, user_payment};
use harness::{Dev, assert_no_secret_in};
use host::store::KeyStore as _;
use hyper::{Method, StatusCode};
use serde_json::json;
use stellar_xdr::{
    Limits, MuxedAccount, Preconditions, ReadXdr, TimeBounds, TimePoint, TransactionEnvelope,
    Uint256,
};

/// A channel-sourced payment of a user's funds (the channel only sequences and pays).
fn payment(source: &str, destination: &str) -> TransactionEnvelope {
    user_payment(source, destination, 10_000_000)
}

/// `POST /v1/keys` for a kms-direct channel key.
async fn register(
    dev: &Dev,
    public_key: &str,
    kms_key_id: &str,
    ciphertext: &[u8],
) -> (StatusCode, serde_json::Value) {
    dev.call(
        Method::POST,
        "/v1/keys",
        Some(json!({
            "public_key": public_key,
            "role": "channel",
            "kms_key_id": kms_key_id,
            "ciphertext": B64.encode(ciphertext),
        })),
    )
    .await
}

/// The import of `ciphertext` as `public_key` is refused with `status` and `code` by the
/// enclave's check: the key stays pending with that reason and signs nothing.
async fn expect_import_refused(
    dev: &Dev,
    (public_key, kms_key_id, ciphertext): (&str, &str, &[u8]),
    distribution: &str,
    status: StatusCode,
    code: &str,
) {
    let (actual, body) = register(dev, public_key, kms_key_id, ciphertext).await;
    assert_eq!(
        (actual, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    let key = stored_key(dev, public_key);
    assert_eq!(key.state, host::store::KeyState::Pending);
    assert!(
        key.pending_reason
            .as_deref()
            .is_some_and(|r| r.starts_with(&format!("{code}: "))),
        "{:?}",
        key.pending_reason
    );
    expect_refusal(
        dev,
        public_key,
        distribution,
        StatusCode::NOT_FOUND,
        "unknown_key",
    )
    .await;
}

/// `POST /v1/sign` with `body`.
async fn post_sign(dev: &Dev, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    dev.call(Method::POST, "/v1/sign", Some(body)).await
}

/// Asks `key` to sign its own payment and expects a refusal with `status` and `code`.
async fn expect_refusal(dev: &Dev, key: &str, distribution: &str, status: StatusCode, code: &str) {
    let request = json!({"transaction": b64(&payment(key, distribution)), "signers": [key]});
    let (actual, body) = post_sign(dev, request).await;
    assert_eq!(
        (actual, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
}

fn random_account() -> (String, [u8; 32]) {
    let mut seed = [0u8; 32];
    aws_lc_rs::rand::fill(&mut seed).unwrap();
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    (
        format!("{}", stellar_strkey::ed25519::PublicKey(public)),
        seed,
    )
}

fn stored_key(dev: &Dev, public_key: &str) -> host::store::KeyRecord {
    host::store::SqliteStore::open(
        &dev.state().join("signer.db"),
        host::store::LockLimits::default(),
        std::time::Duration::from_secs(5),
    )
    .unwrap()
    .key(public_key)
    .unwrap()
    .unwrap()
}

/// The local stack without the host's pre-check, so every refusal comes from the
/// enclave itself, and its development keys.
async fn stack() -> (Dev, String, Vec<String>) {
    let dev = Dev::start(&["--no-host-policy-precheck"]);
    let distribution = dev.keys("distribution").await.remove(0);
    let channels = dev.keys("channel").await;
    assert_eq!(channels.len(), 8);
    (dev, distribution, channels)
}

/// Stops the stack and checks its logs: no seed or data key (the development seeds and
/// `extra`) in any line. Returns the logs.
fn finish(dev: Dev, extra: &[[u8; 32]]) -> String {
    let mut seeds = dev.seeds();
    seeds.extend_from_slice(extra);
    let logs = dev.stop();
    assert_no_secret_in(&logs, &seeds);
    logs
}

fn kms_store(dev: &Dev) -> mock_kms::keystore::KeyStore {
    mock_kms::keystore::KeyStore::open(
        &dev.state().join("mock-kms-state.json"),
        "us-east-1",
        "111122223333",
    )
    .unwrap()
}

#[tokio::test]
async fn a_channel_payment_is_signed_through_kms_and_its_channel_stays_locked() {
    let (dev, distribution, channels) = stack().await;
    // A channel-sourced payment, signed through KMS + enclave.
    let envelope = payment(&channels[0], &distribution);
    let (status, body) = post_sign(
        &dev,
        json!({"transaction": b64(&envelope), "signers": [channels[0]]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expected_hash = envelope.hash(network_id()).unwrap();
    assert_eq!(body["hash"], common::stellar::envelope::hex(&expected_hash));
    let signed = TransactionEnvelope::from_xdr(
        B64.decode(body["transaction"].as_str().unwrap()).unwrap(),
        Limits::none(),
    )
    .unwrap();
    let TransactionEnvelope::Tx(signed) = signed else {
        panic!("not a v1 envelope")
    };
    assert_eq!(signed.signatures.len(), 1);
    let decorated = &signed.signatures[0];
    let public = raw(&channels[0]);
    assert_eq!(decorated.hint.0, public[28..]);
    let signature = Signature::from_slice(&decorated.signature.0).unwrap();
    VerifyingKey::from_bytes(&public)
        .unwrap()
        .verify(&expected_hash, &signature)
        .expect("signature verifies over the independently computed hash");
    // The channel stays locked by the signed transaction's hash.
    let (_, pool) = dev
        .call(Method::GET, "/v1/channels?accounts=true", None)
        .await;
    let row = pool["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["account"] == channels[0].as_str())
        .unwrap()
        .clone();
    assert_eq!(row["status"], "locked");
    assert_eq!(row["tx_hash"], body["hash"]);

    let logs = finish(dev, &[]);
    assert!(
        logs.contains("signed"),
        "the enclave logs one line per signature"
    );
}

#[tokio::test]
async fn another_network_is_refused_by_the_enclaves_own_configuration() {
    let (dev, distribution, channels) = stack().await;
    let envelope = payment(&channels[0], &distribution);
    // Another network: refused by the enclave's own configuration.
    let (status, body) = post_sign(
        &dev,
        json!({"transaction": b64(&envelope), "signers": [channels[1]],
                        "network_passphrase": "Public Global Stellar Network ; September 2015"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("wrong_network")),
        "{body}"
    );

    finish(dev, &[]);
}

#[tokio::test]
async fn a_held_key_that_is_not_a_required_signer_is_refused() {
    let (dev, distribution, channels) = stack().await;
    let envelope = payment(&channels[0], &distribution);
    // A key this signer holds but which the transaction does not need (invariant 3).
    let (status, body) = post_sign(
        &dev,
        json!({"transaction": b64(&envelope), "signers": [distribution]}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("not_a_required_signer")),
        "{body}"
    );

    finish(dev, &[]);
}

#[tokio::test]
async fn the_enclaves_signing_policy_refuses_what_the_host_did_not_check() {
    let (dev, distribution, channels) = stack().await;
    // The enclave's signing policy, checked before any KMS call.
    let mut far = payment(&channels[1], &distribution);
    if let TransactionEnvelope::Tx(e) = &mut far {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        e.tx.cond = Preconditions::Time(TimeBounds {
            min_time: TimePoint(0),
            max_time: TimePoint(now + 3600),
        });
    }
    let (status, body) = post_sign(
        &dev,
        json!({"transaction": b64(&far), "signers": [channels[1]]}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("policy_violation")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_time_window"),
        "{body}"
    );
    let (status, body) = post_sign(&dev, json!({"transaction": b64(&payment(&distribution, &channels[1])), "signers": [distribution]})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("policy_violation")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("distribution_provisioning_only"),
        "{body}"
    );

    finish(dev, &[]);
}

#[tokio::test]
async fn an_unknown_key_and_malformed_xdr_are_refused() {
    let (dev, distribution, channels) = stack().await;
    let envelope = payment(&channels[0], &distribution);
    // A key this signer does not hold.
    let (stranger, _) = random_account();
    let (status, body) = post_sign(
        &dev,
        json!({"transaction": b64(&envelope), "signers": [stranger]}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_key")),
        "{body}"
    );

    // Malformed XDR.
    let (status, body) = post_sign(
        &dev,
        json!({"transaction": B64.encode(b"garbage"), "signers": [channels[1]]}),
    )
    .await;
    assert_eq!(
        body["error"]["code"], "malformed_transaction",
        "{status} {body}"
    );

    finish(dev, &[]);
}

#[tokio::test]
async fn a_tampered_ciphertext_or_another_keys_encryption_context_is_refused_by_kms() {
    let (dev, distribution, channels) = stack().await;
    let template = stored_key(&dev, &channels[1]);
    // A tampered ciphertext: KMS refuses it.
    let (tampered_key, _) = random_account();
    let mut tampered = template.kms_ciphertext.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    expect_import_refused(
        &dev,
        (&tampered_key, &template.kms_key_id, &tampered),
        &distribution,
        StatusCode::UNPROCESSABLE_ENTITY,
        "kms_invalid_ciphertext",
    )
    .await;

    // A genuine ciphertext registered under another public key: the encryption context
    // {"pubkey": ...} no longer matches, so KMS refuses it.
    let (wrong_context_key, _) = random_account();
    expect_import_refused(
        &dev,
        (
            &wrong_context_key,
            &template.kms_key_id,
            &template.kms_ciphertext,
        ),
        &distribution,
        StatusCode::UNPROCESSABLE_ENTITY,
        "kms_invalid_ciphertext",
    )
    .await;

    finish(dev, &[]);
}

#[tokio::test]
async fn a_ciphertext_holding_another_seed_is_refused_as_public_key_mismatch() {
    let (dev, distribution, channels) = stack().await;
    let template = stored_key(&dev, &channels[1]);
    // A ciphertext whose context names key A but which holds the seed of key B: KMS
    // decrypts it, and the enclave refuses because B's public key is not A.
    let (claimed, _) = random_account();
    let (_, other_seed) = random_account();
    let kms_store = kms_store(&dev);
    let key_id = kms_store.resolve(&template.kms_key_id).unwrap();
    let context = BTreeMap::from([("pubkey".to_string(), claimed.clone())]);
    let mismatched = kms_store.encrypt(&key_id, &other_seed, &context).unwrap();
    expect_import_refused(
        &dev,
        (&claimed, &template.kms_key_id, &mismatched),
        &distribution,
        StatusCode::UNPROCESSABLE_ENTITY,
        "public_key_mismatch",
    )
    .await;

    // The genuine article: a kms-direct seed under its own public key is checked by the
    // enclave, becomes active and signs.
    let (imported, seed) = random_account();
    let context = BTreeMap::from([("pubkey".to_string(), imported.clone())]);
    let ciphertext = kms_store.encrypt(&key_id, &seed, &context).unwrap();
    let (status, body) = register(&dev, &imported, &template.kms_key_id, &ciphertext).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "active", "{body}");
    assert!(body.get("pending_reason").is_none(), "{body}");
    let request =
        json!({"transaction": b64(&payment(&imported, &distribution)), "signers": [imported]});
    let (status, body) = post_sign(&dev, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let checks: Vec<_> = dev
        .audit()
        .into_iter()
        .filter(|row| row.entry.kind == "key_verified")
        .map(|row| (row.entry.public_key.unwrap(), row.entry.outcome))
        .collect();
    assert!(
        checks.contains(&(imported.clone(), "ok".to_string())),
        "{checks:?}"
    );
    assert!(checks.contains(&(claimed.clone(), "public_key_mismatch".to_string())));

    let logs = finish(dev, &[other_seed, seed]);
    assert!(
        logs.contains("signing refused"),
        "a refused signature is logged"
    );
}

#[tokio::test]
async fn a_fee_bump_keeps_the_channel_locked_by_the_inner_hash() {
    let (dev, distribution, channels) = stack().await;
    // A fee-bump of a channel transaction: the distribution account pays, and the
    // channel's lock is tied to the inner hash, which is what unlocks it.
    let inner = payment(&channels[2], &distribution);
    let (status, body) = post_sign(
        &dev,
        json!({"transaction": b64(&inner), "signers": [channels[2]]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let inner_hash = body["hash"].as_str().unwrap().to_string();
    let TransactionEnvelope::Tx(signed_inner) = TransactionEnvelope::from_xdr(
        B64.decode(body["transaction"].as_str().unwrap()).unwrap(),
        Limits::none(),
    )
    .unwrap() else {
        panic!("not a v1 envelope")
    };
    let bump = TransactionEnvelope::TxFeeBump(stellar_xdr::FeeBumpTransactionEnvelope {
        tx: stellar_xdr::FeeBumpTransaction {
            fee_source: MuxedAccount::Ed25519(Uint256(raw(&distribution))),
            fee: 400,
            inner_tx: stellar_xdr::FeeBumpTransactionInnerTx::Tx(signed_inner),
            ext: stellar_xdr::FeeBumpTransactionExt::V0,
        },
        signatures: Default::default(),
    });
    let (status, body) = post_sign(
        &dev,
        json!({"transaction": b64(&bump), "signers": [distribution]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let outer_hash = bump.hash(network_id()).unwrap();
    assert_eq!(body["hash"], common::stellar::envelope::hex(&outer_hash));
    assert_ne!(body["hash"], inner_hash.as_str());
    let signature = B64
        .decode(body["signatures"][0]["signature"].as_str().unwrap())
        .unwrap();
    VerifyingKey::from_bytes(&raw(&distribution))
        .unwrap()
        .verify(&outer_hash, &Signature::from_slice(&signature).unwrap())
        .expect("the fee-bump signature covers the fee-bump hash");
    let (_, unlocked) = dev
        .call(
            Method::POST,
            "/v1/channels/unlock",
            Some(json!({"tx_hashes": [body["hash"]]})),
        )
        .await;
    assert_eq!(
        unlocked["unlocked"],
        json!([]),
        "the outer hash unlocks nothing"
    );
    let (_, unlocked) = dev
        .call(
            Method::POST,
            "/v1/channels/unlock",
            Some(json!({"tx_hashes": [inner_hash]})),
        )
        .await;
    assert_eq!(unlocked["unlocked"][0]["account"], channels[2].as_str());

    finish(dev, &[]);
}

#[tokio::test]
async fn post_fee_bump_wraps_only_signed_transactions_of_managed_accounts() {
    let (dev, distribution, channels) = stack().await;
    // POST /v1/fee-bump: the host builds the fee-bump, the distribution key signs it.
    let inner = payment(&channels[3], &distribution);
    let (_, body) = dev
        .call(
            Method::POST,
            "/v1/fee-bump",
            Some(json!({"transaction": b64(&inner), "base_fee": 300})),
        )
        .await;
    assert_eq!(body["error"]["code"], "no_signatures_provided", "{body}");
    let (status, body) = post_sign(
        &dev,
        json!({"transaction": b64(&inner), "signers": [channels[3]]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let signed_inner = body["transaction"].as_str().unwrap().to_string();
    let (status, bumped) = dev
        .call(
            Method::POST,
            "/v1/fee-bump",
            Some(json!({"transaction": signed_inner, "base_fee": 300})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{bumped}");
    assert_eq!(bumped["fee"], 600, "base_fee × (1 operation + 1)");
    assert_eq!(bumped["fee_source"], distribution.as_str());
    assert_eq!(bumped["inner_hash"], body["hash"]);
    let outer = TransactionEnvelope::from_xdr(
        B64.decode(bumped["transaction"].as_str().unwrap()).unwrap(),
        Limits::none(),
    )
    .unwrap();
    let outer_hash = outer.hash(network_id()).unwrap();
    assert_eq!(bumped["hash"], common::stellar::envelope::hex(&outer_hash));
    let signature = B64
        .decode(bumped["signatures"][0]["signature"].as_str().unwrap())
        .unwrap();
    VerifyingKey::from_bytes(&raw(&distribution))
        .unwrap()
        .verify(&outer_hash, &Signature::from_slice(&signature).unwrap())
        .expect("the distribution key signed the fee-bump");
    let (_, body) = dev
        .call(
            Method::POST,
            "/v1/fee-bump",
            Some(json!({"transaction": bumped["transaction"], "base_fee": 300})),
        )
        .await;
    assert_eq!(body["error"]["code"], "not_eligible_for_fee_bump", "{body}");
    // A signed transaction from an account this signer does not manage.
    let (foreign, foreign_seed) = random_account();
    let mut foreign_tx = payment(&foreign, &distribution);
    let foreign_hash = foreign_tx.hash(network_id()).unwrap();
    let (raw_foreign, foreign_sig) =
        enclave::keys::sign_checked(&foreign_seed, &foreign, &foreign_hash).unwrap();
    common::stellar::envelope::add_signature(&mut foreign_tx, &raw_foreign, &foreign_sig).unwrap();
    let (_, body) = dev
        .call(
            Method::POST,
            "/v1/fee-bump",
            Some(json!({"transaction": b64(&foreign_tx), "max_fee": 1000})),
        )
        .await;
    assert_eq!(body["error"]["code"], "not_eligible_for_fee_bump", "{body}");

    finish(dev, &[]);
}

#[tokio::test]
async fn an_envelope_format_key_opens_its_sealed_seed_and_signs() {
    let (dev, distribution, channels) = stack().await;
    let template = stored_key(&dev, &channels[1]);
    let kms_store = kms_store(&dev);
    let key_id = kms_store.resolve(&template.kms_key_id).unwrap();
    // The envelope format: KMS holds a data key, the store a sealed seed.
    let (envelope_key, envelope_seed) = random_account();
    let mut data_key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut data_key).unwrap();
    let context = BTreeMap::from([
        ("format".to_string(), "envelope".to_string()),
        ("pubkey".to_string(), envelope_key.clone()),
    ]);
    let wrapped = kms_store.encrypt(&key_id, &data_key, &context).unwrap();
    let sealed = enclave::keys::seal_seed(&data_key, &envelope_seed, &envelope_key, [7; 12]);
    host::store::SqliteStore::open(
        &dev.state().join("signer.db"),
        host::store::LockLimits::default(),
        std::time::Duration::from_secs(5),
    )
    .unwrap()
    .insert_keys(&[host::store::NewKey {
        public_key: envelope_key.clone(),
        role: host::store::KeyRole::Channel,
        format: host::store::KeyFormat::Envelope,
        kms_key_id: template.kms_key_id.clone(),
        kms_ciphertext: wrapped,
        sealed_seed: Some(sealed),
        state: host::store::KeyState::Active,
        pending_for: None,
    }])
    .unwrap();
    let envelope_tx = payment(&envelope_key, &distribution);
    let (status, body) = post_sign(
        &dev,
        json!({"transaction": b64(&envelope_tx), "signers": [envelope_key]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let signature = B64
        .decode(body["signatures"][0]["signature"].as_str().unwrap())
        .unwrap();
    VerifyingKey::from_bytes(&raw(&envelope_key))
        .unwrap()
        .verify(
            &envelope_tx.hash(network_id()).unwrap(),
            &Signature::from_slice(&signature).unwrap(),
        )
        .expect("an envelope-format key signs");

    finish(dev, &[envelope_seed, data_key]);
}

#[tokio::test]
async fn an_enclave_with_other_measurements_is_denied_by_the_key_policy() {
    let other_pcrs = format!(
        "0={},1={},2={}",
        "ee".repeat(48),
        "d1".repeat(48),
        "d2".repeat(48)
    );
    // The keys are generated by an admitted enclave; then another build runs on them.
    let (_, state) = Dev::start(&[]).stop_keeping_state();
    let dev = Dev::start_in(state, &["--enclave-pcrs", &other_pcrs]);
    let distribution = dev.keys("distribution").await.remove(0);
    let channel = dev.keys("channel").await.remove(0);
    let (status, body) = post_sign(
        &dev,
        json!({"transaction": b64(&payment(&channel, &distribution)), "signers": [channel]}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("kms_access_denied")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no statement allows"),
        "{body}"
    );
    let seeds = dev.seeds();
    let logs = dev.stop();
    assert_no_secret_in(&logs, &seeds);
}

#[tokio::test]
async fn keys_generated_in_the_enclave_are_stored_sealed_and_sign() {
    let (dev, distribution, channels) = stack().await;
    let (status, body) = dev
        .call(
            Method::POST,
            "/v1/keys/generate",
            Some(json!({"role": "channel", "count": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let generated: Vec<String> = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| {
            assert_eq!(key["role"], "channel");
            assert_eq!(key["format"], "envelope");
            assert_eq!(key["state"], "active");
            key["public_key"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(generated.len(), 5);
    let measured_key = stored_key(&dev, &distribution).kms_key_id;
    for public_key in &generated {
        assert!(!channels.contains(public_key));
        let stored = stored_key(&dev, public_key);
        assert_eq!(stored.format, host::store::KeyFormat::Envelope);
        assert_eq!(stored.kms_key_id, measured_key);
        assert_eq!(stored.sealed_seed.as_ref().map(Vec::len), Some(60));
    }
    assert_eq!(dev.keys("channel").await.len(), 8 + 5);

    // The same through the CLI an operator runs.
    let output = std::process::Command::new(harness::workspace_bin("signer-host"))
        .args(["keys", "--socket"])
        .arg(dev.socket())
        .args(["generate", "--role", "channel", "--count", "2", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["keys"].as_array().unwrap().len(), 2, "{printed}");
    assert_eq!(dev.keys("channel").await.len(), 8 + 5 + 2);

    // A generated key signs through KMS and the enclave like any other.
    let envelope = payment(&generated[0], &distribution);
    let (status, body) = post_sign(
        &dev,
        json!({"transaction": b64(&envelope), "signers": [generated[0]]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let signed = TransactionEnvelope::from_xdr(
        B64.decode(body["transaction"].as_str().unwrap()).unwrap(),
        Limits::none(),
    )
    .unwrap();
    let TransactionEnvelope::Tx(signed) = signed else {
        panic!("not a v1 envelope")
    };
    let signature = Signature::from_slice(&signed.signatures[0].signature.0).unwrap();
    VerifyingKey::from_bytes(&raw(&generated[0]))
        .unwrap()
        .verify(&envelope.hash(network_id()).unwrap(), &signature)
        .unwrap();

    // A distribution key only while none is active; counts within bounds.
    for (request, status, code) in [
        (
            json!({"role": "distribution", "count": 1}),
            StatusCode::CONFLICT,
            "key_exists",
        ),
        (
            json!({"role": "channel", "count": 0}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            json!({"role": "channel", "count": 101}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ] {
        let (actual, body) = dev
            .call(Method::POST, "/v1/keys/generate", Some(request))
            .await;
        assert_eq!(
            (actual, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let generated_rows = dev
        .audit()
        .into_iter()
        .filter(|row| row.entry.kind == "key_generated")
        .count();
    // The dev stack's own 1 + 8, then the 5 and 2 above.
    assert_eq!(generated_rows, 9 + 5 + 2);
    // The generated seeds and data keys (in `seeds()`) never reach a log.
    finish(dev, &[]);
}

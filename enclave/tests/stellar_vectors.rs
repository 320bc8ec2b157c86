//! Cross-check against an independent implementation: `testdata/stellar-vectors.json`
//! was produced by the Python stellar-sdk (`scripts/stellar-vectors.py`; CI regenerates
//! it and diffs). For every transaction — payments, path payments, create-account,
//! change-trust, several operation sources, muxed accounts, every memo type, time and
//! ledger bounds, v0 envelopes, fee-bumps — this project's hash, signatures and signed
//! envelope must be byte-identical to the SDK's; likewise the payload hash, signature
//! and signed entry of every Soroban authorization entry (ADDRESS and ADDRESS_V2
//! credentials, nested invocations, contract creation).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::stellar::envelope::{
    add_signature, decode_envelope, encode_envelope, hex, network_id, required_signers,
    transaction_hash,
};
use enclave::keys::{public_key_of, sign_checked};

#[test]
fn hashes_signatures_and_envelopes_match_the_python_stellar_sdk() {
    let path = format!(
        "{}/../testdata/stellar-vectors.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(file["generator"], "stellar-sdk (Python)");
    let cases = file["cases"].as_array().unwrap();
    assert!(cases.len() >= 200);
    let (mut v0, mut fee_bumps) = (0, 0);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        v0 += usize::from(name.contains("-v0"));
        fee_bumps += usize::from(name.contains("feebump"));
        let network = network_id(case["network_passphrase"].as_str().unwrap());
        let mut envelope =
            decode_envelope(&B64.decode(case["unsigned"].as_str().unwrap()).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        let hash = transaction_hash(&envelope, network).unwrap();
        assert_eq!(hex(&hash), case["hash"].as_str().unwrap(), "{name}: hash");
        let required = required_signers(&envelope);
        for seed_hex in case["seeds"].as_array().unwrap() {
            let seed: [u8; 32] = (0..32)
                .map(|i| {
                    u8::from_str_radix(&seed_hex.as_str().unwrap()[2 * i..2 * i + 2], 16).unwrap()
                })
                .collect::<Vec<_>>()
                .try_into()
                .unwrap();
            let public_key = public_key_of(&seed);
            let (raw, signature) = sign_checked(&seed, &public_key, &hash).unwrap();
            assert!(
                required.contains(&raw),
                "{name}: the SDK's signer is a required signer"
            );
            add_signature(&mut envelope, &raw, &signature).unwrap();
        }
        let signed = B64.encode(encode_envelope(&envelope).unwrap());
        assert_eq!(
            signed,
            case["signed"].as_str().unwrap(),
            "{name}: signed envelope"
        );
    }
    assert!(
        v0 >= 20 && fee_bumps >= 20,
        "coverage: {v0} v0, {fee_bumps} fee-bumps"
    );
}

/// Soroban authorization entries signed by `stellar_sdk.auth.authorize_entry`: payload
/// hash, signature and the signed entry must be byte-identical to the SDK's.
#[test]
fn soroban_authorization_matches_the_python_stellar_sdk() {
    use common::stellar::soroban::{
        auth_payload_hash, authorizing_account, decode_auth_entry, encode_auth_entry,
        set_auth_signature,
    };
    let path = format!(
        "{}/../testdata/stellar-vectors.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases = file["soroban_auth"].as_array().unwrap();
    assert!(cases.len() >= 100);
    let (mut v2, mut nested) = (0, 0);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        v2 += usize::from(name.ends_with("-v2"));
        let network = network_id(case["network_passphrase"].as_str().unwrap());
        let mut entry = decode_auth_entry(&B64.decode(case["unsigned"].as_str().unwrap()).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        nested += usize::from(!entry.root_invocation.sub_invocations.is_empty());
        let expiration =
            u32::try_from(case["signature_expiration_ledger"].as_u64().unwrap()).unwrap();
        let hash = auth_payload_hash(&entry, expiration, network).unwrap();
        assert_eq!(
            hex(&hash),
            case["hash"].as_str().unwrap(),
            "{name}: payload hash"
        );
        let seed: [u8; 32] = (0..32)
            .map(|i| {
                u8::from_str_radix(&case["seed"].as_str().unwrap()[2 * i..2 * i + 2], 16).unwrap()
            })
            .collect::<Vec<_>>()
            .try_into()
            .unwrap();
        let public_key = public_key_of(&seed);
        let (raw, signature) = sign_checked(&seed, &public_key, &hash).unwrap();
        assert_eq!(authorizing_account(&entry).unwrap(), raw, "{name}: account");
        set_auth_signature(&mut entry, expiration, &raw, &signature).unwrap();
        assert_eq!(
            B64.encode(encode_auth_entry(&entry).unwrap()),
            case["signed"].as_str().unwrap(),
            "{name}: signed entry"
        );
    }
    assert!(
        v2 >= 10 && nested >= 20,
        "coverage: {v2} v2, {nested} nested"
    );
}

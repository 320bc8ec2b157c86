//! `POST /v1/soroban/authorize` over the whole local stack: the distribution account
//! authorizes calls to the contracts its policy lists; channel accounts, other
//! contracts, other networks and malformed entries are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use harness::stellar::{NETWORK, raw};
use harness::{Dev, assert_no_secret_in};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use stellar_xdr::{
    AccountId, ContractId, Hash, HashIdPreimage, HashIdPreimageSorobanAuthorization, Int128Parts,
    InvokeContractArgs, Limits, PublicKey, ReadXdr, ScAddress, ScVal, SorobanAddressCredentials,
    SorobanAuthorizationEntry, SorobanAuthorizedFunction, SorobanAuthorizedInvocation,
    SorobanCredentials, Uint256, WriteXdr,
};

const TOKEN: [u8; 32] = [0x70; 32];
const OTHER_CONTRACT: [u8; 32] = [0x71; 32];

fn account_address(public_key: &str) -> ScAddress {
    ScAddress::Account(AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(raw(
        public_key,
    )))))
}

fn transfer(
    contract: [u8; 32],
    from: &str,
    subs: Vec<SorobanAuthorizedInvocation>,
) -> SorobanAuthorizedInvocation {
    SorobanAuthorizedInvocation {
        function: SorobanAuthorizedFunction::ContractFn(InvokeContractArgs {
            contract_address: ScAddress::Contract(ContractId(Hash(contract))),
            function_name: "transfer".try_into().unwrap(),
            args: vec![
                ScVal::Address(account_address(from)),
                ScVal::Address(ScAddress::Contract(ContractId(Hash([9; 32])))),
                ScVal::I128(Int128Parts {
                    hi: 0,
                    lo: 1_000_000,
                }),
            ]
            .try_into()
            .unwrap(),
        }),
        sub_invocations: subs.try_into().unwrap(),
    }
}

fn entry(address: &str, root: SorobanAuthorizedInvocation) -> SorobanAuthorizationEntry {
    SorobanAuthorizationEntry {
        credentials: SorobanCredentials::Address(SorobanAddressCredentials {
            address: account_address(address),
            nonce: 0x0123_4567_89ab_cdef,
            signature_expiration_ledger: 0,
            signature: ScVal::Void,
        }),
        root_invocation: root,
    }
}

fn b64(entry: &SorobanAuthorizationEntry) -> String {
    B64.encode(entry.to_xdr(Limits::none()).unwrap())
}

fn contract_strkey(id: [u8; 32]) -> String {
    format!("{}", stellar_strkey::Contract(id))
}

async fn authorize(dev: &Dev, body: Value) -> (StatusCode, Value) {
    dev.call(Method::POST, "/v1/soroban/authorize", Some(body))
        .await
}

fn code(answer: &(StatusCode, Value)) -> (StatusCode, &str) {
    (
        answer.0,
        answer.1["error"]["code"].as_str().unwrap_or("<none>"),
    )
}

/// The stack without the host's pre-check (the enclave's own enforcement answers),
/// the token contract allowed, and its distribution and first channel keys.
async fn enclave_only() -> (Dev, String, String) {
    let dev = Dev::start(&[
        "--no-host-policy-precheck",
        "--soroban-contract",
        &contract_strkey(TOKEN),
    ]);
    let distribution = dev.keys("distribution").await.remove(0);
    let channel = dev.keys("channel").await.remove(0);
    (dev, distribution, channel)
}

/// A distribution entry calling the token contract, with a nested call to it.
fn token_transfer(distribution: &str) -> SorobanAuthorizationEntry {
    entry(
        distribution,
        transfer(
            TOKEN,
            distribution,
            vec![transfer(TOKEN, distribution, vec![])],
        ),
    )
}

fn stop_without_secrets(dev: Dev) {
    let seeds = dev.seeds();
    let logs = dev.stop();
    assert_no_secret_in(&logs, &seeds);
}

fn with(entry: &SorobanAuthorizationEntry) -> Value {
    json!({"entry": b64(entry), "signature_expiration_ledger": 123_456})
}

#[tokio::test]
async fn the_distribution_account_authorizes_a_listed_contract_with_a_verifiable_signature() {
    let (dev, distribution, _) = enclave_only().await;
    let unsigned = token_transfer(&distribution);
    let (status, body) = authorize(
        &dev,
        json!({"entry": b64(&unsigned), "signature_expiration_ledger": 123_456, "signer": distribution}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The payload, computed here independently of the project's Soroban code.
    let preimage = HashIdPreimage::SorobanAuthorization(HashIdPreimageSorobanAuthorization {
        network_id: Hash(Sha256::digest(NETWORK.as_bytes()).into()),
        nonce: 0x0123_4567_89ab_cdef,
        signature_expiration_ledger: 123_456,
        invocation: unsigned.root_invocation.clone(),
    });
    let payload: [u8; 32] = Sha256::digest(preimage.to_xdr(Limits::none()).unwrap()).into();
    assert_eq!(body["hash"], common::stellar::envelope::hex(&payload));
    let signed = SorobanAuthorizationEntry::from_xdr(
        B64.decode(body["entry"].as_str().unwrap()).unwrap(),
        Limits::none(),
    )
    .unwrap();
    assert_eq!(signed.root_invocation, unsigned.root_invocation);
    let SorobanCredentials::Address(credentials) = &signed.credentials else {
        panic!("credentials changed kind")
    };
    assert_eq!(credentials.signature_expiration_ledger, 123_456);
    assert_eq!(credentials.nonce, 0x0123_4567_89ab_cdef);
    // Vec[Map{public_key: Bytes, signature: Bytes}], as the Stellar account contract expects.
    let ScVal::Vec(Some(items)) = &credentials.signature else {
        panic!("signature is {:?}", credentials.signature)
    };
    let [ScVal::Map(Some(map))] = items.as_slice() else {
        panic!("one map expected: {items:?}")
    };
    let (ScVal::Bytes(public_key), ScVal::Bytes(signature)) = (&map[0].val, &map[1].val) else {
        panic!("{map:?}")
    };
    assert_eq!(map[0].key, ScVal::Symbol("public_key".try_into().unwrap()));
    assert_eq!(map[1].key, ScVal::Symbol("signature".try_into().unwrap()));
    assert_eq!(public_key.as_slice(), raw(&distribution));
    VerifyingKey::from_bytes(&raw(&distribution))
        .unwrap()
        .verify(
            &payload,
            &Signature::from_slice(signature.as_slice()).unwrap(),
        )
        .expect("the signature verifies over the independently computed payload");
    assert_eq!(body["signature"]["public_key"], distribution.as_str());
    assert_eq!(
        B64.decode(body["signature"]["signature"].as_str().unwrap())
            .unwrap(),
        signature.as_slice()
    );
    stop_without_secrets(dev);
}

#[tokio::test]
async fn the_enclave_refuses_every_other_authorization_with_a_stable_code() {
    let (dev, distribution, channel) = enclave_only().await;
    let unsigned = token_transfer(&distribution);
    // Each refusal, with its stable code (and, for the policy, the rule).
    let expiry = 123_456;
    let stranger = format!("{}", stellar_strkey::ed25519::PublicKey([5; 32]));
    let mut source_credentials = unsigned.clone();
    source_credentials.credentials = SorobanCredentials::SourceAccount;
    let refusals = [
        (
            with(&entry(&channel, transfer(TOKEN, &channel, vec![]))),
            StatusCode::FORBIDDEN,
            "policy_violation",
            "channel_soroban_auth",
        ),
        (
            with(&entry(
                &distribution,
                transfer(
                    TOKEN,
                    &distribution,
                    vec![transfer(OTHER_CONTRACT, &distribution, vec![])],
                ),
            )),
            StatusCode::FORBIDDEN,
            "policy_violation",
            "soroban_contract_not_allowed",
        ),
        (
            json!({"entry": b64(&unsigned), "signature_expiration_ledger": expiry,
                   "network_passphrase": "Public Global Stellar Network ; September 2015"}),
            StatusCode::BAD_REQUEST,
            "wrong_network",
            "",
        ),
        (
            json!({"entry": b64(&unsigned), "signature_expiration_ledger": expiry, "signer": channel}),
            StatusCode::BAD_REQUEST,
            "not_a_required_signer",
            "",
        ),
        (
            with(&entry(&stranger, transfer(TOKEN, &stranger, vec![]))),
            StatusCode::NOT_FOUND,
            "unknown_key",
            "",
        ),
        (
            with(&source_credentials),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "SourceAccount",
        ),
        (
            json!({"entry": b64(&unsigned), "signature_expiration_ledger": 0}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "signature_expiration_ledger",
        ),
        (
            json!({"entry": "AAAA", "signature_expiration_ledger": expiry}),
            StatusCode::BAD_REQUEST,
            "malformed_transaction",
            "",
        ),
    ];
    for (request, status, error_code, mentions) in refusals {
        let answer = authorize(&dev, request.clone()).await;
        assert_eq!(
            code(&answer),
            (status, error_code),
            "{request}: {}",
            answer.1
        );
        let message = answer.1["error"]["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{request}: {message}");
    }
    stop_without_secrets(dev);
}

#[tokio::test]
async fn the_host_precheck_refuses_the_same_without_a_round_trip_and_audits_it() {
    let dev = Dev::start(&["--soroban-contract", &contract_strkey(TOKEN)]);
    let distribution = dev.keys("distribution").await.remove(0);
    let channel = dev.keys("channel").await.remove(0);
    for (entry, status) in [
        (
            entry(&channel, transfer(TOKEN, &channel, vec![])),
            StatusCode::FORBIDDEN,
        ),
        (
            entry(
                &distribution,
                transfer(OTHER_CONTRACT, &distribution, vec![]),
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            entry(&distribution, transfer(TOKEN, &distribution, vec![])),
            StatusCode::OK,
        ),
    ] {
        let answer = authorize(&dev, with(&entry)).await;
        assert_eq!(answer.0, status, "{}", answer.1);
    }
    // The host's own refusals are audited like the enclave's answers, rule included.
    let audit: Vec<(String, String, String)> = dev
        .audit()
        .into_iter()
        .filter(|row| row.entry.kind == "soroban_auth")
        .map(|row| {
            (
                row.entry.public_key.unwrap_or_default(),
                row.entry.outcome,
                row.entry.detail.unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(audit.len(), 3, "{audit:?}");
    assert_eq!(
        (audit[0].0.as_str(), audit[0].1.as_str()),
        (distribution.as_str(), "ok")
    );
    assert_eq!(audit[1].1, "policy_violation");
    assert!(
        audit[1].2.contains("soroban_contract_not_allowed"),
        "{audit:?}"
    );
    assert_eq!(
        (audit[2].0.as_str(), audit[2].1.as_str()),
        (channel.as_str(), "policy_violation")
    );
    assert!(audit[2].2.contains("channel_soroban_auth"), "{audit:?}");
    stop_without_secrets(dev);
}

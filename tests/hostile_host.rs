//! What a compromised host (or any caller of the host API) tries, through plain
//! `POST /v1/sign` calls on the local stack: each attempt is refused with the rule
//! named, the same with the host's pre-check on (the host answers) and off (the enclave
//! answers), and ordinary traffic is still signed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use harness::stellar::{USER, account, b64, op, transaction};
use harness::{Dev, assert_no_secret_in};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use stellar_xdr::{
    AccountId, Asset, BeginSponsoringFutureReservesOp, CreateAccountOp, FeeBumpTransaction,
    FeeBumpTransactionEnvelope, FeeBumpTransactionExt, FeeBumpTransactionInnerTx, Limits,
    MuxedAccount, OperationBody, PaymentOp, PublicKey, ReadXdr, SetOptionsOp, TransactionEnvelope,
    Uint256,
};

fn user() -> MuxedAccount {
    MuxedAccount::Ed25519(Uint256(USER))
}

fn pay(destination: &str) -> OperationBody {
    OperationBody::Payment(PaymentOp {
        destination: account(destination),
        asset: Asset::Native,
        amount: 1_000_000_000,
    })
}

fn account_id(public_key: &str) -> AccountId {
    AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(
        harness::stellar::raw(public_key),
    )))
}

/// Sponsored creation of `new`, by the distribution account.
fn provisioning(distribution: &str, new: &str, fee: u32) -> TransactionEnvelope {
    transaction(
        distribution,
        fee,
        vec![
            op(
                None,
                OperationBody::BeginSponsoringFutureReserves(BeginSponsoringFutureReservesOp {
                    sponsored_id: account_id(new),
                }),
            ),
            op(
                None,
                OperationBody::CreateAccount(CreateAccountOp {
                    destination: account_id(new),
                    starting_balance: 0,
                }),
            ),
            op(
                Some(account(new)),
                OperationBody::EndSponsoringFutureReserves,
            ),
        ],
    )
}

fn bump(distribution: &str, inner: TransactionEnvelope) -> TransactionEnvelope {
    let TransactionEnvelope::Tx(inner) = inner else {
        panic!("v1 inner")
    };
    TransactionEnvelope::TxFeeBump(FeeBumpTransactionEnvelope {
        tx: FeeBumpTransaction {
            fee_source: account(distribution),
            fee: 1_000,
            inner_tx: FeeBumpTransactionInnerTx::Tx(inner),
            ext: FeeBumpTransactionExt::V0,
        },
        signatures: Default::default(),
    })
}

async fn sign(dev: &Dev, envelope: &TransactionEnvelope, signers: &[&str]) -> (StatusCode, Value) {
    dev.call(
        Method::POST,
        "/v1/sign",
        Some(json!({"transaction": b64(envelope), "signers": signers})),
    )
    .await
}

fn signed(answer: &(StatusCode, Value)) -> TransactionEnvelope {
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    let xdr = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        answer.1["transaction"].as_str().unwrap(),
    )
    .unwrap();
    TransactionEnvelope::from_xdr(xdr, Limits::none()).unwrap()
}

/// Each attempt: what it is, the envelope, the keys named, the rule that refuses it.
type Attempt<'a> = (
    &'static str,
    TransactionEnvelope,
    Vec<&'a str>,
    &'static str,
);

fn attempts<'a>(
    distribution: &'a str,
    channel: &'a str,
    fresh: &'a str,
    stranger: &str,
) -> Vec<Attempt<'a>> {
    let drain = transaction(channel, 100, vec![op(None, pay(stranger))]);
    let lock_out = transaction(
        channel,
        100,
        vec![op(
            None,
            OperationBody::SetOptions(SetOptionsOp {
                inflation_dest: None,
                clear_flags: None,
                set_flags: None,
                master_weight: Some(0),
                low_threshold: None,
                med_threshold: None,
                high_threshold: None,
                home_domain: None,
                signer: None,
            }),
        )],
    );
    let merge_away = transaction(
        channel,
        100,
        vec![op(None, OperationBody::AccountMerge(account(stranger)))],
    );
    let unsigned_third_party = bump(
        distribution,
        transaction(stranger, 100, vec![op(None, pay(channel))]),
    );
    vec![
        (
            "a channel paying from its own funds",
            drain,
            vec![channel],
            "channel_not_operation_source",
        ),
        (
            "a channel dropping its master key",
            lock_out,
            vec![channel],
            "channel_not_operation_source",
        ),
        (
            "a channel merging into a stranger",
            merge_away,
            vec![channel],
            "channel_not_operation_source",
        ),
        (
            "a fee-bump around an unsigned third-party transaction",
            unsigned_third_party,
            vec![&distribution],
            "fee_bump_inner_unsigned",
        ),
        (
            "provisioning an account whose key is not held",
            provisioning(distribution, stranger, 300),
            vec![&distribution],
            "sponsorship_unheld_account",
        ),
        (
            "provisioning with a 10 XLM fee",
            provisioning(distribution, fresh, 100_000_000),
            vec![&distribution, fresh],
            "fee_cap",
        ),
    ]
}

/// Ordinary traffic: a channel paying for a user's payment, a fee-bump of it once
/// signed, provisioning of a key this signer holds, a retirement merge.
async fn ordinary_traffic_is_signed(
    dev: &Dev,
    distribution: &str,
    channels: &[String],
    stranger: &str,
) {
    let (channel, fresh, retiring) = (&channels[0], &channels[7], &channels[6]);
    let payment = transaction(channel, 100, vec![op(Some(user()), pay(stranger))]);
    let signed_payment = signed(&sign(dev, &payment, &[channel]).await);
    signed(&sign(dev, &bump(distribution, signed_payment), &[distribution]).await);
    signed(
        &sign(
            dev,
            &provisioning(distribution, fresh, 300),
            &[distribution, fresh],
        )
        .await,
    );
    let retirement = transaction(
        distribution,
        100,
        vec![op(
            Some(account(retiring)),
            OperationBody::AccountMerge(account(distribution)),
        )],
    );
    signed(&sign(dev, &retirement, &[distribution, retiring]).await);
}

async fn attacks_are_refused_and_ordinary_traffic_is_signed(extra: &[&str]) {
    let dev = Dev::start(extra);
    let distribution = dev.keys("distribution").await.remove(0);
    let channels = dev.keys("channel").await;
    let stranger = format!("{}", stellar_strkey::ed25519::PublicKey([0x42; 32]));
    for (what, envelope, signers, rule) in
        attempts(&distribution, &channels[0], &channels[7], &stranger)
    {
        let (status, body) = sign(&dev, &envelope, &signers).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("policy_violation")),
            "{what}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(rule), "{what}: {message}");
    }

    ordinary_traffic_is_signed(&dev, &distribution, &channels, &stranger).await;
    let seeds = dev.seeds();
    let logs = dev.stop();
    assert_no_secret_in(&logs, &seeds);
}

#[tokio::test]
async fn the_enclave_refuses_hostile_requests_on_its_own() {
    attacks_are_refused_and_ordinary_traffic_is_signed(&["--no-host-policy-precheck"]).await;
}

#[tokio::test]
async fn the_host_precheck_gives_the_same_answers() {
    attacks_are_refused_and_ordinary_traffic_is_signed(&[]).await;
}

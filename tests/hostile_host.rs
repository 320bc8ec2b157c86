//! What a compromised host (or any caller of the host API) tries on the local stack:
//! through plain `POST /v1/sign` calls with the host's pre-check on (the host answers)
//! and off (the enclave answers), and as frames straight to the enclave's socket with
//! the stored key material (no host at all). Each attempt is refused with the rule
//! named, the same way on every route, and ordinary traffic is still signed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use common::wire::ErrorCode;
use common::wire::messages::Response;
use harness::raw_enclave::{RawEnclave, refusal, stored_material};
use harness::stellar::NETWORK;
use harness::stellar::{USER, account, b64, op, transaction};
use harness::{Dev, assert_no_secret_in};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use stellar_xdr::{
    AccountId, Asset, BeginSponsoringFutureReservesOp, CreateAccountOp, DecoratedSignature,
    FeeBumpTransaction, FeeBumpTransactionEnvelope, FeeBumpTransactionExt,
    FeeBumpTransactionInnerTx, Limits, MuxedAccount, OperationBody, PaymentOp, PublicKey, ReadXdr,
    SetOptionsOp, Signature, SignatureHint, TransactionEnvelope, Uint256, WriteXdr,
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

/// How an attempt reaches the enclave: through the host API, or as frames straight to
/// the enclave's socket with the stored key material a compromised host holds.
enum Route<'a> {
    Host(&'a Dev),
    Wire(&'a Dev, RawEnclave),
}

impl Route<'_> {
    /// The signed envelope, or the refusal's code and message.
    async fn sign(
        &mut self,
        envelope: &TransactionEnvelope,
        signers: &[&str],
    ) -> Result<TransactionEnvelope, (String, String)> {
        match self {
            Route::Host(dev) => {
                let (status, body) = dev
                    .call(
                        Method::POST,
                        "/v1/sign",
                        Some(json!({"transaction": b64(envelope), "signers": signers})),
                    )
                    .await;
                let text = |field: &Value| field.as_str().unwrap().to_string();
                if status != StatusCode::OK {
                    let code = text(&body["error"]["code"]);
                    let expected = ErrorCode::ALL.iter().find(|c| c.as_str() == code).unwrap();
                    assert_eq!(status.as_u16(), expected.http_status(), "{body}");
                    return Err((code, text(&body["error"]["message"])));
                }
                let xdr = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    text(&body["transaction"]),
                )
                .unwrap();
                Ok(TransactionEnvelope::from_xdr(xdr, Limits::none()).unwrap())
            }
            Route::Wire(dev, enclave) => {
                let db = dev.state().join("signer.db");
                let materials = signers.iter().map(|k| stored_material(&db, k)).collect();
                let xdr = envelope.to_xdr(Limits::none()).unwrap();
                match enclave.sign(NETWORK, xdr, materials).await {
                    Ok(Response::Signed { transaction, .. }) => {
                        Ok(TransactionEnvelope::from_xdr(transaction, Limits::none()).unwrap())
                    }
                    Ok(other) => panic!("not a signature: {other:?}"),
                    Err(refused) => Err((refused.code.as_str().to_string(), refused.message)),
                }
            }
        }
    }

    async fn signed(
        &mut self,
        envelope: &TransactionEnvelope,
        signers: &[&str],
    ) -> TransactionEnvelope {
        self.sign(envelope, signers)
            .await
            .unwrap_or_else(|refusal| panic!("ordinary traffic refused: {refusal:?}"))
    }
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
    route: &mut Route<'_>,
    distribution: &str,
    channels: &[String],
    stranger: &str,
) {
    let (channel, fresh, retiring) = (&channels[0], &channels[7], &channels[6]);
    let payment = transaction(channel, 100, vec![op(Some(user()), pay(stranger))]);
    let signed_payment = route.signed(&payment, &[channel]).await;
    route
        .signed(&bump(distribution, signed_payment), &[distribution])
        .await;
    route
        .signed(
            &provisioning(distribution, fresh, 300),
            &[distribution, fresh],
        )
        .await;
    let retirement = transaction(
        distribution,
        100,
        vec![op(
            Some(account(retiring)),
            OperationBody::AccountMerge(account(distribution)),
        )],
    );
    route.signed(&retirement, &[distribution, retiring]).await;
}

/// Requests an honest host never sends, each refused by the enclave before it signs.
async fn what_only_a_host_could_send_is_refused(
    dev: &Dev,
    enclave: &mut RawEnclave,
    distribution: &str,
    channels: &[String],
) {
    let db = dev.state().join("signer.db");
    let material = |key: &str| stored_material(&db, key);
    let payment = transaction(&channels[1], 100, vec![op(Some(user()), pay(distribution))])
        .to_xdr(Limits::none())
        .unwrap();
    let refused = |answer| refusal(answer).0;

    let other_network = enclave
        .sign(
            "Public Global Stellar Network ; September 2015",
            payment.clone(),
            vec![material(&channels[1])],
        )
        .await;
    assert_eq!(refused(other_network), ErrorCode::WrongNetwork);

    let not_required = enclave
        .sign(NETWORK, payment.clone(), vec![material(&channels[2])])
        .await;
    assert_eq!(refused(not_required), ErrorCode::NotARequiredSigner);

    // Another key's ciphertexts under the name of the required signer: KMS's encryption
    // context (or the enclave's public-key check) refuses, nothing is signed.
    let mut relabelled = material(&channels[2]);
    relabelled.public_key.clone_from(&channels[1]);
    let swapped = refused(
        enclave
            .sign(NETWORK, payment.clone(), vec![relabelled])
            .await,
    );
    assert!(
        matches!(
            swapped,
            ErrorCode::KmsInvalidCiphertext | ErrorCode::PublicKeyMismatch
        ),
        "{swapped:?}"
    );

    // The record of the right key, under another KMS key (one in the host's own AWS
    // account, or an alias it could repoint): refused before any KMS call.
    let mut other_kms_key = material(&channels[1]);
    other_kms_key.kms_key_id = "arn:aws:kms:us-east-1:444455556666:key/attacker".into();
    let (code, message) = refusal(
        enclave
            .sign(NETWORK, payment.clone(), vec![other_kms_key])
            .await,
    );
    assert_eq!(code, ErrorCode::KmsKeyMismatch, "{message}");

    let twice = vec![material(&channels[1]); 2];
    let (code, message) = refusal(enclave.sign(NETWORK, payment.clone(), twice).await);
    assert_eq!(code, ErrorCode::BadRequest, "{message}");

    // Twenty signatures already on the envelope: one more would pass Stellar's limit.
    let mut crowded = TransactionEnvelope::from_xdr(&payment, Limits::none()).unwrap();
    if let TransactionEnvelope::Tx(v1) = &mut crowded {
        v1.signatures = vec![
            DecoratedSignature {
                hint: SignatureHint([0; 4]),
                signature: Signature(vec![0; 64].try_into().unwrap()),
            };
            20
        ]
        .try_into()
        .unwrap();
    }
    let crowded = crowded.to_xdr(Limits::none()).unwrap();
    let too_many = enclave
        .sign(NETWORK, crowded, vec![material(&channels[1])])
        .await;
    assert_eq!(refused(too_many), ErrorCode::TooManySignatures);

    let garbage = enclave
        .sign(
            NETWORK,
            payment[..payment.len() - 3].to_vec(),
            vec![material(&channels[1])],
        )
        .await;
    assert_eq!(refused(garbage), ErrorCode::MalformedTransaction);

    // Still answering, and still signing what is allowed, on the same connection.
    assert!(
        enclave
            .sign(NETWORK, payment, vec![material(&channels[1])])
            .await
            .is_ok()
    );
}

/// Every attempt is refused with its rule named, then ordinary traffic is signed, and
/// no seed reached any log.
async fn attacks_are_refused_and_ordinary_traffic_is_signed(
    extra: &[&str],
    straight_to_enclave: bool,
) {
    let dev = Dev::start(extra);
    let distribution = dev.keys("distribution").await.remove(0);
    let channels = dev.keys("channel").await;
    let stranger = format!("{}", stellar_strkey::ed25519::PublicKey([0x42; 32]));
    let mut route = if straight_to_enclave {
        Route::Wire(
            &dev,
            RawEnclave::connect(&dev.state().join("enclave.sock")).await,
        )
    } else {
        Route::Host(&dev)
    };
    for (what, envelope, signers, rule) in
        attempts(&distribution, &channels[0], &channels[7], &stranger)
    {
        let (code, message) = route.sign(&envelope, &signers).await.unwrap_err();
        assert_eq!(code, "policy_violation", "{what}: {message}");
        assert!(message.contains(rule), "{what}: {message}");
    }

    ordinary_traffic_is_signed(&mut route, &distribution, &channels, &stranger).await;
    if let Route::Wire(dev, enclave) = &mut route {
        what_only_a_host_could_send_is_refused(dev, enclave, &distribution, &channels).await;
    }
    drop(route);
    let seeds = dev.seeds();
    let logs = dev.stop();
    assert_no_secret_in(&logs, &seeds);
}

#[tokio::test]
async fn the_enclave_refuses_hostile_requests_on_its_own() {
    attacks_are_refused_and_ordinary_traffic_is_signed(&["--no-host-policy-precheck"], false).await;
}

#[tokio::test]
async fn the_host_precheck_gives_the_same_answers() {
    attacks_are_refused_and_ordinary_traffic_is_signed(&[], false).await;
}

/// The same attacks as frames on the enclave's own socket, with no host at all: the
/// enclave's checks are the boundary, whatever the host does or skips.
#[tokio::test]
async fn the_enclave_refuses_hostile_frames_with_no_host_in_between() {
    attacks_are_refused_and_ordinary_traffic_is_signed(&[], true).await;
}

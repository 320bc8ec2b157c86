//! The enclave's decision path, in-process: a real [`Dispatcher`] and attestor with a
//! fake NSM and a fake KMS behind the [`Kms`] seam. One test per security invariant of
//! docs/design.md §2 that this code enforces; each fails if its invariant breaks (the
//! fake KMS counts calls, so "refused before any KMS call" is asserted, not assumed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::stellar::envelope::{decode_envelope, network_id, signatures, transaction_hash};
use common::stellar::signing_policy::SigningPolicySettings;
use common::wire::messages::{AwsCredentials, KeyFormat, KeyMaterial, Request, Response};
use common::wire::{ErrorCode, WireError};
use ed25519_dalek::{Verifier, VerifyingKey};
use futures_util::future::BoxFuture;
use stellar_xdr::{
    AccountId, Limits, Memo, MuxedAccount, Operation, OperationBody, PaymentOp, Preconditions,
    PublicKey, SequenceNumber, TimeBounds, TimePoint, Transaction, TransactionEnvelope,
    TransactionExt, TransactionV1Envelope, Uint256, WriteXdr,
};

use crate::attestor::Attestor;
use crate::context::SigningContext;
use crate::dispatch::Dispatcher;
use crate::keys::{public_key_of, seal_seed};
use crate::kms::{GeneratedDataKey, Kms, KmsError, RecipientAnswer};
use crate::nsm::{Nsm, NsmError};

const NETWORK: &str = "Test SDF Network ; September 2015";
/// The enclave's measured KMS key.
const KEY_ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/test";
const DISTRIBUTION_SEED: [u8; 32] = [0xd1; 32];
const CHANNEL_SEED: [u8; 32] = [0xc1; 32];
const OTHER_SEED: [u8; 32] = [0x0f; 32];
const SECOND_CHANNEL_SEED: [u8; 32] = [0xc2; 32];

/// Stands in for the NSM: the "attestation document" is the recipient key itself, which
/// is all the fake KMS needs to encrypt to it.
struct FakeNsm;

impl Nsm for FakeNsm {
    fn attest(&self, public_key: &[u8]) -> Result<Vec<u8>, NsmError> {
        Ok(public_key.to_vec())
    }

    fn attest_for_caller(&self, user_data: &[u8], nonce: &[u8]) -> Result<Vec<u8>, NsmError> {
        Ok([b"caller:".as_slice(), user_data, nonce].concat())
    }

    fn random(&self) -> Result<Vec<u8>, NsmError> {
        let mut bytes = vec![0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).unwrap();
        Ok(bytes)
    }
}

/// What a stored ciphertext decrypts to, and under which encryption context.
struct Entry {
    context: Vec<(String, String)>,
    plaintext: Vec<u8>,
}

/// A KMS that keeps plaintexts by ciphertext, enforces the encryption context like KMS,
/// answers with a real CMS envelope for the document's key, and counts calls.
#[derive(Default)]
struct FakeKms {
    entries: Mutex<HashMap<Vec<u8>, Entry>>,
    calls: AtomicUsize,
    deny: std::sync::atomic::AtomicBool,
    credentials: Mutex<Option<AwsCredentials>>,
    /// The KeyId each call named.
    requested_key_ids: Mutex<Vec<String>>,
    /// The KeyId the answers name.
    answered_key_id: Mutex<AnsweredKeyId>,
    /// GenerateDataKey calls in flight now, and at most.
    generating: AtomicUsize,
    peak_generating: AtomicUsize,
    /// How long each Decrypt takes.
    latency: Mutex<std::time::Duration>,
}

/// What the fake KMS says about the key it used.
#[derive(Debug, Clone, Default)]
enum AnsweredKeyId {
    /// The requested key, as KMS does.
    #[default]
    Requested,
    /// Another key.
    Other(String),
    /// No KeyId at all.
    Absent,
}

impl FakeKms {
    /// A `kms-direct` ciphertext (context `pubkey` only).
    fn store(&self, ciphertext: &[u8], context_pubkey: &str, plaintext: &[u8]) {
        self.store_with(ciphertext, &[("pubkey", context_pubkey)], plaintext);
    }

    fn store_with(&self, ciphertext: &[u8], context: &[(&str, &str)], plaintext: &[u8]) {
        self.entries.lock().unwrap().insert(
            ciphertext.to_vec(),
            Entry {
                context: context
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect(),
                plaintext: plaintext.to_vec(),
            },
        );
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Kms for FakeKms {
    fn decrypt_for_recipient<'a>(
        &'a self,
        ciphertext_blob: &'a [u8],
        key_id: &'a str,
        encryption_context: &'a [(&'a str, &'a str)],
        attestation_document: &'a [u8],
    ) -> BoxFuture<'a, Result<RecipientAnswer, KmsError>> {
        Box::pin(async move {
            // Read before the call is counted: a test that changes the latency once it
            // sees a call counted changes the next call's, never that one's.
            let latency = *self.latency.lock().unwrap();
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.requested_key_ids
                .lock()
                .unwrap()
                .push(key_id.to_string());
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            if self.deny.load(Ordering::SeqCst) {
                return Err(KmsError::AccessDenied("PCR0 does not match".into()));
            }
            let entries = self.entries.lock().unwrap();
            let entry = entries
                .get(ciphertext_blob)
                .ok_or_else(|| KmsError::InvalidCiphertext("unknown ciphertext".into()))?;
            let same_context = encryption_context.len() == entry.context.len()
                && encryption_context
                    .iter()
                    .zip(&entry.context)
                    .all(|((k, v), (ek, ev))| k == ek && v == ev);
            if !same_context {
                return Err(KmsError::InvalidCiphertext("encryption context".into()));
            }
            let ciphertext_for_recipient =
                mock_kms::recipient::envelope(attestation_document, &entry.plaintext).map_err(
                    |e| KmsError::Other {
                        code: "Fake".into(),
                        message: e.to_string(),
                    },
                )?;
            let answered = self.answered_key_id.lock().unwrap().clone();
            Ok(RecipientAnswer {
                key_id: match answered {
                    AnsweredKeyId::Requested => Some(key_id.to_string()),
                    AnsweredKeyId::Other(other) => Some(other),
                    AnsweredKeyId::Absent => None,
                },
                ciphertext_for_recipient,
            })
        })
    }

    fn generate_data_key_for_recipient<'a>(
        &'a self,
        key_id: &'a str,
        encryption_context: &'a [(&'a str, &'a str)],
        attestation_document: &'a [u8],
    ) -> BoxFuture<'a, Result<GeneratedDataKey, KmsError>> {
        Box::pin(async move {
            let Some((_, public_key)) = encryption_context.iter().find(|(k, _)| *k == "pubkey")
            else {
                return Err(KmsError::InvalidCiphertext("encryption context".into()));
            };
            // In flight for a moment, as a real call is, so concurrency shows.
            let now = self.generating.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak_generating.fetch_max(now, Ordering::SeqCst);
            tokio::task::yield_now().await;
            self.generating.fetch_sub(1, Ordering::SeqCst);
            let mut data_key = [0u8; 32];
            aws_lc_rs::rand::fill(&mut data_key).unwrap();
            let ciphertext = format!("data key of {public_key}").into_bytes();
            self.store_with(&ciphertext, encryption_context, &data_key);
            // Decrypt of the new ciphertext then answers like KMS, counted and checked.
            let answer = self
                .decrypt_for_recipient(
                    &ciphertext,
                    key_id,
                    encryption_context,
                    attestation_document,
                )
                .await?;
            Ok(GeneratedDataKey {
                answer,
                ciphertext_blob: ciphertext,
            })
        })
    }

    fn set_credentials(&self, credentials: AwsCredentials) {
        *self.credentials.lock().unwrap() = Some(credentials);
    }
}

struct Enclave {
    dispatcher: Dispatcher,
    kms: Arc<FakeKms>,
}

/// A signing context over `kms`, with the default signing policy and no budget limit.
fn context(kms: Arc<dyn Kms>) -> SigningContext {
    context_with(kms, unlimited())
}

fn context_with(kms: Arc<dyn Kms>, limits: crate::budget::SpendingLimits) -> SigningContext {
    context_from(kms, Attestor::new(Arc::new(FakeNsm)).unwrap(), limits)
}

fn context_from(
    kms: Arc<dyn Kms>,
    attestor: Arc<Attestor>,
    limits: crate::budget::SpendingLimits,
) -> SigningContext {
    let policy = SigningPolicySettings::default()
        .signing_policy(raw(&DISTRIBUTION_SEED))
        .unwrap();
    SigningContext::new(
        NETWORK.into(),
        kms,
        KEY_ARN.parse().unwrap(),
        attestor,
        policy,
        limits,
    )
}

impl Enclave {
    /// A dispatcher signing with `context`, whose KMS is `kms`.
    fn over(kms: Arc<FakeKms>, context: SigningContext) -> Enclave {
        Enclave {
            dispatcher: Dispatcher::new(Some(context)),
            kms,
        }
    }
}

fn enclave() -> Enclave {
    let kms = Arc::new(FakeKms::default());
    Enclave::over(kms.clone(), context(kms))
}

/// Spending limits no test reaches.
fn unlimited() -> crate::budget::SpendingLimits {
    crate::budget::SpendingLimits::new(i64::MAX, u32::MAX, std::time::Duration::from_hours(1))
}

fn raw(seed: &[u8; 32]) -> [u8; 32] {
    stellar_strkey::ed25519::PublicKey::from_string(&public_key_of(seed))
        .unwrap()
        .0
}

fn account(seed: &[u8; 32]) -> MuxedAccount {
    MuxedAccount::Ed25519(Uint256(raw(seed)))
}

/// A `kms-direct` key whose ciphertext the fake KMS opens to `seed`.
fn kms_direct(kms: &FakeKms, public_key_seed: &[u8; 32], seed: &[u8; 32]) -> KeyMaterial {
    let public_key = public_key_of(public_key_seed);
    let ciphertext = format!("ciphertext of {public_key}").into_bytes();
    kms.store(&ciphertext, &public_key, seed);
    KeyMaterial {
        public_key,
        format: KeyFormat::KmsDirect,
        kms_key_id: KEY_ARN.into(),
        ciphertext,
        sealed_seed: None,
    }
}

/// A channel-sourced payment of another account's funds (that account is the operation
/// source), with a maxTime: what the channel rules admit.
fn channel_payment(now: u64) -> Vec<u8> {
    payment_by(account(&CHANNEL_SEED), now)
}

/// The same payment, sequenced and paid for by `channel`.
fn payment_by(channel: MuxedAccount, now: u64) -> Vec<u8> {
    let payment = Operation {
        source_account: Some(account(&OTHER_SEED)),
        body: OperationBody::Payment(PaymentOp {
            destination: account(&DISTRIBUTION_SEED),
            asset: stellar_xdr::Asset::Native,
            amount: 10,
        }),
    };
    envelope(channel, vec![payment], Some(now + 60))
}

fn envelope(source: MuxedAccount, operations: Vec<Operation>, max_time: Option<u64>) -> Vec<u8> {
    let tx = Transaction {
        source_account: source,
        fee: 200,
        seq_num: SequenceNumber(7),
        cond: match max_time {
            Some(max) => Preconditions::Time(TimeBounds {
                min_time: TimePoint(0),
                max_time: TimePoint(max),
            }),
            None => Preconditions::None,
        },
        memo: Memo::None,
        operations: operations.try_into().unwrap(),
        ext: TransactionExt::V0,
    };
    TransactionEnvelope::Tx(TransactionV1Envelope {
        tx,
        signatures: Default::default(),
    })
    .to_xdr(Limits::none())
    .unwrap()
}

/// The channel's ordinary payment, signed by `key`, expected to be refused.
async fn refused_payment(enclave: &Enclave, key: KeyMaterial) -> WireError {
    refused(sign(enclave, channel_payment(common::now_unix_secs()), vec![key]).await)
}

async fn sign(
    enclave: &Enclave,
    xdr: Vec<u8>,
    signers: Vec<KeyMaterial>,
) -> Result<Response, WireError> {
    enclave
        .dispatcher
        .handle(Request::Sign {
            network_passphrase: NETWORK.into(),
            transaction: xdr,
            signers,
        })
        .await
}

fn refused(result: Result<Response, WireError>) -> WireError {
    match result {
        Ok(answer) => panic!("expected a refusal, got {answer:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn invariant_2_the_hash_comes_from_the_enclaves_own_network() {
    let enclave = enclave();
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let xdr = channel_payment(common::now_unix_secs());
    let Response::Signed {
        transaction, hash, ..
    } = sign(&enclave, xdr.clone(), vec![channel.clone()])
        .await
        .unwrap()
    else {
        panic!("not a signed answer");
    };
    // Recomputed here from the XDR and the passphrase, independently of the answer.
    let expected = transaction_hash(&decode_envelope(&xdr).unwrap(), network_id(NETWORK)).unwrap();
    assert_eq!(hash, expected);
    let signed = decode_envelope(&transaction).unwrap();
    let signature = &signatures(&signed)[0];
    VerifyingKey::from_bytes(&raw(&CHANNEL_SEED))
        .unwrap()
        .verify(
            &expected,
            &ed25519_dalek::Signature::from_slice(signature.signature.as_slice()).unwrap(),
        )
        .unwrap();

    // A caller that names another network is refused before any KMS call.
    let calls = enclave.kms.calls();
    let other = enclave
        .dispatcher
        .handle(Request::Sign {
            network_passphrase: "Public Global Stellar Network ; September 2015".into(),
            transaction: xdr,
            signers: vec![channel],
        })
        .await;
    assert_eq!(refused(other).code, ErrorCode::WrongNetwork);
    assert_eq!(enclave.kms.calls(), calls);
}

#[tokio::test]
async fn invariant_3_only_a_required_signer_and_before_any_kms_call() {
    let enclave = enclave();
    // The distribution key is not a signer of a channel's payment of OTHER's funds.
    let distribution = kms_direct(&enclave.kms, &DISTRIBUTION_SEED, &DISTRIBUTION_SEED);
    let xdr = channel_payment(common::now_unix_secs());
    let refusal = refused(sign(&enclave, xdr, vec![distribution]).await);
    assert_eq!(refusal.code, ErrorCode::NotARequiredSigner, "{refusal:?}");
    assert_eq!(enclave.kms.calls(), 0, "a refused signer costs no KMS call");
}

#[tokio::test]
async fn invariant_4_a_decrypted_key_must_be_the_requested_key() {
    let enclave = enclave();
    // The host pairs the channel's public key with a ciphertext of another seed.
    let swapped = kms_direct(&enclave.kms, &CHANNEL_SEED, &OTHER_SEED);
    let xdr = channel_payment(common::now_unix_secs());
    let refusal = refused(sign(&enclave, xdr, vec![swapped]).await);
    assert_eq!(refusal.code, ErrorCode::PublicKeyMismatch, "{refusal:?}");
    assert_eq!(enclave.kms.calls(), 1);
}

#[tokio::test]
async fn invariant_4_an_envelope_seal_opens_only_for_its_own_public_key() {
    let enclave = enclave();
    let channel = public_key_of(&CHANNEL_SEED);
    let data_key = [0x44u8; 32];
    // Sealed for OTHER's public key, presented as the channel's.
    let sealed = seal_seed(
        &data_key,
        &CHANNEL_SEED,
        &public_key_of(&OTHER_SEED),
        [3; 12],
    );
    enclave.kms.store_with(
        b"data key",
        &crate::keys::kms_context(KeyFormat::Envelope, &channel),
        &data_key,
    );
    let key = KeyMaterial {
        public_key: channel,
        format: KeyFormat::Envelope,
        kms_key_id: KEY_ARN.into(),
        ciphertext: b"data key".to_vec(),
        sealed_seed: Some(sealed),
    };
    let refusal = refused_payment(&enclave, key).await;
    assert_eq!(refusal.code, ErrorCode::UnusableKey, "{refusal:?}");
}

#[tokio::test]
async fn invariant_8_the_signing_policy_refuses_before_any_kms_call() {
    let enclave = enclave();
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    // No maxTime: the channel's lock could never end.
    let payment = Operation {
        source_account: Some(account(&OTHER_SEED)),
        body: OperationBody::Payment(PaymentOp {
            destination: account(&DISTRIBUTION_SEED),
            asset: stellar_xdr::Asset::Native,
            amount: 10,
        }),
    };
    let xdr = envelope(account(&CHANNEL_SEED), vec![payment], None);
    let refusal = refused(sign(&enclave, xdr, vec![channel]).await);
    assert_eq!(refusal.code, ErrorCode::PolicyViolation);
    assert!(refusal.message.contains("max_time_required"), "{refusal:?}");
    assert_eq!(enclave.kms.calls(), 0);
}

#[tokio::test]
async fn invariant_1_no_seed_in_any_answer_or_refusal() {
    let enclave = enclave();
    let good = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let swapped = kms_direct(&enclave.kms, &DISTRIBUTION_SEED, &OTHER_SEED);
    let now = common::now_unix_secs();
    let answers = [
        sign(&enclave, channel_payment(now), vec![good]).await,
        // The distribution key signing its own empty transaction passes the policy;
        // its ciphertext opens to OTHER's seed, which must not leak in the refusal.
        sign(
            &enclave,
            envelope(account(&DISTRIBUTION_SEED), vec![], Some(now + 10)),
            vec![swapped],
        )
        .await,
    ];
    assert!(answers[0].is_ok(), "{:?}", answers[0]);
    assert_eq!(
        answers[1].as_ref().unwrap_err().code,
        ErrorCode::PublicKeyMismatch,
        "the wrong seed was decrypted and refused"
    );
    assert_eq!(enclave.kms.calls(), 2);
    for answer in &answers {
        let bytes = postcard::to_allocvec(answer).unwrap();
        let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
        for seed in [CHANNEL_SEED, OTHER_SEED, DISTRIBUTION_SEED] {
            assert!(
                !bytes.windows(32).any(|w| w == seed),
                "a seed crossed the boundary in {answer:?}"
            );
            let strkey = format!(
                "{}",
                stellar_strkey::ed25519::PrivateKey(seed).as_unredacted()
            );
            for form in [strkey, common::hex(&seed), format!("{seed:?}")] {
                assert!(
                    !text.contains(&form.to_ascii_lowercase()),
                    "{form} in {answer:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn invariant_3_a_key_the_policy_would_admit_is_still_not_a_required_signer() {
    let enclave = enclave();
    // Another channel: not the source, not an operation source, so the channel rules
    // have nothing against it; only the required-signer check stands in the way.
    let second = kms_direct(&enclave.kms, &SECOND_CHANNEL_SEED, &SECOND_CHANNEL_SEED);
    let refusal = refused_payment(&enclave, second).await;
    assert_eq!(refusal.code, ErrorCode::NotARequiredSigner, "{refusal:?}");
    assert_eq!(enclave.kms.calls(), 0);
}

#[tokio::test]
async fn more_than_twenty_signers_or_none_are_refused_before_any_kms_call() {
    let enclave = enclave();
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let xdr = channel_payment(common::now_unix_secs());
    let many = vec![channel; 21];
    assert_eq!(
        refused(sign(&enclave, xdr.clone(), many).await).code,
        ErrorCode::BadRequest
    );
    assert_eq!(
        refused(sign(&enclave, xdr, vec![]).await).code,
        ErrorCode::BadRequest
    );
    assert_eq!(enclave.kms.calls(), 0);
}

/// An enclave with the opt-in key cache on (a minute, `max_uses` signatures per entry).
fn with_key_cache(kms: FakeKms, max_uses: u32) -> Enclave {
    with_watched_key_cache(kms, max_uses).0
}

/// [`with_key_cache`], and that cache, to watch.
fn with_watched_key_cache(kms: FakeKms, max_uses: u32) -> (Enclave, Arc<crate::cache::KeyCache>) {
    with_watched_key_cache_for(kms, std::time::Duration::from_mins(1), max_uses)
}

/// [`with_watched_key_cache`] whose entries expire after `ttl`.
fn with_watched_key_cache_for(
    kms: FakeKms,
    ttl: std::time::Duration,
    max_uses: u32,
) -> (Enclave, Arc<crate::cache::KeyCache>) {
    let kms = Arc::new(kms);
    let cache = Arc::new(crate::cache::KeyCache::new(ttl, max_uses));
    let mut context = context(kms.clone());
    context.cache = Some(cache.clone());
    (Enclave::over(kms, context), cache)
}

#[tokio::test]
async fn the_opt_in_cache_saves_kms_calls_and_still_signs_correctly() {
    let enclave = with_key_cache(FakeKms::default(), 10);
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    for _ in 0..3 {
        let xdr = channel_payment(common::now_unix_secs());
        let Response::Signed {
            hash, signatures, ..
        } = sign(&enclave, xdr, vec![channel.clone()]).await.unwrap()
        else {
            panic!("not a signed answer");
        };
        VerifyingKey::from_bytes(&raw(&CHANNEL_SEED))
            .unwrap()
            .verify(
                &hash,
                &ed25519_dalek::Signature::from_slice(&signatures[0].signature).unwrap(),
            )
            .unwrap();
    }
    assert_eq!(
        enclave.kms.calls(),
        1,
        "one decryption served three signatures"
    );
    // A key check (the import check, the readiness canary) always asks KMS afresh.
    for expected_calls in [2, 3] {
        let checked = enclave
            .dispatcher
            .handle(Request::VerifyKey {
                key: channel.clone(),
            })
            .await;
        assert!(
            matches!(checked, Ok(Response::KeyVerified { .. })),
            "{checked:?}"
        );
        assert_eq!(enclave.kms.calls(), expected_calls);
    }
    // A swapped ciphertext misses the cache and is refused after its own decryption.
    let swapped = KeyMaterial {
        ciphertext: kms_direct(&enclave.kms, &OTHER_SEED, &OTHER_SEED).ciphertext,
        ..channel
    };
    enclave
        .kms
        .store(&swapped.ciphertext, &swapped.public_key, &OTHER_SEED);
    let refusal = refused_payment(&enclave, swapped).await;
    assert_eq!(refusal.code, ErrorCode::PublicKeyMismatch);
    assert_eq!(enclave.kms.calls(), 4);
}

/// `count` payments by `channel`, signed concurrently.
async fn channel_payments_at_once(
    enclave: &Enclave,
    channel: &KeyMaterial,
    count: usize,
) -> Vec<Result<Response, WireError>> {
    let payments = (0..count).map(|_| channel_payment_by(enclave, channel));
    futures_util::future::join_all(payments).await
}

/// 16 concurrent payments by the channel key on an enclave whose key cache serves
/// `max_uses` signatures per entry and whose KMS answers after 50 ms; every answer must
/// carry a valid signature by the channel key.
async fn sixteen_cached_payments_at_once(max_uses: u32) -> (Enclave, KeyMaterial) {
    let kms = FakeKms::default();
    *kms.latency.lock().unwrap() = std::time::Duration::from_millis(50);
    let enclave = with_key_cache(kms, max_uses);
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let channel_key = VerifyingKey::from_bytes(&raw(&CHANNEL_SEED)).unwrap();
    for signed in channel_payments_at_once(&enclave, &channel, 16).await {
        let Ok(Response::Signed {
            hash, signatures, ..
        }) = signed
        else {
            panic!("not a signed answer: {signed:?}");
        };
        let signature = ed25519_dalek::Signature::from_slice(&signatures[0].signature).unwrap();
        channel_key.verify(&hash, &signature).unwrap();
    }
    (enclave, channel)
}

/// Concurrent signatures with a key missing from the cache make one KMS call between
/// them, not one each (a busy key running out would otherwise send every request in
/// flight to KMS at once); when that call fails, the waiting callers get its error
/// without calling KMS themselves (a throttling KMS is not hit by all of them at once),
/// and none is left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_missing_the_cache_together_share_one_kms_call() {
    let (enclave, channel) = sixteen_cached_payments_at_once(100).await;
    assert_eq!(enclave.kms.calls(), 1, "16 callers, one decryption");

    // The same key under another ciphertext (another cache entry), with KMS refusing.
    let rewrapped = KeyMaterial {
        ciphertext: b"another ciphertext of the channel key".to_vec(),
        ..channel
    };
    enclave
        .kms
        .store(&rewrapped.ciphertext, &rewrapped.public_key, &CHANNEL_SEED);
    enclave.kms.deny.store(true, Ordering::SeqCst);
    let payments = (0..8).map(|_| refused_payment(&enclave, rewrapped.clone()));
    let refusals = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        futures_util::future::join_all(payments),
    )
    .await
    .expect("a caller was left waiting after the decryption it waited for failed");
    for refusal in refusals {
        assert_eq!(refusal.code, ErrorCode::KmsAccessDenied);
    }
    assert_eq!(
        enclave.kms.calls(),
        1 + 1,
        "8 callers, one failed decryption"
    );
}

/// Two records of the same key under different ciphertexts (say before and after a
/// rewrap) are separate cache entries and separate turns: while KMS refuses one, the
/// callers of the other, waiting at the same moment, still sign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_record_never_answers_for_another_record_of_the_same_key() {
    let kms = FakeKms::default();
    *kms.latency.lock().unwrap() = std::time::Duration::from_millis(50);
    let enclave = with_key_cache(kms, 100);
    let known = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let unknown = KeyMaterial {
        ciphertext: b"a ciphertext KMS does not know".to_vec(),
        ..known.clone()
    };
    // The unknown record first, so its turn is taken before any caller of the known one.
    let payments = (0..16).map(|i| {
        let record = if i % 2 == 0 { &unknown } else { &known };
        sign(
            &enclave,
            channel_payment(common::now_unix_secs()),
            vec![record.clone()],
        )
    });
    let answers = futures_util::future::join_all(payments).await;
    for (i, answer) in answers.into_iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(refused(answer).code, ErrorCode::KmsInvalidCiphertext);
        } else {
            assert!(matches!(answer, Ok(Response::Signed { .. })), "{answer:?}");
        }
    }
    assert_eq!(enclave.kms.calls(), 2, "one decryption per record");
}

/// When the caller decrypting a missing key is cancelled (a panic or shutdown in
/// production, where a started request is never dropped), the callers waiting for it
/// do not all go to KMS at once: one takes the turn and the others sign from what it
/// cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_decrypting_caller_is_cancelled_one_waiter_takes_its_turn() {
    let kms = FakeKms::default();
    *kms.latency.lock().unwrap() = std::time::Duration::from_millis(300);
    let enclave = with_key_cache(kms, 100);
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let cancelled = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        sign(
            &enclave,
            channel_payment(common::now_unix_secs()),
            vec![channel.clone()],
        ),
    );
    let waiting = async {
        // Start once the first caller holds the turn.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        channel_payments_at_once(&enclave, &channel, 8).await
    };
    let (cancelled, answers) = tokio::join!(cancelled, waiting);
    assert!(cancelled.is_err(), "the first caller was not cancelled");
    for answer in answers {
        assert!(matches!(answer, Ok(Response::Signed { .. })), "{answer:?}");
    }
    assert_eq!(
        enclave.kms.calls(),
        2,
        "the cancelled decryption and one more for the 8 waiting callers"
    );
}

/// More callers in flight than an entry's uses: each decryption serves at most
/// `max_uses` signatures and the callers it cannot serve wait for the next one, so 16
/// callers of a 4-use key make 4 KMS calls that serve them (not one for the first 4 and
/// one each for the other 12), and every one of them gets a valid signature by the
/// channel key. The last entry's refresh ahead may add one decryption whose spare
/// nobody used (a refresh starts only for an entry that needs a successor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_beyond_an_entrys_uses_wait_for_the_next_decryption() {
    let (enclave, _) = sixteen_cached_payments_at_once(4).await;
    // Let a refresh ahead still in flight (50 ms) land before counting.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let calls = enclave.kms.calls();
    assert!(
        (4..=5).contains(&calls),
        "16 callers, 4 uses per decryption, at most one ahead: {calls} calls"
    );
}

/// A busy key is decrypted again in the background when half its entry's uses are
/// spent, so its next entry is ready when the current one runs out: with KMS refusing
/// from then on, every use of both entries still signs, and only the request after
/// them needs KMS (and gets its refusal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_key_is_refreshed_ahead_so_its_next_entry_needs_no_kms_call() {
    let (enclave, cache) = with_watched_key_cache(FakeKms::default(), 4);
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let pay = || channel_payment_by(&enclave, &channel);
    // The first decrypts (3 uses left), the second leaves 2 and starts the refresh.
    for _ in 0..2 {
        assert!(matches!(pay().await, Ok(Response::Signed { .. })));
    }
    until(
        || cache.spare_count() == 1,
        "the refresh ahead cached a spare",
    )
    .await;
    assert_eq!(enclave.kms.calls(), 2);
    enclave.kms.deny.store(true, Ordering::SeqCst);
    // Two uses left in the first entry, four in the refreshed one.
    for use_ in 0..6 {
        let signed = pay().await;
        assert!(
            matches!(signed, Ok(Response::Signed { .. })),
            "use {use_}: {signed:?}"
        );
    }
    let refused = pay().await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::KmsAccessDenied);
}

/// A key in use through the last eighth of its entry's `ttl` is refreshed ahead, in place
/// of the entry at once, so the request after that entry would have expired signs
/// without a KMS call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_use_is_refreshed_ahead_of_its_expiry() {
    let ttl = std::time::Duration::from_secs(8);
    let margin = std::time::Duration::from_millis(100);
    let (enclave, cache) = with_watched_key_cache_for(FakeKms::default(), ttl, 1000);
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let pay = || channel_payment_by(&enclave, &channel);
    assert!(matches!(pay().await, Ok(Response::Signed { .. })));
    // The entry was cached before this, so it expires before `first + ttl`.
    let first = std::time::Instant::now();
    assert!(matches!(pay().await, Ok(Response::Signed { .. })));
    assert_eq!(enclave.kms.calls(), 1, "not yet in the last eighth");
    // Into the last eighth, with most of it (about 900 ms) left before the expiry.
    tokio::time::sleep_until((first + ttl * 7 / 8 + margin).into()).await;
    assert!(matches!(pay().await, Ok(Response::Signed { .. })));
    refresh_finished(&enclave, &cache).await;
    assert_eq!(
        cache.spare_count(),
        0,
        "replaced at once, not kept as a spare"
    );
    enclave.kms.deny.store(true, Ordering::SeqCst);
    tokio::time::sleep_until((first + ttl + margin).into()).await;
    let signed = pay().await;
    assert!(
        matches!(signed, Ok(Response::Signed { .. })),
        "past the first entry's expiry: {signed:?}"
    );
    assert_eq!(enclave.kms.calls(), 2, "signed from the refreshed entry");
}

/// A refresh ahead whose decryption is not the record's key caches nothing: the entry in
/// use serves its last uses, and the request after them is refused with the mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_decrypts_another_key_caches_nothing() {
    let (enclave, cache) = with_watched_key_cache(FakeKms::default(), 4);
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let pay = || channel_payment_by(&enclave, &channel);
    assert!(matches!(pay().await, Ok(Response::Signed { .. })));
    // From now on KMS answers the channel's ciphertext with another seed.
    enclave
        .kms
        .store(&channel.ciphertext, &channel.public_key, &OTHER_SEED);
    assert!(matches!(pay().await, Ok(Response::Signed { .. })));
    refresh_finished(&enclave, &cache).await;
    for _ in 0..2 {
        assert!(matches!(pay().await, Ok(Response::Signed { .. })));
    }
    assert_eq!(cache.spare_count(), 0);
    assert_eq!(pay().await.unwrap_err().code, ErrorCode::PublicKeyMismatch);
}

/// A caller that gave up waiting for a refresh ahead and decrypted on its own may put
/// its entry after the key's next entry has already been refreshed into a spare: the
/// spare goes, so once KMS stops answering the key signs only what is left of that
/// caller's entry, within the documented `max_uses/2 + max_uses`, not that entry and a
/// whole spare besides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_decrypted_alone_during_a_refresh_keeps_the_per_key_bound() {
    let max_uses = 4;
    let kms = Arc::new(FakeKms::default());
    let cache = Arc::new(
        crate::cache::KeyCache::new(std::time::Duration::from_mins(1), max_uses)
            .waiting_at_most(std::time::Duration::from_millis(100)),
    );
    let mut context = context(kms.clone());
    context.cache = Some(cache.clone());
    let enclave = Enclave::over(kms, context);
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let pay = || channel_payment_by(&enclave, &channel);
    let signs = |answer: Result<Response, WireError>| {
        assert!(matches!(answer, Ok(Response::Signed { .. })), "{answer:?}");
    };
    let latency = |ms| *enclave.kms.latency.lock().unwrap() = std::time::Duration::from_millis(ms);
    signs(pay().await);
    // The second signature leaves half the uses and starts a refresh taking 600 ms.
    latency(600);
    signs(pay().await);
    until(|| enclave.kms.calls() == 2, "the first refresh called KMS").await;
    latency(3_000);
    for _ in 0..2 {
        signs(pay().await);
    }
    // The entry is used up: the next caller waits 100 ms for the refresh's turn, then
    // decrypts alone, for 3 s.
    let alone = pay();
    let meanwhile = async {
        until(|| enclave.kms.calls() == 3, "the lone caller called KMS").await;
        latency(0);
        // The refresh lands in place of the used-up entry; two more signatures spend
        // half of it and the next refresh lands as its spare.
        until(|| cache.turns_held() == 0, "the first refresh finished").await;
        for _ in 0..2 {
            signs(pay().await);
        }
        until(
            || cache.spare_count() == 1,
            "the second refresh left a spare",
        )
        .await;
        enclave.kms.calls()
    };
    let (alone, calls_before_it_landed) = tokio::join!(alone, meanwhile);
    signs(alone);
    assert_eq!(
        (calls_before_it_landed, enclave.kms.calls()),
        (4, 4),
        "the lone caller's decryption landed after the second refresh"
    );
    assert_eq!(
        cache.spare_count(),
        0,
        "the lone caller's entry dropped the spare"
    );
    enclave.kms.deny.store(true, Ordering::SeqCst);
    let mut signed_after_denial = 0;
    while pay().await.is_ok() {
        signed_after_denial += 1;
        assert!(signed_after_denial <= 2 * max_uses, "unbounded");
    }
    assert_eq!(
        signed_after_denial,
        max_uses - 1,
        "the rest of the lone caller's entry only (bound {})",
        max_uses / 2 + max_uses
    );
}

/// One payment by `channel`, signed by `enclave`.
async fn channel_payment_by(
    enclave: &Enclave,
    channel: &KeyMaterial,
) -> Result<Response, WireError> {
    let xdr = channel_payment(common::now_unix_secs());
    sign(enclave, xdr, vec![channel.clone()]).await
}

/// Waits until a refresh ahead has made the second KMS call and finished with it.
async fn refresh_finished(enclave: &Enclave, cache: &crate::cache::KeyCache) {
    until(|| enclave.kms.calls() == 2, "the refresh ahead called KMS").await;
    until(|| cache.turns_held() == 0, "the refresh ahead finished").await;
}

/// Waits (up to 5 s) until background work makes `done` true.
async fn until(done: impl Fn() -> bool, what: &str) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("not within 5 s: {what}");
}

/// A caller waits for another caller's decryption only so long in all, then decrypts on
/// its own: a slow KMS holds a waiter for its budget and its own call, no longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_stops_waiting_after_its_budget_and_decrypts_alone() {
    let kms = Arc::new(FakeKms::default());
    *kms.latency.lock().unwrap() = std::time::Duration::from_millis(600);
    let mut context = context(kms.clone());
    context.cache = Some(Arc::new(
        crate::cache::KeyCache::new(std::time::Duration::from_mins(1), 100)
            .waiting_at_most(std::time::Duration::from_millis(100)),
    ));
    let enclave = Enclave::over(kms, context);
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    for signed in channel_payments_at_once(&enclave, &channel, 2).await {
        assert!(matches!(signed, Ok(Response::Signed { .. })), "{signed:?}");
    }
    assert_eq!(
        enclave.kms.calls(),
        2,
        "the second caller waited out the first one's 600 ms decryption"
    );
}

/// With every KMS slot taken by calls to a slow KMS, a further signature waits
/// [`crate::context::KMS_SLOT_WAIT`] for a slot, no longer, and is answered
/// `enclave_busy` without a KMS call; the calls holding the slots still finish and sign.
#[tokio::test(start_paused = true)]
async fn a_signature_waits_for_a_kms_slot_only_so_long() {
    use crate::context::{KMS_SLOT_WAIT, MAX_CONCURRENT_KMS_CALLS};
    let enclave = enclave();
    *enclave.kms.latency.lock().unwrap() = KMS_SLOT_WAIT * 3;
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let now = common::now_unix_secs();
    let holding = futures_util::future::join_all(
        (0..MAX_CONCURRENT_KMS_CALLS)
            .map(|_| sign(&enclave, channel_payment(now), vec![channel.clone()])),
    );
    let late = async {
        // After the others have taken every slot.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        let started = tokio::time::Instant::now();
        let answer = sign(&enclave, channel_payment(now), vec![channel.clone()]).await;
        (answer, started.elapsed())
    };
    let (held, (late, waited)) = tokio::join!(holding, late);
    assert_eq!(refused(late).code, ErrorCode::EnclaveBusy);
    assert!(
        waited >= KMS_SLOT_WAIT && waited < KMS_SLOT_WAIT * 2,
        "waited {waited:?} for a slot"
    );
    assert!(
        held.iter()
            .all(|signed| matches!(signed, Ok(Response::Signed { .. })))
    );
    assert_eq!(enclave.kms.calls(), MAX_CONCURRENT_KMS_CALLS);
}

#[tokio::test]
async fn a_kms_denial_is_kms_access_denied_and_signs_nothing() {
    let enclave = enclave();
    enclave.kms.deny.store(true, Ordering::SeqCst);
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let refusal = refused_payment(&enclave, channel).await;
    assert_eq!(refusal.code, ErrorCode::KmsAccessDenied);
}

#[tokio::test]
async fn every_kms_call_names_the_measured_key_and_a_record_under_another_is_refused_first() {
    let enclave = enclave();
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let signed = sign(
        &enclave,
        channel_payment(common::now_unix_secs()),
        vec![channel.clone()],
    )
    .await;
    assert!(matches!(signed, Ok(Response::Signed { .. })), "{signed:?}");
    assert_eq!(*enclave.kms.requested_key_ids.lock().unwrap(), [KEY_ARN]);

    // A host that relabels a record (an alias, its own account's key) gets no KMS call.
    for other in [
        "alias/signer",
        "arn:aws:kms:us-east-1:444455556666:key/test",
        "",
    ] {
        let relabelled = KeyMaterial {
            kms_key_id: other.into(),
            ..channel.clone()
        };
        let before = enclave.kms.calls();
        let refusal = refused_payment(&enclave, relabelled).await;
        assert_eq!(
            refusal.code,
            ErrorCode::KmsKeyMismatch,
            "{other}: {refusal:?}"
        );
        assert!(refusal.message.contains(KEY_ARN), "{refusal:?}");
        assert_eq!(enclave.kms.calls(), before, "{other}: KMS was called");
    }
}

#[tokio::test]
async fn an_answer_about_another_kms_key_is_never_opened() {
    let enclave = enclave();
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    for answered in [
        AnsweredKeyId::Other("arn:aws:kms:us-east-1:444455556666:key/attacker".into()),
        AnsweredKeyId::Absent,
    ] {
        *enclave.kms.answered_key_id.lock().unwrap() = answered.clone();
        let refusal = refused_payment(&enclave, channel.clone()).await;
        assert_eq!(
            refusal.code,
            ErrorCode::KmsKeyMismatch,
            "{answered:?}: {refusal:?}"
        );
        assert!(refusal.message.contains(KEY_ARN), "{refusal:?}");
    }
}

#[tokio::test]
async fn an_answer_for_another_recipient_key_is_not_opened() {
    /// A KMS (or a host in the middle) answering with an envelope for a key that is not
    /// the enclave's current recipient key.
    struct Elsewhere;
    impl Kms for Elsewhere {
        fn decrypt_for_recipient<'a>(
            &'a self,
            _: &'a [u8],
            key_id: &'a str,
            _: &'a [(&'a str, &'a str)],
            _: &'a [u8],
        ) -> BoxFuture<'a, Result<RecipientAnswer, KmsError>> {
            Box::pin(async move {
                let other = crate::kms::recipient::RecipientKey::generate().unwrap();
                Ok(RecipientAnswer {
                    key_id: Some(key_id.to_string()),
                    ciphertext_for_recipient: mock_kms::recipient::envelope(
                        other.public_key_der(),
                        &CHANNEL_SEED,
                    )
                    .unwrap(),
                })
            })
        }
        fn generate_data_key_for_recipient<'a>(
            &'a self,
            _: &'a str,
            _: &'a [(&'a str, &'a str)],
            _: &'a [u8],
        ) -> BoxFuture<'a, Result<GeneratedDataKey, KmsError>> {
            Box::pin(async { Err(KmsError::Unavailable("not used here".into())) })
        }
        fn set_credentials(&self, _: AwsCredentials) {}
    }
    let dispatcher = Dispatcher::new(Some(context(Arc::new(Elsewhere))));
    let key = kms_direct(&FakeKms::default(), &CHANNEL_SEED, &CHANNEL_SEED);
    let refusal = dispatcher
        .handle(Request::Sign {
            network_passphrase: NETWORK.into(),
            transaction: channel_payment(common::now_unix_secs()),
            signers: vec![key],
        })
        .await
        .unwrap_err();
    assert_eq!(refusal.code, ErrorCode::KmsUnavailable, "{refusal:?}");
    assert!(refusal.message.contains("cannot open"), "{refusal:?}");
}

#[tokio::test]
async fn soroban_authorization_only_for_the_entrys_own_account() {
    use stellar_xdr::{
        ContractId, Hash, InvokeContractArgs, ScAddress, ScVal, SorobanAddressCredentials,
        SorobanAuthorizationEntry, SorobanAuthorizedFunction, SorobanAuthorizedInvocation,
        SorobanCredentials,
    };
    let enclave = enclave();
    let entry = SorobanAuthorizationEntry {
        credentials: SorobanCredentials::Address(SorobanAddressCredentials {
            address: ScAddress::Account(AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(raw(
                &OTHER_SEED,
            ))))),
            nonce: 1,
            signature_expiration_ledger: 0,
            signature: ScVal::Void,
        }),
        root_invocation: SorobanAuthorizedInvocation {
            function: SorobanAuthorizedFunction::ContractFn(InvokeContractArgs {
                contract_address: ScAddress::Contract(ContractId(Hash([0x70; 32]))),
                function_name: "transfer".try_into().unwrap(),
                args: Default::default(),
            }),
            sub_invocations: Default::default(),
        },
    };
    let distribution = kms_direct(&enclave.kms, &DISTRIBUTION_SEED, &DISTRIBUTION_SEED);
    let refusal = enclave
        .dispatcher
        .handle(Request::AuthorizeSoroban {
            network_passphrase: NETWORK.into(),
            entry: entry.to_xdr(Limits::none()).unwrap(),
            signature_expiration_ledger: 100,
            signer: distribution,
        })
        .await
        .unwrap_err();
    assert_eq!(refusal.code, ErrorCode::NotARequiredSigner, "{refusal:?}");
    // A channel authorizing for itself: the signing policy refuses (channel_soroban_auth).
    let mut own = entry.clone();
    if let SorobanCredentials::Address(credentials) = &mut own.credentials {
        credentials.address = ScAddress::Account(AccountId(PublicKey::PublicKeyTypeEd25519(
            Uint256(raw(&CHANNEL_SEED)),
        )));
    }
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let authorize = |entry: &SorobanAuthorizationEntry, network: &str, signer: &KeyMaterial| {
        Request::AuthorizeSoroban {
            network_passphrase: network.into(),
            entry: entry.to_xdr(Limits::none()).unwrap(),
            signature_expiration_ledger: 100,
            signer: signer.clone(),
        }
    };
    let refusal = enclave
        .dispatcher
        .handle(authorize(&own, NETWORK, &channel))
        .await
        .unwrap_err();
    assert_eq!(refusal.code, ErrorCode::PolicyViolation, "{refusal:?}");
    // Another network, for an entry that would otherwise be signed.
    let refusal = enclave
        .dispatcher
        .handle(authorize(
            &own,
            "Public Global Stellar Network ; September 2015",
            &channel,
        ))
        .await
        .unwrap_err();
    assert_eq!(refusal.code, ErrorCode::WrongNetwork, "{refusal:?}");
    assert_eq!(enclave.kms.calls(), 0);
}

#[tokio::test]
async fn credentials_reach_the_kms_client() {
    let enclave = enclave();
    let answer = enclave
        .dispatcher
        .handle(Request::SetCredentials(AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
            session_token: None,
            expires_unix: None,
        }))
        .await
        .unwrap();
    assert_eq!(answer, Response::CredentialsStored);
    let stored = enclave.kms.credentials.lock().unwrap().clone().unwrap();
    assert_eq!(stored.access_key_id, "AKIDEXAMPLE");
}

#[tokio::test]
async fn without_a_signing_context_only_pings_are_answered() {
    let dispatcher = Dispatcher::new(None);
    assert!(matches!(
        dispatcher.handle(Request::Ping { delay_ms: 0 }).await,
        Ok(Response::Pong { .. })
    ));
    let refusal = dispatcher
        .handle(Request::Sign {
            network_passphrase: NETWORK.into(),
            transaction: vec![],
            signers: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(refusal.code, ErrorCode::KmsUnavailable);
}

/// A fee-bump paid by the distribution account around `inner`, as XDR.
fn distribution_bump(inner: &stellar_xdr::TransactionV1Envelope, fee: i64) -> Vec<u8> {
    use stellar_xdr::{
        FeeBumpTransaction, FeeBumpTransactionEnvelope, FeeBumpTransactionExt,
        FeeBumpTransactionInnerTx,
    };
    TransactionEnvelope::TxFeeBump(FeeBumpTransactionEnvelope {
        tx: FeeBumpTransaction {
            fee_source: account(&DISTRIBUTION_SEED),
            fee,
            inner_tx: FeeBumpTransactionInnerTx::Tx(inner.clone()),
            ext: FeeBumpTransactionExt::V0,
        },
        signatures: Default::default(),
    })
    .to_xdr(Limits::none())
    .unwrap()
}

/// The channel's payment, signed through the enclave, as the inner transaction of a bump.
async fn signed_channel_payment(
    enclave: &Enclave,
    channel: KeyMaterial,
) -> stellar_xdr::TransactionV1Envelope {
    let Response::Signed { transaction, .. } = sign(
        enclave,
        channel_payment(common::now_unix_secs()),
        vec![channel],
    )
    .await
    .unwrap() else {
        panic!("not signed")
    };
    let TransactionEnvelope::Tx(inner) = decode_envelope(&transaction).unwrap() else {
        panic!("v1")
    };
    inner
}

fn rule_of(refusal: &WireError) -> &str {
    refusal
        .message
        .split_once("signing policy rule ")
        .map_or("", |(_, rest)| rest.split(':').next().unwrap_or(""))
}

/// The hostile host's attempts from the "hostile host" issue, straight to the
/// dispatcher: each refused with its rule named and before any KMS call.
#[tokio::test]
async fn hostile_host_requests_are_refused_by_rule_before_any_kms_call() {
    use stellar_xdr::{
        AccountId as Xid, BeginSponsoringFutureReservesOp, CreateAccountOp, DecoratedSignature,
        PublicKey as Xpk,
    };
    let enclave = enclave();
    let now = common::now_unix_secs();
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let distribution = kms_direct(&enclave.kms, &DISTRIBUTION_SEED, &DISTRIBUTION_SEED);
    // 1. A channel paying with its own funds (empty operation source).
    let drain = envelope(
        account(&CHANNEL_SEED),
        vec![Operation {
            source_account: None,
            body: OperationBody::Payment(PaymentOp {
                destination: account(&OTHER_SEED),
                asset: stellar_xdr::Asset::Native,
                amount: 1_000_000_000,
            }),
        }],
        Some(now + 60),
    );
    // 2. The distribution paying a fee-bump around a transaction nobody signed.
    let TransactionEnvelope::Tx(unsigned_inner) = decode_envelope(&channel_payment(now)).unwrap()
    else {
        panic!("v1")
    };
    let third_party = distribution_bump(&unsigned_inner, 1_000);
    // 3. "Provisioning" that sponsors an account whose key this signer does not hold.
    let stranger = Xid(Xpk::PublicKeyTypeEd25519(Uint256(raw(&OTHER_SEED))));
    let sponsor_stranger = envelope(
        account(&DISTRIBUTION_SEED),
        vec![
            Operation {
                source_account: None,
                body: OperationBody::BeginSponsoringFutureReserves(
                    BeginSponsoringFutureReservesOp {
                        sponsored_id: stranger.clone(),
                    },
                ),
            },
            Operation {
                source_account: None,
                body: OperationBody::CreateAccount(CreateAccountOp {
                    destination: stranger,
                    starting_balance: 0,
                }),
            },
        ],
        Some(now + 60),
    );
    let attempts = [
        (drain, channel.clone(), "channel_not_operation_source"),
        (third_party, distribution.clone(), "fee_bump_inner_unsigned"),
        (
            sponsor_stranger,
            distribution.clone(),
            "sponsorship_unheld_account",
        ),
    ];
    for (xdr, signer, rule) in attempts {
        let refusal = refused(sign(&enclave, xdr, vec![signer]).await);
        assert_eq!(refusal.code, ErrorCode::PolicyViolation, "{refusal:?}");
        assert_eq!(rule_of(&refusal), rule, "{refusal:?}");
    }
    // 4. Twenty existing signatures plus one more: refused before KMS, not after.
    let TransactionEnvelope::Tx(mut full) = decode_envelope(&channel_payment(now)).unwrap() else {
        panic!("v1")
    };
    full.signatures = vec![
        DecoratedSignature {
            hint: stellar_xdr::SignatureHint([0; 4]),
            signature: vec![0u8; 64].try_into().unwrap(),
        };
        20
    ]
    .try_into()
    .unwrap();
    let full = TransactionEnvelope::Tx(full)
        .to_xdr(Limits::none())
        .unwrap();
    let refusal = refused(sign(&enclave, full, vec![channel.clone()]).await);
    assert_eq!(refusal.code, ErrorCode::TooManySignatures, "{refusal:?}");
    // 5. The same key twice.
    let refusal = refused(
        sign(
            &enclave,
            channel_payment(now),
            vec![channel.clone(), channel],
        )
        .await,
    );
    assert_eq!(refusal.code, ErrorCode::BadRequest, "{refusal:?}");
    assert_eq!(enclave.kms.calls(), 0);
}

/// Ordinary traffic still signs: a fee-bump of a transaction its source signed, and
/// provisioning of a key this signer holds.
#[tokio::test]
async fn ordinary_fee_bumps_and_provisioning_are_signed() {
    use stellar_xdr::{
        AccountId as Xid, BeginSponsoringFutureReservesOp, CreateAccountOp, PublicKey as Xpk,
    };
    let enclave = enclave();
    let now = common::now_unix_secs();
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let distribution = kms_direct(&enclave.kms, &DISTRIBUTION_SEED, &DISTRIBUTION_SEED);
    let signed_inner = signed_channel_payment(&enclave, channel).await;
    let bump = distribution_bump(&signed_inner, 1_000);
    sign(&enclave, bump, vec![distribution.clone()])
        .await
        .unwrap();

    let fresh = kms_direct(&enclave.kms, &SECOND_CHANNEL_SEED, &SECOND_CHANNEL_SEED);
    let new = Xid(Xpk::PublicKeyTypeEd25519(Uint256(raw(
        &SECOND_CHANNEL_SEED,
    ))));
    let provisioning = envelope(
        account(&DISTRIBUTION_SEED),
        vec![
            Operation {
                source_account: None,
                body: OperationBody::BeginSponsoringFutureReserves(
                    BeginSponsoringFutureReservesOp {
                        sponsored_id: new.clone(),
                    },
                ),
            },
            Operation {
                source_account: None,
                body: OperationBody::CreateAccount(CreateAccountOp {
                    destination: new,
                    starting_balance: 0,
                }),
            },
            Operation {
                source_account: Some(account(&SECOND_CHANNEL_SEED)),
                body: OperationBody::EndSponsoringFutureReserves,
            },
        ],
        Some(now + 60),
    );
    let Response::Signed { signatures, .. } =
        sign(&enclave, provisioning, vec![distribution, fresh])
            .await
            .unwrap()
    else {
        panic!("not signed")
    };
    assert_eq!(signatures.len(), 2);
}

/// The distribution account's fee budget holds against a host that repeats allowed
/// fee-bumps, and a request that fails gives its reservation back.
#[tokio::test]
async fn the_fee_budget_bounds_repeated_fee_bumps() {
    let kms = Arc::new(FakeKms::default());
    let limits = crate::budget::SpendingLimits::new(2_500, 10, std::time::Duration::from_hours(1));
    let enclave = Enclave::over(kms.clone(), context_with(kms.clone(), limits));
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let distribution = kms_direct(&enclave.kms, &DISTRIBUTION_SEED, &DISTRIBUTION_SEED);
    let inner = signed_channel_payment(&enclave, channel).await;
    let bump = |fee: i64| distribution_bump(&inner, fee);
    sign(&enclave, bump(1_000), vec![distribution.clone()])
        .await
        .unwrap();
    // KMS refuses this one: its 1,000 stroops go back to the budget.
    enclave.kms.deny.store(true, Ordering::SeqCst);
    let denied = refused(sign(&enclave, bump(1_000), vec![distribution.clone()]).await);
    assert_eq!(denied.code, ErrorCode::KmsAccessDenied);
    enclave.kms.deny.store(false, Ordering::SeqCst);
    sign(&enclave, bump(1_000), vec![distribution.clone()])
        .await
        .unwrap();
    let calls = enclave.kms.calls();
    let refusal = refused(sign(&enclave, bump(1_000), vec![distribution]).await);
    assert_eq!(refusal.code, ErrorCode::PolicyViolation);
    assert_eq!(rule_of(&refusal), "fee_budget", "{refusal:?}");
    assert_eq!(enclave.kms.calls(), calls, "refused before any KMS call");

    // The enclave's counters, as the host's /metrics reads them.
    let Ok(Response::Stats(stats)) = enclave.dispatcher.handle(Request::Stats).await else {
        panic!("no stats");
    };
    assert_eq!(stats.fee_budget_remaining_stroops, 500);
    assert_eq!(stats.sponsorships_remaining, 10);
    let count = |result: &str| {
        stats
            .kms_calls
            .iter()
            .find(|c| c.operation == "Decrypt" && c.result == result)
            .map_or(0, |c| c.count)
    };
    // The channel payment and two bumps decrypted; one was denied.
    assert_eq!(
        (count("ok"), count("kms_access_denied")),
        (3, 1),
        "{stats:?}"
    );
}

/// An identity older than its limit is never handed to KMS.
#[tokio::test]
async fn a_stale_attestation_is_never_used() {
    let kms = Arc::new(FakeKms::default());
    let attestor = Attestor::with_max_age(Arc::new(FakeNsm), std::time::Duration::ZERO).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let context = context_from(kms.clone(), attestor, unlimited());
    let enclave = Enclave::over(kms.clone(), context);
    let channel = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let refusal = refused_payment(&enclave, channel).await;
    assert_eq!(refusal.code, ErrorCode::KmsUnavailable, "{refusal:?}");
    assert!(refusal.message.contains("attestation"), "{refusal:?}");
    assert_eq!(enclave.kms.calls(), 0);
    assert_eq!(crate::attestor::rotation_period(1).as_secs(), 10);
    assert_eq!(crate::attestor::rotation_period(100_000).as_secs(), 240);
}

async fn generate(enclave: &Enclave, count: u32) -> Result<Vec<KeyMaterial>, WireError> {
    match enclave
        .dispatcher
        .handle(Request::GenerateKeys { count })
        .await?
    {
        Response::KeysGenerated { keys } => Ok(keys),
        other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::test]
async fn generated_keys_are_sealed_under_the_measured_key_and_sign() {
    let enclave = enclave();
    let keys = generate(&enclave, 3).await.unwrap();
    assert_eq!(keys.len(), 3);
    let distinct: std::collections::HashSet<_> = keys.iter().map(|k| &k.public_key).collect();
    assert_eq!(distinct.len(), 3, "{keys:?}");
    assert_eq!(*enclave.kms.requested_key_ids.lock().unwrap(), [KEY_ARN; 3]);
    // Invariant 1: what crosses to the host holds neither a seed nor a data key.
    let wire = postcard::to_stdvec(&Response::KeysGenerated { keys: keys.clone() }).unwrap();
    for key in &keys {
        assert_eq!(key.format, KeyFormat::Envelope);
        assert_eq!(key.kms_key_id, KEY_ARN);
        let sealed = key.sealed_seed.as_ref().unwrap();
        assert_eq!(sealed.len(), 12 + 32 + 16);
        let data_key = enclave.kms.entries.lock().unwrap()[&key.ciphertext]
            .plaintext
            .clone();
        let seed = crate::keys::open_sealed_seed(&data_key, sealed, &key.public_key).unwrap();
        assert_eq!(public_key_of(&seed), key.public_key);
        for secret in [data_key.as_slice(), seed.as_slice()] {
            assert!(
                !wire.windows(32).any(|window| window == secret),
                "a secret crossed the boundary"
            );
        }
    }
    // A generated key signs: as a channel, sequencing another account's payment.
    let channel = keys[0].clone();
    let source = stellar_strkey::ed25519::PublicKey::from_string(&channel.public_key).unwrap();
    let xdr = payment_sequenced_by(&channel.public_key);
    let Response::Signed {
        hash, signatures, ..
    } = sign(&enclave, xdr, vec![channel]).await.unwrap()
    else {
        panic!("not signed");
    };
    let signature = ed25519_dalek::Signature::from_slice(&signatures[0].signature).unwrap();
    VerifyingKey::from_bytes(&source.0)
        .unwrap()
        .verify(&hash, &signature)
        .unwrap();
}

#[tokio::test]
async fn one_generation_at_a_time_and_few_kms_calls_at_once() {
    let enclave = Arc::new(enclave());
    let (first, second) = tokio::join!(generate(&enclave, 100), generate(&enclave, 1));
    assert_eq!(first.unwrap().len(), 100);
    assert_eq!(second.unwrap_err().code, ErrorCode::EnclaveBusy);
    let peak = enclave.kms.peak_generating.load(Ordering::SeqCst);
    assert!(
        (2..=crate::ops::generate::GENERATION_CONCURRENCY).contains(&peak),
        "peak {peak}"
    );
}

#[tokio::test]
async fn generation_counts_are_bounded_before_any_kms_call() {
    let enclave = enclave();
    for count in [0, 101] {
        let refusal = generate(&enclave, count).await.unwrap_err();
        assert_eq!(refusal.code, ErrorCode::BadRequest, "{refusal:?}");
    }
    assert_eq!(enclave.kms.calls(), 0);
}

#[tokio::test]
async fn a_generated_key_presented_as_kms_direct_is_refused_by_kms() {
    let enclave = enclave();
    let mut key = generate(&enclave, 1).await.unwrap().remove(0);
    key.format = KeyFormat::KmsDirect;
    key.sealed_seed = None;
    let xdr = payment_sequenced_by(&key.public_key);
    let refusal = sign(&enclave, xdr, vec![key]).await.unwrap_err();
    // The data key's context names its format: KMS will not open it as a seed.
    assert_eq!(refusal.code, ErrorCode::KmsInvalidCiphertext, "{refusal:?}");
}

/// The channel payment, sequenced and paid for by `channel` (G...).
fn payment_sequenced_by(channel: &str) -> Vec<u8> {
    let source = stellar_strkey::ed25519::PublicKey::from_string(channel).unwrap();
    payment_by(
        MuxedAccount::Ed25519(Uint256(source.0)),
        common::now_unix_secs(),
    )
}

#[tokio::test]
async fn a_data_key_for_another_kms_key_seals_nothing() {
    let enclave = enclave();
    for answered in [
        AnsweredKeyId::Other("arn:aws:kms:us-east-1:444455556666:key/attacker".into()),
        AnsweredKeyId::Absent,
    ] {
        *enclave.kms.answered_key_id.lock().unwrap() = answered.clone();
        let refusal = generate(&enclave, 2).await.unwrap_err();
        assert_eq!(
            refusal.code,
            ErrorCode::KmsKeyMismatch,
            "{answered:?}: {refusal:?}"
        );
        assert!(refusal.message.contains(KEY_ARN), "{refusal:?}");
    }
}

#[tokio::test]
async fn a_key_check_proves_the_key_and_signs_nothing_a_host_could_use() {
    let enclave = enclave();
    let verify = |key: KeyMaterial| enclave.dispatcher.handle(Request::VerifyKey { key });
    let good = kms_direct(&enclave.kms, &CHANNEL_SEED, &CHANNEL_SEED);
    let Ok(Response::KeyVerified { signature }) = verify(good).await else {
        panic!("a good key verifies");
    };
    let public = raw(&CHANNEL_SEED);
    assert!(common::stellar::key_check::verify_key_check(
        &public,
        &signature.signature
    ));
    assert_eq!(signature.hint, public[28..]);
    assert_eq!(enclave.kms.calls(), 1);

    // Another key's seed under this public key: refused after decryption.
    let swapped = kms_direct(&enclave.kms, &DISTRIBUTION_SEED, &OTHER_SEED);
    let refusal = refused(verify(swapped).await);
    assert_eq!(refusal.code, ErrorCode::PublicKeyMismatch, "{refusal:?}");
    assert_eq!(enclave.kms.calls(), 2);

    // A record under another KMS key: refused before any KMS call.
    let mut elsewhere = kms_direct(&enclave.kms, &OTHER_SEED, &OTHER_SEED);
    elsewhere.kms_key_id = "arn:aws:kms:us-east-1:444455556666:key/attacker".into();
    let refusal = refused(verify(elsewhere).await);
    assert_eq!(refusal.code, ErrorCode::KmsKeyMismatch, "{refusal:?}");
    assert_eq!(enclave.kms.calls(), 2);
}

/// wallet-backend's channel keys, as Python's `cryptography` encrypted them
/// (testdata/wallet-backend-vectors.json).
fn wallet_backend_vectors() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/wallet-backend-vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn wallet_backend_key(entry: &serde_json::Value) -> common::wire::messages::WalletBackendKey {
    use base64::Engine;
    common::wire::messages::WalletBackendKey {
        public_key: entry["public_key"].as_str().unwrap().into(),
        encrypted: base64::engine::general_purpose::STANDARD
            .decode(entry["encrypted_private_key"].as_str().unwrap())
            .unwrap(),
    }
}

#[tokio::test]
async fn wallet_backend_keys_are_opened_with_the_kms_held_passphrase_and_resealed() {
    let vectors = wallet_backend_vectors();
    let enclave = enclave();
    let passphrase_ciphertext = b"passphrase ciphertext".to_vec();
    enclave.kms.store_with(
        &passphrase_ciphertext,
        &[common::wire::messages::WALLET_BACKEND_PASSPHRASE_CONTEXT],
        vectors["passphrase"].as_str().unwrap().as_bytes(),
    );
    let channels: Vec<_> = vectors["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(wallet_backend_key)
        .collect();
    let import = |channels: Vec<_>, passphrase_ciphertext: Vec<u8>| {
        enclave.dispatcher.handle(Request::ImportWalletBackend {
            passphrase_ciphertext,
            channels,
        })
    };
    let Ok(Response::KeysImported { keys }) =
        import(channels.clone(), passphrase_ciphertext.clone()).await
    else {
        panic!("the vectors import");
    };
    assert_eq!(keys.len(), channels.len());
    for (key, vector) in keys.iter().zip(vectors["channels"].as_array().unwrap()) {
        assert_eq!(key.public_key, vector["public_key"].as_str().unwrap());
        assert_eq!(key.format, KeyFormat::Envelope);
        assert_eq!(key.kms_key_id, KEY_ARN);
        // The re-sealed key signs as itself.
        let signed = sign(
            &enclave,
            payment_by(
                MuxedAccount::Ed25519(stellar_xdr::Uint256(
                    stellar_strkey::ed25519::PublicKey::from_string(&key.public_key)
                        .unwrap()
                        .0,
                )),
                common::now_unix_secs(),
            ),
            vec![key.clone()],
        )
        .await;
        assert!(matches!(signed, Ok(Response::Signed { .. })), "{signed:?}");
    }

    for case in vectors["refused"].as_array().unwrap() {
        let mut batch = channels.clone();
        batch.push(wallet_backend_key(case));
        let refusal = refused(import(batch, passphrase_ciphertext.clone()).await);
        assert_eq!(
            refusal.code.as_str(),
            case["code"].as_str().unwrap(),
            "{}: {refusal:?}",
            case["why"]
        );
    }
    // The passphrase under another context (a kms-direct key's, say) does not open.
    enclave.kms.store(
        b"passphrase as a key",
        "GABC",
        vectors["passphrase"].as_str().unwrap().as_bytes(),
    );
    let refusal = refused(import(channels, b"passphrase as a key".to_vec()).await);
    assert_eq!(refusal.code, ErrorCode::KmsInvalidCiphertext, "{refusal:?}");
}

const PREVIOUS_KEY_ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/previous";

#[tokio::test]
async fn a_rotation_build_reads_both_keys_and_rewraps_to_the_current_one_only() {
    let kms = Arc::new(FakeKms::default());
    let mut rotating = context(kms.clone());
    rotating.previous_kms_key_arn = Some(PREVIOUS_KEY_ARN.parse().unwrap());
    let enclave = Enclave::over(kms.clone(), rotating);
    let mut old = kms_direct(&kms, &CHANNEL_SEED, &CHANNEL_SEED);
    old.kms_key_id = PREVIOUS_KEY_ARN.into();
    let now = common::now_unix_secs();

    // Keys under the previous key still sign, named as that key to KMS.
    let signed = sign(&enclave, channel_payment(now), vec![old.clone()]).await;
    assert!(matches!(signed, Ok(Response::Signed { .. })), "{signed:?}");
    assert_eq!(*kms.requested_key_ids.lock().unwrap(), [PREVIOUS_KEY_ARN]);

    let rewrap = |key: KeyMaterial| enclave.dispatcher.handle(Request::RewrapKey { key });
    let Ok(Response::KeyRewrapped { key: new }) = rewrap(old.clone()).await else {
        panic!("a key under the previous KMS key rewraps");
    };
    assert_eq!(
        (new.public_key.as_str(), new.format, new.kms_key_id.as_str()),
        (old.public_key.as_str(), KeyFormat::Envelope, KEY_ARN)
    );
    kms.requested_key_ids.lock().unwrap().clear();
    let signed = sign(&enclave, channel_payment(now), vec![new.clone()]).await;
    assert!(matches!(signed, Ok(Response::Signed { .. })), "{signed:?}");
    assert_eq!(*kms.requested_key_ids.lock().unwrap(), [KEY_ARN]);
    let refusal = refused(rewrap(new.clone()).await);
    assert_eq!(
        refusal.code,
        ErrorCode::BadRequest,
        "already under the current key"
    );

    // A record under any other key is refused before KMS, rewrap or not.
    let calls = kms.calls();
    let mut foreign = old.clone();
    foreign.kms_key_id = "arn:aws:kms:us-east-1:444455556666:key/attacker".into();
    assert_eq!(
        refused(rewrap(foreign).await).code,
        ErrorCode::KmsKeyMismatch
    );
    // A seed that is not the key's own is never resealed.
    let mut swapped = kms_direct(&kms, &SECOND_CHANNEL_SEED, &OTHER_SEED);
    swapped.kms_key_id = PREVIOUS_KEY_ARN.into();
    assert_eq!(
        refused(rewrap(swapped).await).code,
        ErrorCode::PublicKeyMismatch
    );
    assert_eq!(kms.calls(), calls + 1, "one decryption, no seal");

    // The build after the move names only the current key: old records are refused.
    let after = Enclave::over(kms.clone(), context(kms.clone()));
    let refusal = refused(sign(&after, channel_payment(now), vec![old]).await);
    assert_eq!(refusal.code, ErrorCode::KmsKeyMismatch, "{refusal:?}");
    let signed = sign(&after, channel_payment(now), vec![new]).await;
    assert!(matches!(signed, Ok(Response::Signed { .. })), "{signed:?}");
}

/// Every answer of the key-management operations as the host receives it on the wire
/// (the encoded frames), refusals included: no seed, data key, passphrase or `S...`
/// strkey appears in any of them.
#[tokio::test]
async fn the_wire_from_key_management_carries_no_secret() {
    let vectors = wallet_backend_vectors();
    let kms = Arc::new(FakeKms::default());
    let mut rotating = context(kms.clone());
    rotating.previous_kms_key_arn = Some(PREVIOUS_KEY_ARN.parse().unwrap());
    let enclave = Enclave::over(kms.clone(), rotating);
    let passphrase = vectors["passphrase"].as_str().unwrap();
    kms.store_with(
        b"passphrase ciphertext",
        &[common::wire::messages::WALLET_BACKEND_PASSPHRASE_CONTEXT],
        passphrase.as_bytes(),
    );
    let mut old = kms_direct(&kms, &CHANNEL_SEED, &CHANNEL_SEED);
    old.kms_key_id = PREVIOUS_KEY_ARN.into();
    let channels: Vec<_> = vectors["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(wallet_backend_key)
        .collect();
    let mut bad = channels.clone();
    bad.push(wallet_backend_key(&vectors["refused"][0]));
    let requests = [
        Request::GenerateKeys { count: 3 },
        Request::ImportWalletBackend {
            passphrase_ciphertext: b"passphrase ciphertext".to_vec(),
            channels,
        },
        Request::ImportWalletBackend {
            passphrase_ciphertext: b"passphrase ciphertext".to_vec(),
            channels: bad,
        },
        Request::RewrapKey { key: old.clone() },
        Request::VerifyKey { key: old },
    ];
    let mut wire = Vec::new();
    for (id, request) in (0u64..).zip(requests) {
        let response = enclave.dispatcher.handle(request).await;
        let message = common::wire::messages::EnclaveMessage::Response { id, response };
        wire.extend_from_slice(&common::wire::frame::encode_message(&message).unwrap());
    }
    // Every secret there is: what the fake KMS holds (seeds, data keys, the
    // passphrase), the seeds inside the seals, and the wallet-backend secrets.
    let mut secrets: Vec<Vec<u8>> = vec![passphrase.as_bytes().to_vec(), CHANNEL_SEED.to_vec()];
    for entry in kms.entries.lock().unwrap().values() {
        secrets.push(entry.plaintext.clone());
    }
    for vector in vectors["channels"].as_array().unwrap() {
        let secret = vector["secret"].as_str().unwrap();
        secrets.push(secret.as_bytes().to_vec());
        secrets.push(
            stellar_strkey::ed25519::PrivateKey::from_string(secret)
                .unwrap()
                .0
                .to_vec(),
        );
    }
    assert!(secrets.len() > 10, "{} secrets", secrets.len());
    for secret in &secrets {
        assert!(
            !wire
                .windows(secret.len())
                .any(|window| window == secret.as_slice()),
            "a secret of {} bytes crossed the wire",
            secret.len()
        );
    }
}

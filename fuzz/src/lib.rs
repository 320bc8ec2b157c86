//! What the fuzz targets share: the enclave's real dispatcher over a fake NSM and a
//! scripted KMS, the input layout of the `enclave_request` target, and the fixtures
//! the targets verify against (compiled in, so a target runs from any directory).
//!
//! The targets themselves are in `fuzz_targets/`; `scripts/fuzz` runs them.
#![allow(clippy::expect_used)] // fixtures compiled into the binary; a failure is a build bug

pub mod seeds;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine;
use common::stellar::envelope::{decode_envelope, required_signers};
use common::stellar::signing_policy::SigningPolicySettings;
use common::stellar::soroban::invoked_contract;
use common::wire::WireError;
use common::wire::messages::{AwsCredentials, Request, Response};
use enclave::attestor::Attestor;
use enclave::budget::SpendingLimits;
use enclave::context::SigningContext;
use enclave::dispatch::Dispatcher;
use enclave::kms::{GeneratedDataKey, Kms, KmsError, RecipientAnswer};
use enclave::nsm::{Nsm, NsmError};
use futures_util::future::BoxFuture;
use stellar_xdr::{Limits, ReadXdr, SorobanAuthorizationEntry, TransactionEnvelope};

/// The network the fuzzed enclave signs for.
pub const NETWORK: &str = "Test SDF Network ; September 2015";

/// The fuzzed enclave's measured KMS key; the seeds' key records name it.
pub const KEY_ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/fuzz";

/// The distribution account's seed; seeds that exercise distribution rules sign with it.
pub const DISTRIBUTION_SEED: [u8; 32] = [0xd1; 32];

/// Real AWS and OpenSSL bytes (see testdata/README.md).
pub mod fixtures {
    pub const KMS_RECIPIENT_KEY_PKCS1: &[u8] = include_bytes!(
        "../../testdata/fixtures/kms-recipient/real-kms/recipient-rsa2048.pkcs1.der"
    );
    pub const KMS_CIPHERTEXT_FOR_RECIPIENT: &[u8] = include_bytes!(
        "../../testdata/fixtures/kms-recipient/real-kms/ciphertext-for-recipient.ber"
    );
    pub const OPENSSL_CIPHERTEXT_FOR_RECIPIENT: &[u8] = include_bytes!(
        "../../testdata/fixtures/kms-recipient/openssl-der/ciphertext-for-recipient.der"
    );
    pub const NITRO_ROOT_PEM: &[u8] =
        include_bytes!("../../testdata/fixtures/nitro-attestation/aws-nitro-root.pem");
    pub const ATTESTATION_PRODUCTION: &[u8] =
        include_bytes!("../../testdata/fixtures/nitro-attestation/doc-2022-07-06-production.cbor");
    pub const ATTESTATION_DEBUG: &[u8] =
        include_bytes!("../../testdata/fixtures/nitro-attestation/doc-2023-09-18-debug.cbor");
    /// Within the production document's certificate validity (its timestamp + 60 s).
    pub const ATTESTATION_NOW_UNIX: i64 = 1_657_117_102 + 60;
    pub const STELLAR_VECTORS: &str = include_str!("../../testdata/stellar-vectors.json");
}

/// The raw 32-byte public key of `seed`.
pub fn public_key(seed: &[u8; 32]) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(seed)
        .verifying_key()
        .to_bytes()
}

pub use enclave::keys::public_key_of as strkey;

/// The transaction vectors: (seeds of the signers, envelope).
pub fn transaction_vectors() -> Vec<(Vec<[u8; 32]>, TransactionEnvelope)> {
    vector_list("cases")
        .iter()
        .filter_map(|case| {
            let envelope = decode_base64_xdr(case.get("unsigned")?)?;
            let seeds = case
                .get("seeds")?
                .as_array()?
                .iter()
                .filter_map(|seed| decode_seed(seed.as_str()?))
                .collect();
            Some((seeds, envelope))
        })
        .collect()
}

/// The Soroban authorization vectors: (seed of the signer, entry).
pub fn soroban_vectors() -> Vec<([u8; 32], SorobanAuthorizationEntry)> {
    vector_list("soroban_auth")
        .iter()
        .filter_map(|case| {
            let entry = decode_base64_xdr(case.get("unsigned")?)?;
            Some((decode_seed(case.get("seed")?.as_str()?)?, entry))
        })
        .collect()
}

fn vector_list(name: &str) -> Vec<serde_json::Value> {
    let vectors: serde_json::Value =
        serde_json::from_str(fixtures::STELLAR_VECTORS).expect("testdata/stellar-vectors.json");
    vectors
        .get(name)
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn decode_base64_xdr<T: ReadXdr>(value: &serde_json::Value) -> Option<T> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_str()?)
        .ok()?;
    T::from_xdr(bytes, Limits::none()).ok()
}

fn decode_seed(hex: &str) -> Option<[u8; 32]> {
    common::unhex(hex)?.try_into().ok()
}

/// One `enclave_request` input: `[u16 LE length][postcard Request][KMS answer]`. The
/// KMS answer is the plaintext the scripted KMS returns for every key (empty: KMS
/// denies), so the fuzzer can reach the signing path after the pre-KMS checks.
pub struct RequestInput<'a> {
    pub request: &'a [u8],
    pub kms_plaintext: &'a [u8],
}

impl<'a> RequestInput<'a> {
    pub fn split(data: &'a [u8]) -> Option<RequestInput<'a>> {
        let (length, rest) = data.split_first_chunk::<2>()?;
        let length = usize::from(u16::from_le_bytes(*length));
        let (request, kms_plaintext) = rest.split_at_checked(length)?;
        Some(RequestInput {
            request,
            kms_plaintext,
        })
    }

    pub fn join(request: &[u8], kms_plaintext: &[u8]) -> Vec<u8> {
        let length = u16::try_from(request.len()).expect("seed requests fit in 64 KiB");
        let mut out = length.to_le_bytes().to_vec();
        out.extend_from_slice(request);
        out.extend_from_slice(kms_plaintext);
        out
    }
}

/// The "attestation document" is the recipient key itself: all the scripted KMS needs
/// to encrypt to it.
struct FakeNsm;

impl Nsm for FakeNsm {
    fn attest(&self, public_key: &[u8]) -> Result<Vec<u8>, NsmError> {
        Ok(public_key.to_vec())
    }

    fn attest_for_caller(&self, user_data: &[u8], nonce: &[u8]) -> Result<Vec<u8>, NsmError> {
        Ok([b"caller:".as_slice(), user_data, nonce].concat())
    }

    /// Fixed: the seed mixes in the OS RNG, and fuzzing needs no unpredictability.
    fn random(&self) -> Result<Vec<u8>, NsmError> {
        Ok(vec![0x5a; 32])
    }
}

/// Answers every `Decrypt` with the plaintext of the current input, as a real CMS
/// envelope for the enclave's recipient key, and counts the calls.
#[derive(Default)]
struct ScriptedKms {
    plaintext: Mutex<Vec<u8>>,
    calls: AtomicUsize,
}

impl Kms for ScriptedKms {
    fn decrypt_for_recipient<'a>(
        &'a self,
        _ciphertext_blob: &'a [u8],
        key_id: &'a str,
        _encryption_context: &'a [(&'a str, &'a str)],
        attestation_document: &'a [u8],
    ) -> BoxFuture<'a, Result<RecipientAnswer, KmsError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let plaintext = self
                .plaintext
                .lock()
                .map_err(|_| KmsError::AccessDenied("poisoned".into()))?
                .clone();
            if plaintext.is_empty() {
                return Err(KmsError::AccessDenied("scripted denial".into()));
            }
            let ciphertext_for_recipient =
                mock_kms::recipient::envelope(attestation_document, &plaintext).map_err(|e| {
                    KmsError::Other {
                        code: "Scripted".into(),
                        message: e.to_string(),
                    }
                })?;
            Ok(RecipientAnswer {
                key_id: Some(key_id.to_string()),
                ciphertext_for_recipient,
            })
        })
    }

    /// The scripted plaintext is the data key; its "blob" is a fixed marker.
    fn generate_data_key_for_recipient<'a>(
        &'a self,
        key_id: &'a str,
        encryption_context: &'a [(&'a str, &'a str)],
        attestation_document: &'a [u8],
    ) -> BoxFuture<'a, Result<GeneratedDataKey, KmsError>> {
        Box::pin(async move {
            let answer = self
                .decrypt_for_recipient(b"", key_id, encryption_context, attestation_document)
                .await?;
            Ok(GeneratedDataKey {
                answer,
                ciphertext_blob: b"scripted data key".to_vec(),
            })
        })
    }

    fn set_credentials(&self, _credentials: AwsCredentials) {}
}

/// The enclave's dispatcher with the default signing policy (plus one allowed Soroban
/// call) and a runtime to drive it; built once per process, since the recipient key
/// takes an RSA key generation.
pub struct FuzzEnclave {
    runtime: tokio::runtime::Runtime,
    dispatcher: Dispatcher,
    kms: Arc<ScriptedKms>,
}

impl FuzzEnclave {
    pub fn get() -> &'static FuzzEnclave {
        static ENCLAVE: OnceLock<FuzzEnclave> = OnceLock::new();
        ENCLAVE.get_or_init(FuzzEnclave::new)
    }

    fn new() -> FuzzEnclave {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime");
        let kms = Arc::new(ScriptedKms::default());
        let settings = SigningPolicySettings {
            soroban_contracts: soroban_vectors()
                .iter()
                .filter_map(|(_, entry)| invoked_contract(&entry.root_invocation))
                .map(ToString::to_string)
                .collect(),
            ..SigningPolicySettings::default()
        };
        let policy = settings
            .signing_policy(public_key(&DISTRIBUTION_SEED))
            .expect("the default policy");
        let limits = SpendingLimits::new(
            settings.fee_budget_stroops,
            settings.max_sponsored_accounts,
            std::time::Duration::from_secs(settings.budget_window_secs),
        );
        let attestor = Attestor::new(Arc::new(FakeNsm)).expect("a recipient key");
        let key_arn = KEY_ARN.parse().expect("a key ARN");
        let context = SigningContext::new(
            NETWORK.into(),
            kms.clone(),
            key_arn,
            attestor,
            policy,
            limits,
        );
        FuzzEnclave {
            runtime,
            dispatcher: Dispatcher::new(Some(context)),
            kms,
        }
    }

    /// Runs one input through the dispatcher and checks what must hold whatever the
    /// host sent: no panic, and KMS is asked only for a request on our network whose
    /// every signer is a required signer of the transaction (the pre-KMS checks).
    /// `None` when the input is no request.
    pub fn run(&self, input: &RequestInput<'_>) -> Option<Outcome> {
        let request = postcard::from_bytes::<Request>(input.request).ok()?;
        // Counts 5 to 100 only repeat what 1 to 4 reach, at one RSA decryption per key,
        // and would take most of the run; counts out of bounds still run.
        if let Request::GenerateKeys { count } = request
            && (5..=common::wire::messages::MAX_GENERATED_KEYS).contains(&count)
        {
            return None;
        }
        if let Ok(mut plaintext) = self.kms.plaintext.lock() {
            plaintext.clear();
            plaintext.extend_from_slice(input.kms_plaintext);
        }
        let before = self.kms.calls.load(Ordering::SeqCst);
        let answer = self
            .runtime
            .block_on(self.dispatcher.handle(request.clone()));
        let kms_called = self.kms.calls.load(Ordering::SeqCst) > before;
        if kms_called {
            assert_kms_was_due(&request);
        }
        Some(Outcome { answer, kms_called })
    }
}

/// What the enclave made of one input.
#[derive(Debug)]
pub struct Outcome {
    pub answer: Result<Response, WireError>,
    /// Whether the request got as far as KMS.
    pub kms_called: bool,
}

fn assert_kms_was_due(request: &Request) {
    match request {
        Request::Sign {
            network_passphrase,
            transaction,
            signers,
        } => {
            assert_eq!(
                network_passphrase, NETWORK,
                "KMS called for another network"
            );
            let envelope = decode_envelope(transaction).expect("KMS called for bad XDR");
            let required = required_signers(&envelope);
            assert!(signers.len() <= 20, "KMS called for over 20 signers");
            for signer in signers {
                let key = stellar_strkey::ed25519::PublicKey::from_string(&signer.public_key)
                    .expect("KMS called for a malformed public key");
                assert!(
                    required.contains(&key.0),
                    "KMS called for a signer the transaction does not require"
                );
            }
        }
        Request::AuthorizeSoroban {
            network_passphrase,
            signature_expiration_ledger,
            ..
        } => {
            assert_eq!(
                network_passphrase, NETWORK,
                "KMS called for another network"
            );
            assert!(*signature_expiration_ledger > 0, "KMS called for ledger 0");
        }
        Request::GenerateKeys { count } => {
            assert!(
                (1..=common::wire::messages::MAX_GENERATED_KEYS).contains(count),
                "KMS called to generate {count} keys"
            );
        }
        Request::ImportWalletBackend { channels, .. } => {
            assert!(
                (1..=common::wire::messages::MAX_IMPORTED_KEYS).contains(&channels.len()),
                "KMS called to import {} keys",
                channels.len()
            );
        }
        Request::VerifyKey { key } | Request::RewrapKey { key } => {
            assert!(
                stellar_strkey::ed25519::PublicKey::from_string(&key.public_key).is_ok(),
                "KMS called to verify a malformed public key"
            );
        }
        Request::Ping { .. }
        | Request::SetCredentials(_)
        | Request::Stats
        | Request::Attest { .. } => {
            panic!("KMS called for {request:?}")
        }
    }
}

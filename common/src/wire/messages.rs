//! The host↔enclave protocol.
//!
//! A connection opens with a version exchange ([`crate::wire::hello`]). After that, each
//! [`HostMessage::Request`] carries an id chosen by the host, and the enclave answers
//! with a [`EnclaveMessage::Response`] carrying the same id, in whatever order the
//! requests finish, so many requests share one connection and a slow one (a KMS call)
//! never holds up a fast one.
//!
//! Messages are `postcard`-encoded inside length-prefixed frames (see [`crate::frame`]).
//! Compatibility rule: `Hello` stays variant 0 of both message enums and
//! `protocol_version` stays its first field, so two builds of any version can always
//! read each other's version number (see [`peek_hello_version`]).

use serde::{Deserialize, Serialize};

use crate::wire::error::WireError;

/// Bump on any change to the messages below.
pub const PROTOCOL_VERSION: u32 = 7;

/// Which enclave build answered: the host refuses nothing on this basis by itself, but
/// operators and the dev tooling need to know when a mock build is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildFlavor {
    /// Built without the `mock` feature: no development-only code.
    Production,
    /// Built with the `mock` feature (mock NSM, dev-only switches): for local mode and
    /// tests only.
    Mock,
}

impl std::fmt::Display for BuildFlavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BuildFlavor::Production => "production",
            BuildFlavor::Mock => "mock",
        })
    }
}

/// The opening message of a connection: the host sends its own, and the enclave
/// answers with its own if the versions match (see [`crate::wire::hello`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must stay the first field: see the module documentation.
    pub protocol_version: u32,
    /// Which program and release sent it, e.g. `signer-host 0.1.0`, for logs.
    pub software_version: String,
    /// Whether the sender was built with development-only code.
    pub build: BuildFlavor,
}

impl Hello {
    /// This build's hello, sent by `program` (`signer-host` or `signer-enclave`).
    pub fn current(program: &str, build: BuildFlavor) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            software_version: format!("{program} {}", env!("CARGO_PKG_VERSION")),
            build,
        }
    }
}

/// Host → enclave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMessage {
    /// The host's opening message. The enclave answers with its own hello, or with
    /// [`EnclaveMessage::VersionMismatch`] and closes. A second hello makes the enclave
    /// close the connection.
    Hello(Hello),
    /// A `request` under an `id` the host chose. The enclave answers with an
    /// [`EnclaveMessage::Response`] carrying the same id, in whatever order requests finish.
    Request {
        /// Chosen by the host; the response carries it back.
        id: u64,
        /// What the host asks for.
        request: Request,
    },
}

/// Enclave → host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnclaveMessage {
    /// The enclave's answer to the host's hello when their protocol versions match.
    Hello(Hello),
    /// Sent instead of `Hello` when the versions differ; the enclave then closes.
    VersionMismatch {
        /// The enclave's protocol version.
        enclave: u32,
        /// The protocol version the host announced.
        host: u32,
    },
    /// The answer to the [`HostMessage::Request`] with the same id.
    Response {
        /// The id of the request this answers.
        id: u64,
        /// The result, or the refusal with its stable code and message.
        response: Result<Response, WireError>,
    },
}

/// What the host asks the enclave to do, one per [`HostMessage::Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A no-op round trip, used by readiness checks and benchmarks. `delay_ms` is
    /// honoured only by mock builds (tests use it to stand in for a slow KMS call);
    /// production enclaves answer at once.
    Ping {
        /// Mock builds only: answer after this long.
        delay_ms: u32,
    },
    /// Short-lived AWS credentials for the enclave's own KMS calls, pushed by the host
    /// (which resolves them from the instance role) and refreshed before expiry.
    SetCredentials(AwsCredentials),
    /// Sign a transaction envelope with each of `signers`. The enclave computes the
    /// hash itself, for its own network; `network_passphrase` is what the caller
    /// believes, and a mismatch is refused.
    Sign {
        /// The network the caller means; the enclave refuses any but its own (`wrong_network`).
        network_passphrase: String,
        /// Raw XDR of a TransactionEnvelope.
        #[serde(with = "serde_bytes")]
        transaction: Vec<u8>,
        /// The keys to sign with, 1 to 20. Each must be a required signer of the
        /// transaction and pass the signing policy, or nothing is signed.
        signers: Vec<KeyMaterial>,
    },
    /// Sign a Soroban authorization entry (address credentials) for the account it
    /// names, valid through `signature_expiration_ledger`. The enclave computes the
    /// payload itself, for its own network.
    AuthorizeSoroban {
        /// The network the caller means; the enclave refuses any but its own (`wrong_network`).
        network_passphrase: String,
        /// Raw XDR of a SorobanAuthorizationEntry.
        #[serde(with = "serde_bytes")]
        entry: Vec<u8>,
        /// The last ledger the signature is valid for (above 0); the enclave writes it
        /// into the entry and signs over it.
        signature_expiration_ledger: u32,
        /// The key to sign with: it must be the account the entry authorizes for.
        signer: KeyMaterial,
    },
    /// Generate `count` new keys (1 to [`MAX_GENERATED_KEYS`]) inside the enclave: each
    /// seed drawn from the NSM and the OS, sealed (`envelope` format) under a data key
    /// from KMS's `GenerateDataKey` for the measured KMS key, and forgotten. The answer
    /// carries public keys and ciphertexts only.
    GenerateKeys {
        /// How many keys.
        count: u32,
    },
    /// Prove a stored key works: decrypt it through KMS, check it against its public
    /// key and sign its key-check payload (`common::stellar::key_check`), which is
    /// fixed by the key and can never be a Stellar payload. The host activates an
    /// imported key only once this succeeds.
    VerifyKey {
        /// The key, as stored.
        key: KeyMaterial,
    },
    /// During a rotation of the KMS key: re-seal `key` (under the previous key, or in
    /// the `kms-direct` format) in the `envelope` format under the current key.
    RewrapKey {
        /// The key, as stored.
        key: KeyMaterial,
    },
    /// Import stellar/wallet-backend channel keys (1 to [`MAX_IMPORTED_KEYS`]): the
    /// enclave decrypts the operator's passphrase through KMS (encryption context
    /// [`WALLET_BACKEND_PASSPHRASE_CONTEXT`]), opens each channel key with it, checks it
    /// against its public key and re-seals it in the `envelope` format. The host never
    /// sees a seed or the passphrase.
    ImportWalletBackend {
        /// The KMS `CiphertextBlob` of the passphrase, made by the operator.
        #[serde(with = "serde_bytes")]
        passphrase_ciphertext: Vec<u8>,
        /// The keys as wallet-backend stores them.
        channels: Vec<WalletBackendKey>,
    },
    /// The enclave's own counters, for the host's `/metrics` (the enclave has no
    /// network): its KMS calls and the distribution account's remaining budget.
    Stats,
    /// A fresh attestation document for a caller who wants to know which build it talks
    /// to: carrying `nonce` (1 to [`MAX_ATTESTATION_NONCE`] bytes) and, as `user_data`,
    /// the SHA-256 of the enclave's measured settings; no public key, so KMS can never
    /// decrypt anything to it.
    Attest {
        /// The caller's challenge.
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
    },
}

/// The longest nonce [`Request::Attest`] takes (the NSM takes up to 512 bytes).
pub const MAX_ATTESTATION_NONCE: usize = 64;

/// A channel key as stellar/wallet-backend stores it (`channel_accounts` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletBackendKey {
    /// `G...`.
    pub public_key: String,
    /// `encrypted_private_key`, base64-decoded: nonce(12) ‖ AES-128-GCM(`S...`) ‖ tag.
    #[serde(with = "serde_bytes")]
    pub encrypted: Vec<u8>,
}

/// The most keys one [`Request::ImportWalletBackend`] carries.
pub const MAX_IMPORTED_KEYS: usize = 100;

/// The encryption context of the passphrase ciphertext the operator makes with
/// `aws kms encrypt --encryption-context purpose=wallet-backend-import`.
pub const WALLET_BACKEND_PASSPHRASE_CONTEXT: (&str, &str) = ("purpose", "wallet-backend-import");

/// The most keys one [`Request::GenerateKeys`] makes.
pub const MAX_GENERATED_KEYS: u32 = 100;

/// What the enclave answers to a [`Request`] that succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The answer to [`Request::Ping`].
    Pong {
        /// Which build answered.
        build: BuildFlavor,
    },
    /// The answer to [`Request::SetCredentials`]: the credentials serve the next KMS calls.
    CredentialsStored,
    /// The answer to [`Request::Sign`].
    Signed {
        /// Raw XDR of the envelope with the new signatures appended.
        #[serde(with = "serde_bytes")]
        transaction: Vec<u8>,
        /// The signature payload hash, computed by the enclave.
        hash: [u8; 32],
        /// One per requested signer, in the order of the request.
        signatures: Vec<SignatureInfo>,
    },
    /// The answer to [`Request::AuthorizeSoroban`].
    SorobanAuthorized {
        /// Raw XDR of the entry with the expiration ledger and signature filled in.
        #[serde(with = "serde_bytes")]
        entry: Vec<u8>,
        /// The authorization payload hash the signature signs.
        hash: [u8; 32],
        /// The signature written into the entry.
        signature: SignatureInfo,
    },
    /// The answer to [`Request::GenerateKeys`]: each new key as the host stores it
    /// (`envelope` format: the data key's KMS ciphertext and the sealed seed).
    KeysGenerated {
        /// One per key asked for.
        keys: Vec<KeyMaterial>,
    },
    /// The answer to [`Request::ImportWalletBackend`]: each key re-sealed (`envelope`
    /// format), in the order of the request.
    KeysImported {
        /// One per imported key.
        keys: Vec<KeyMaterial>,
    },
    /// The answer to [`Request::RewrapKey`]: the key's new record.
    KeyRewrapped {
        /// Sealed under the current KMS key.
        key: KeyMaterial,
    },
    /// The answer to [`Request::VerifyKey`]: the key-check signature.
    KeyVerified {
        /// Over the key-check payload of the key.
        signature: SignatureInfo,
    },
    /// The answer to [`Request::Stats`].
    Stats(EnclaveStats),
    /// The answer to [`Request::Attest`].
    Attested {
        /// The NSM's COSE_Sign1 attestation document.
        #[serde(with = "serde_bytes")]
        document: Vec<u8>,
        /// SHA-256 of the enclave's measured settings: the document's `user_data`.
        settings_digest: [u8; 32],
    },
}

/// Upper bounds, in microseconds, of the buckets of the enclave's KMS latency histogram;
/// calls slower than the last bound count only in the total.
pub const KMS_DURATION_BUCKETS_US: [u64; 12] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    8_000_000,
];

/// The enclave's counters since it started (a restart resets them, as it resets the
/// budget window).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnclaveStats {
    /// One entry per KMS operation and result seen so far.
    pub kms_calls: Vec<KmsCallStats>,
    /// What the distribution account may still pay in fees in the current window.
    pub fee_budget_remaining_stroops: i64,
    /// Accounts the distribution account may still sponsor in the current window.
    pub sponsorships_remaining: u32,
}

/// The KMS calls of one operation with one result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmsCallStats {
    /// The KMS operation: `Decrypt` or `GenerateDataKey`.
    pub operation: String,
    /// `ok`, or the error code the call failed with.
    pub result: String,
    /// How many calls, retries included in each call's duration.
    pub count: u64,
    /// Per bound of [`KMS_DURATION_BUCKETS_US`], the calls that took at most that long
    /// and more than the bound before it (not cumulative).
    pub buckets: Vec<u64>,
    /// Total duration of these calls, microseconds.
    pub sum_us: u64,
}

/// Short-lived AWS credentials, resolved by the host and pushed with
/// [`Request::SetCredentials`]. They only authenticate the enclave's own KMS calls;
/// `Debug` redacts the secret key and the session token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsCredentials {
    /// The AWS access key id.
    pub access_key_id: String,
    /// The AWS secret access key.
    pub secret_access_key: String,
    /// The session token, for temporary credentials.
    pub session_token: Option<String>,
    /// When the credentials expire, Unix seconds, if they do.
    pub expires_unix: Option<u64>,
}

// Credentials are not key material, but they are secrets: keep them out of logs.
impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[REDACTED]")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("expires_unix", &self.expires_unix)
            .finish()
    }
}

/// A stored key as the host holds it: public key and ciphertexts only. Opening it takes
/// KMS and an attestation document, i.e. the enclave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMaterial {
    /// `G...`
    pub public_key: String,
    /// How the secret is stored, hence how the enclave opens it (docs/design.md §3).
    pub format: KeyFormat,
    /// The KMS key the enclave names in its `Decrypt` call.
    pub kms_key_id: String,
    /// KMS CiphertextBlob: of the secret (`kms-direct`) or of the data key (`envelope`).
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    /// `envelope` only.
    #[serde(with = "serde_bytes")]
    pub sealed_seed: Option<Vec<u8>>,
}

/// The stored key formats (docs/design.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyFormat {
    /// `kms-direct`: `ciphertext` encrypts the secret itself (raw 32 bytes or `S...`).
    KmsDirect,
    /// `envelope`: `ciphertext` encrypts a 256-bit data key, which opens `sealed_seed`
    /// (AES-256-GCM, with the `G...` public key as AAD).
    Envelope,
}

/// One signature the enclave made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureInfo {
    /// The signing key, `G...`.
    pub public_key: String,
    /// The signature hint: the last 4 bytes of the public key.
    pub hint: [u8; 4],
    /// The 64-byte ed25519 signature.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Reads the protocol version out of an encoded `Hello` of any protocol version.
/// Returns `None` when the frame is not a `Hello` at all.
pub fn peek_hello_version(frame: &[u8]) -> Option<u32> {
    // postcard: enum variant index as varint, then the struct's first field (varint u32).
    let (variant, rest) = postcard::take_from_bytes::<u32>(frame).ok()?;
    if variant != 0 {
        return None;
    }
    let (version, _) = postcard::take_from_bytes::<u32>(rest).ok()?;
    Some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_version_is_readable_from_a_future_hello_with_more_fields() {
        #[derive(Serialize)]
        struct FutureHello {
            protocol_version: u32,
            software_version: String,
            build: BuildFlavor,
            something_new: Vec<u64>,
        }
        #[derive(Serialize)]
        enum FutureHostMessage {
            Hello(FutureHello),
        }
        let bytes = postcard::to_allocvec(&FutureHostMessage::Hello(FutureHello {
            protocol_version: 77,
            software_version: "9.0.0".into(),
            build: BuildFlavor::Production,
            something_new: vec![1, 2, 3],
        }))
        .unwrap();
        assert_eq!(peek_hello_version(&bytes), Some(77));
    }

    #[test]
    fn peek_rejects_non_hello_frames() {
        let request = HostMessage::Request {
            id: 5,
            request: Request::Ping { delay_ms: 0 },
        };
        let bytes = postcard::to_allocvec(&request).unwrap();
        assert_eq!(peek_hello_version(&bytes), None);
        assert_eq!(peek_hello_version(&[]), None);
    }

    /// Byte fields are serde bytes (copied whole, not one element at a time), which
    /// postcard encodes exactly as it encodes a sequence of `u8`: a varint length, then
    /// the bytes. Builds from either side of that change read each other's frames, so
    /// it needed no protocol version.
    #[test]
    fn byte_fields_encode_as_a_sequence_of_u8_did() {
        #[derive(Serialize, Deserialize)]
        struct KeyMaterialAsSequences {
            public_key: String,
            format: KeyFormat,
            kms_key_id: String,
            ciphertext: Vec<u8>,
            sealed_seed: Option<Vec<u8>>,
        }
        let key = KeyMaterial {
            public_key: "GKEY".into(),
            format: KeyFormat::Envelope,
            kms_key_id: "arn:kms".into(),
            // Longer than 127 bytes: a two-byte varint length.
            ciphertext: (0..=255u8).collect(),
            sealed_seed: Some(vec![0xee; 60]),
        };
        let as_sequences = KeyMaterialAsSequences {
            public_key: key.public_key.clone(),
            format: key.format,
            kms_key_id: key.kms_key_id.clone(),
            ciphertext: key.ciphertext.clone(),
            sealed_seed: key.sealed_seed.clone(),
        };
        let bytes = postcard::to_allocvec(&key).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&as_sequences).unwrap());
        assert_eq!(postcard::from_bytes::<KeyMaterial>(&bytes).unwrap(), key);
        let without_seed = KeyMaterial {
            sealed_seed: None,
            ..key
        };
        let as_sequences = KeyMaterialAsSequences {
            sealed_seed: None,
            ..as_sequences
        };
        assert_eq!(
            postcard::to_allocvec(&without_seed).unwrap(),
            postcard::to_allocvec(&as_sequences).unwrap()
        );
    }

    #[test]
    fn current_hello_round_trips() {
        let hello = HostMessage::Hello(Hello::current("test", BuildFlavor::Mock));
        let bytes = postcard::to_allocvec(&hello).unwrap();
        assert_eq!(peek_hello_version(&bytes), Some(PROTOCOL_VERSION));
        assert_eq!(postcard::from_bytes::<HostMessage>(&bytes).unwrap(), hello);
    }
}

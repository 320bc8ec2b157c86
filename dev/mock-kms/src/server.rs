//! The KMS JSON 1.1 protocol over HTTPS: `POST /` with `X-Amz-Target:
//! TrentService.<Op>`, so the unmodified `aws-sdk-kms` client works against it.
//! Operations: CreateKey, DescribeKey, Encrypt, Decrypt, GenerateDataKey, each
//! authorized by one key policy that applies to every key.
//!
//! Test-only admin route on the same server: `GET|POST /__mock/faults` with JSON
//! `{"latency_ms": u64, "throttle": bool, "unavailable": bool, "clock_skew_s": i64}`
//! (all optional) answers 200 with the resulting state, which also counts the KMS
//! requests received so far (`requests`), so tests can see retries. Faults touch KMS operations
//! only, never the admin route: latency delays the answer; throttle answers every
//! operation with `ThrottlingException`; unavailable answers `503` with no body and
//! closes the connection (the SDK treats 503 as a retryable transient error); clock
//! skew shifts the mock's "now" for attestation checks.
//!
//! The SigV4 signature is not checked; only the access key id in `Credential=` is, and
//! only when the config lists allowed ones.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::key_policy::{Effect, Policy, RequestContext};
use crate::keystore::{KeyInfo, KeyStore, KeyStoreError};
use crate::recipient;

/// Request bodies larger than this are refused.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_PLAINTEXT: usize = 4096;
const MAX_CIPHERTEXT: usize = 6144;
const JSON_11: &str = "application/x-amz-json-1.1";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub struct MockKmsConfig {
    /// Keys and their material (JSON, mode 0600); created if absent.
    pub state_file: PathBuf,
    /// The one key policy that applies to every key.
    pub policy: Policy,
    /// Root that attestation documents must chain to (the mock CA, or AWS's).
    pub attestation_root_der: Vec<u8>,
    pub region: String,
    pub account: String,
    /// The principal every request is evaluated as.
    pub caller_arn: String,
    /// `Some`: requests signed with another access key id are refused.
    pub allowed_access_keys: Option<Vec<String>>,
    /// How far an attestation document's timestamp may be from now, either way.
    pub attestation_max_age: Duration,
}

impl MockKmsConfig {
    /// Defaults: us-east-1, account 111122223333, caller role `signer-host`, any
    /// access key, documents at most 300 s old.
    pub fn new(state_file: PathBuf, policy: Policy, attestation_root_der: Vec<u8>) -> Self {
        MockKmsConfig {
            state_file,
            policy,
            attestation_root_der,
            region: "us-east-1".into(),
            account: "111122223333".into(),
            caller_arn: "arn:aws:iam::111122223333:role/signer-host".into(),
            allowed_access_keys: None,
            attestation_max_age: Duration::from_mins(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MockKmsError {
    #[error(transparent)]
    KeyStore(#[from] KeyStoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS server configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Fault switches for tests; see the module docs.
#[derive(Debug, Default)]
pub struct Faults {
    latency_ms: AtomicU64,
    throttle: AtomicBool,
    unavailable: AtomicBool,
    clock_skew_s: AtomicI64,
    /// KMS requests received (the admin route not counted), so tests see retries.
    requests: AtomicU64,
}

/// A snapshot of [`Faults`], and the admin route's answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultState {
    pub latency_ms: u64,
    pub throttle: bool,
    pub unavailable: bool,
    pub clock_skew_s: i64,
    /// KMS requests received so far (read-only).
    pub requests: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultUpdate {
    latency_ms: Option<u64>,
    throttle: Option<bool>,
    unavailable: Option<bool>,
    clock_skew_s: Option<i64>,
}

impl Faults {
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.latency_ms.store(ms, Ordering::Relaxed);
    }
    pub fn set_throttle(&self, on: bool) {
        self.throttle.store(on, Ordering::Relaxed);
    }
    pub fn set_unavailable(&self, on: bool) {
        self.unavailable.store(on, Ordering::Relaxed);
    }
    /// Shifts the mock's clock (attestation freshness and validity) by `seconds`.
    pub fn set_clock_skew(&self, seconds: i64) {
        self.clock_skew_s.store(seconds, Ordering::Relaxed);
    }
    pub fn state(&self) -> FaultState {
        FaultState {
            latency_ms: self.latency_ms.load(Ordering::Relaxed),
            throttle: self.throttle.load(Ordering::Relaxed),
            unavailable: self.unavailable.load(Ordering::Relaxed),
            clock_skew_s: self.clock_skew_s.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }
    fn apply(&self, update: &FaultUpdate) {
        if let Some(ms) = update.latency_ms {
            self.latency_ms.store(ms, Ordering::Relaxed);
        }
        if let Some(on) = update.throttle {
            self.set_throttle(on);
        }
        if let Some(on) = update.unavailable {
            self.set_unavailable(on);
        }
        if let Some(s) = update.clock_skew_s {
            self.set_clock_skew(s);
        }
    }
}

struct Shared {
    keystore: Arc<KeyStore>,
    faults: Arc<Faults>,
    policy: Policy,
    root_der: Vec<u8>,
    account: String,
    caller_arn: String,
    allowed_access_keys: Option<Vec<String>>,
    max_age: Duration,
    /// Documents whose chain and signature were verified, by SHA-256 of their bytes.
    verified: std::sync::Mutex<HashMap<[u8; 32], VerifiedDocument>>,
}

/// What a verified document says, kept so that its chain is verified once (a real
/// service caches the same way); its freshness is still checked on every call.
#[derive(Clone)]
struct VerifiedDocument {
    timestamp_ms: u64,
    attested: Attested,
}

/// Verified documents kept at most; stale ones are dropped first.
const VERIFIED_DOCUMENTS: usize = 1024;

/// A bound, not yet serving, mock KMS.
pub struct MockKms {
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl MockKms {
    /// Opens the key store, generates a fresh TLS CA and `localhost` leaf, writes the CA
    /// as PEM to `ca_pem_out` (for the clients' root store) and binds `addr`.
    pub async fn bind(
        config: MockKmsConfig,
        addr: SocketAddr,
        ca_pem_out: &Path,
    ) -> Result<MockKms, MockKmsError> {
        let keystore = KeyStore::open(&config.state_file, &config.region, &config.account)?;
        let (tls, ca_pem) = tls_identity()?;
        std::fs::write(ca_pem_out, ca_pem).map_err(|source| MockKmsError::Io {
            what: format!("writing the CA certificate to {}", ca_pem_out.display()),
            source,
        })?;
        let io = |source| MockKmsError::Io {
            what: format!("binding {addr}"),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(io)?;
        let local_addr = listener.local_addr().map_err(io)?;
        Ok(MockKms {
            listener,
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
            local_addr,
            shared: Arc::new(Shared {
                keystore: Arc::new(keystore),
                faults: Arc::default(),
                policy: config.policy,
                root_der: config.attestation_root_der,
                account: config.account,
                caller_arn: config.caller_arn,
                allowed_access_keys: config.allowed_access_keys,
                max_age: config.attestation_max_age,
                verified: std::sync::Mutex::default(),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn faults(&self) -> Arc<Faults> {
        self.shared.faults.clone()
    }

    /// The served key store, to create keys or encrypt without going through HTTPS.
    pub fn keystore(&self) -> Arc<KeyStore> {
        self.shared.keystore.clone()
    }

    /// Serves until `shutdown` is cancelled, then lets requests in flight finish (at
    /// most 5 s).
    pub async fn serve(self, shutdown: CancellationToken) {
        let tracker = tokio_util::task::TaskTracker::new();
        loop {
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // E.g. out of file descriptors: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (tls, shared, shutdown) = (self.tls.clone(), self.shared.clone(), shutdown.clone());
            tracker.spawn(async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                };
                let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let mut conn = std::pin::pin!(conn);
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    () = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("requests still running {SHUTDOWN_GRACE:?} after shutdown; abandoned");
        }
    }
}

/// A throwaway CA and a leaf for `localhost`, 127.0.0.1 and ::1 that it signs.
fn tls_identity() -> Result<(rustls::ServerConfig, String), MockKmsError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "signer mock-kms CA (development only)");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf_cert.der().clone(), ca_cert.der().clone()],
        key.into(),
    )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, ca_cert.pem()))
}

/// A KMS error answer: `{"__type": code, "message": ...}`.
#[derive(Debug)]
struct KmsError {
    code: &'static str,
    message: String,
}

fn kms_error(code: &'static str, message: impl Into<String>) -> KmsError {
    KmsError {
        code,
        message: message.into(),
    }
}

fn invalid(message: impl Into<String>) -> KmsError {
    kms_error("ValidationException", message)
}

fn denied(message: impl Into<String>) -> KmsError {
    kms_error("AccessDeniedException", message)
}

impl From<KeyStoreError> for KmsError {
    fn from(e: KeyStoreError) -> Self {
        let code = match &e {
            KeyStoreError::NotFound(_) => "NotFoundException",
            KeyStoreError::InvalidCiphertext => "InvalidCiphertextException",
            KeyStoreError::IncorrectKey { .. } => "IncorrectKeyException",
            KeyStoreError::State { .. } => "KMSInternalException",
        };
        kms_error(code, e.to_string())
    }
}

/// Every operation's fields; each operation reads the ones it knows. Unknown fields
/// (GrantTokens, DryRun, ...) are ignored, as the protocol allows.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Input {
    key_id: Option<String>,
    description: Option<String>,
    plaintext: Option<String>,
    ciphertext_blob: Option<String>,
    encryption_context: BTreeMap<String, String>,
    encryption_algorithm: Option<String>,
    key_spec: Option<String>,
    number_of_bytes: Option<u64>,
    recipient: Option<RecipientInput>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RecipientInput {
    key_encryption_algorithm: Option<String>,
    attestation_document: Option<String>,
}

/// A verified, fresh recipient.
#[derive(Clone)]
struct Attested {
    spki: Vec<u8>,
    pcrs: BTreeMap<u8, String>,
}

fn blob(field: &str, value: Option<&str>, max: usize) -> Result<Vec<u8>, KmsError> {
    let value = value.ok_or_else(|| invalid(format!("{field} is required")))?;
    let bytes = B64
        .decode(value)
        .map_err(|e| invalid(format!("{field}: expected base64, {e}")))?;
    if bytes.is_empty() || bytes.len() > max {
        return Err(invalid(format!(
            "{field}: expected 1 to {max} bytes, got {}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn required<'a>(field: &str, value: Option<&'a String>) -> Result<&'a str, KmsError> {
    value
        .map(String::as_str)
        .ok_or_else(|| invalid(format!("{field} is required")))
}

impl Shared {
    /// Evaluates the key policy for `action` on the key `key_id` (`None`: CreateKey).
    fn authorize(
        &self,
        action: &str,
        key_id: Option<&str>,
        context: &BTreeMap<String, String>,
        attested: Option<&Attested>,
    ) -> Result<(), KmsError> {
        let resource = match key_id {
            Some(key_id) => self.arn(key_id)?,
            None => String::new(),
        };
        let mut keys: BTreeMap<String, String> = context
            .iter()
            .map(|(k, v)| (format!("kms:EncryptionContext:{k}"), v.clone()))
            .collect();
        if let Some(attested) = attested {
            for (index, hex) in attested.pcrs.iter().filter(|(i, _)| **i < 16) {
                keys.insert(format!("kms:RecipientAttestation:PCR{index}"), hex.clone());
            }
            if let Some(pcr0) = attested.pcrs.get(&0) {
                keys.insert("kms:RecipientAttestation:ImageSha384".into(), pcr0.clone());
            }
        }
        let decision = self.policy.evaluate(&RequestContext {
            principal_arn: self.caller_arn.clone(),
            action: action.to_string(),
            resource,
            keys,
        });
        match decision.effect {
            Effect::Allow => Ok(()),
            Effect::Deny => Err(denied(format!(
                "{} is not authorized to perform {action}: {}",
                self.caller_arn, decision.reason
            ))),
        }
    }

    fn attest(&self, recipient: &RecipientInput) -> Result<Attested, KmsError> {
        let algorithm = recipient
            .key_encryption_algorithm
            .as_deref()
            .unwrap_or("RSAES_OAEP_SHA_256");
        if algorithm != "RSAES_OAEP_SHA_256" {
            return Err(invalid(format!(
                "Recipient.KeyEncryptionAlgorithm: expected RSAES_OAEP_SHA_256, got {algorithm}"
            )));
        }
        let document = blob(
            "Recipient.AttestationDocument",
            recipient.attestation_document.as_deref(),
            common::attestation::document::MAX_DOCUMENT_LEN,
        )?;
        let skew_ms = i128::from(self.faults.clock_skew_s.load(Ordering::Relaxed)) * 1000;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i128)
            + skew_ms;
        let digest: [u8; 32] = sha2::Sha256::digest(&document).into();
        let known = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&digest)
            .cloned();
        let verified = match known {
            Some(verified) => verified,
            None => self.verify_document(&document, digest, now_ms)?,
        };
        let age_ms = now_ms - i128::from(verified.timestamp_ms);
        if age_ms.unsigned_abs() > self.max_age.as_millis() {
            return Err(denied(format!(
                "attestation document is stale: its timestamp is {age_ms} ms from now; expected within {} ms",
                self.max_age.as_millis()
            )));
        }
        Ok(verified.attested)
    }

    /// Verifies a document's chain, signature and key, and remembers the result.
    fn verify_document(
        &self,
        document: &[u8],
        digest: [u8; 32],
        now_ms: i128,
    ) -> Result<VerifiedDocument, KmsError> {
        let doc =
            common::attestation::document::verify(document, &self.root_der, (now_ms / 1000) as i64)
                .map_err(|e| denied(format!("attestation document refused: {e}")))?;
        let spki = doc.public_key.clone().ok_or_else(|| {
            denied("attestation document has no public_key; expected an RSA SubjectPublicKeyInfo")
        })?;
        recipient::recipient_key(&spki).map_err(|e| denied(e.to_string()))?;
        let pcrs = doc
            .pcrs
            .keys()
            .filter_map(|&i| doc.pcr_hex(i).map(|hex| (i, hex)))
            .collect();
        let verified = VerifiedDocument {
            timestamp_ms: doc.timestamp_ms,
            attested: Attested { spki, pcrs },
        };
        let mut cache = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= VERIFIED_DOCUMENTS {
            let max_age = self.max_age.as_millis();
            cache.retain(|_, kept| {
                (now_ms - i128::from(kept.timestamp_ms)).unsigned_abs() <= max_age
            });
            if cache.len() >= VERIFIED_DOCUMENTS {
                cache.clear();
            }
        }
        cache.insert(digest, verified.clone());
        Ok(verified)
    }

    fn arn(&self, key_id: &str) -> Result<String, KmsError> {
        Ok(self.keystore.describe(key_id)?.arn)
    }

    fn metadata(&self, info: &KeyInfo) -> Value {
        json!({"KeyMetadata": {
            "KeyId": info.key_id, "Arn": info.arn, "AWSAccountId": self.account,
            "CreationDate": info.created_unix, "Enabled": true,
            "Description": info.description, "KeyUsage": "ENCRYPT_DECRYPT",
            "KeyState": "Enabled", "Origin": "AWS_KMS", "KeyManager": "CUSTOMER",
            "KeySpec": "SYMMETRIC_DEFAULT", "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
            "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"], "MultiRegion": false,
        }})
    }

    /// Runs one operation. A plaintext leaves only as `Plaintext` without a recipient,
    /// or sealed to the attested key with one.
    fn operation(&self, op: &str, input: &Input) -> Result<Value, KmsError> {
        if let Some(alg) = input.encryption_algorithm.as_deref()
            && alg != "SYMMETRIC_DEFAULT"
        {
            return Err(invalid(format!(
                "EncryptionAlgorithm: expected SYMMETRIC_DEFAULT, got {alg}"
            )));
        }
        let context = &input.encryption_context;
        let attested = match (&input.recipient, op) {
            (Some(r), "Decrypt" | "GenerateDataKey") => Some(self.attest(r)?),
            _ => None,
        };
        let deliver = |mut out: Value, plaintext: &[u8]| -> Result<Value, KmsError> {
            out["EncryptionAlgorithm"] = json!("SYMMETRIC_DEFAULT");
            match &attested {
                Some(a) => {
                    let sealed = recipient::envelope(&a.spki, plaintext)
                        .map_err(|e| kms_error("KMSInternalException", e.to_string()))?;
                    out["CiphertextForRecipient"] = json!(B64.encode(sealed));
                }
                None => out["Plaintext"] = json!(B64.encode(plaintext)),
            }
            Ok(out)
        };
        match op {
            "CreateKey" => {
                self.authorize("kms:CreateKey", None, context, None)?;
                let description = input.description.as_deref().unwrap_or_default();
                Ok(self.metadata(&self.keystore.create_key(description, None)?))
            }
            "DescribeKey" => {
                let key_id = self
                    .keystore
                    .resolve(required("KeyId", input.key_id.as_ref())?)?;
                self.authorize("kms:DescribeKey", Some(&key_id), context, None)?;
                Ok(self.metadata(&self.keystore.describe(&key_id)?))
            }
            "Encrypt" => {
                let key_id = self
                    .keystore
                    .resolve(required("KeyId", input.key_id.as_ref())?)?;
                let plaintext = Zeroizing::new(blob(
                    "Plaintext",
                    input.plaintext.as_deref(),
                    MAX_PLAINTEXT,
                )?);
                self.authorize("kms:Encrypt", Some(&key_id), context, None)?;
                let sealed = self.keystore.encrypt(&key_id, &plaintext, context)?;
                Ok(
                    json!({"CiphertextBlob": B64.encode(sealed), "KeyId": self.arn(&key_id)?,
                          "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}),
                )
            }
            "Decrypt" => {
                let sealed = blob(
                    "CiphertextBlob",
                    input.ciphertext_blob.as_deref(),
                    MAX_CIPHERTEXT,
                )?;
                if let Some(requested) = &input.key_id {
                    self.keystore.resolve(requested)?;
                }
                // Authorized against the key the blob names, as KMS does.
                // A blob naming a key we never had is simply not ours.
                let blob_key = crate::keystore::blob_key_id(&sealed)
                    .ok()
                    .filter(|key_id| self.keystore.describe(key_id).is_ok())
                    .ok_or(KeyStoreError::InvalidCiphertext)?;
                self.authorize("kms:Decrypt", Some(&blob_key), context, attested.as_ref())?;
                let (key_id, plaintext) =
                    self.keystore
                        .decrypt(&sealed, input.key_id.as_deref(), context)?;
                deliver(json!({"KeyId": self.arn(&key_id)?}), &plaintext)
            }
            "GenerateDataKey" => {
                let key_id = self
                    .keystore
                    .resolve(required("KeyId", input.key_id.as_ref())?)?;
                let len = data_key_length(input)?;
                self.authorize(
                    "kms:GenerateDataKey",
                    Some(&key_id),
                    context,
                    attested.as_ref(),
                )?;
                let mut data_key = Zeroizing::new(vec![0u8; len]);
                rand::rng().fill_bytes(&mut data_key);
                let sealed = self.keystore.encrypt(&key_id, &data_key, context)?;
                let out =
                    json!({"CiphertextBlob": B64.encode(sealed), "KeyId": self.arn(&key_id)?});
                deliver(out, &data_key)
            }
            other => Err(kms_error(
                "UnknownOperationException",
                format!("operation {other:?} is not implemented by this mock"),
            )),
        }
    }
}

/// GenerateDataKey's length: `KeySpec` or `NumberOfBytes`, exactly one.
fn data_key_length(input: &Input) -> Result<usize, KmsError> {
    match (input.key_spec.as_deref(), input.number_of_bytes) {
        (Some("AES_256"), None) => Ok(32),
        (Some("AES_128"), None) => Ok(16),
        (None, Some(n @ 1..=1024)) => Ok(n as usize),
        (spec, bytes) => Err(invalid(format!(
            "expected KeySpec AES_256 or AES_128, or NumberOfBytes 1 to 1024, not both; got KeySpec {spec:?}, NumberOfBytes {bytes:?}"
        ))),
    }
}

fn request_id() -> String {
    crate::keystore::random_uuid()
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, KmsError> {
    Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|e| {
            invalid(format!(
                "request body: {e} (at most {MAX_BODY_BYTES} bytes)"
            ))
        })
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/__mock/faults" {
        return Ok(admin(&shared, req).await);
    }
    let started = Instant::now();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let op = header("x-amz-target")
        .and_then(|t| t.strip_prefix("TrentService.").map(str::to_string))
        .unwrap_or_default();
    // SigV4: `AWS4-HMAC-SHA256 Credential=AKID/date/region/kms/aws4_request, ...`.
    let access_key = header("authorization").and_then(|auth| {
        let (_, credential) = auth.split_once("Credential=")?;
        credential.split('/').next().map(str::to_string)
    });
    shared.faults.requests.fetch_add(1, Ordering::Relaxed);
    let faults = shared.faults.state();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if faults.unavailable {
        tracing::debug!(op, "unavailable fault: 503");
        let mut response = response(StatusCode::SERVICE_UNAVAILABLE, JSON_11, Vec::new());
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return Ok(response);
    }
    let result = async {
        if req.method() != Method::POST || req.uri().path() != "/" {
            return Err(kms_error(
                "UnknownOperationException",
                "expected POST / with X-Amz-Target: TrentService.<Operation>",
            ));
        }
        let body = read_body(req).await?;
        if faults.throttle {
            return Err(kms_error("ThrottlingException", "Rate exceeded (mock throttle fault)"));
        }
        if let Some(allowed) = &shared.allowed_access_keys
            && !access_key.as_ref().is_some_and(|k| allowed.contains(k))
        {
            return Err(kms_error(
                "UnrecognizedClientException",
                format!(
                    "the security token included in the request is invalid: access key {access_key:?} is not one of the configured ones"
                ),
            ));
        }
        let input: Input = serde_json::from_slice(&body)
            .map_err(|e| invalid(format!("request body is not the expected JSON: {e}")))?;
        shared.operation(&op, &input)
    }
    .await;
    let (status, code, body) = match result {
        Ok(value) => (StatusCode::OK, None, value),
        Err(e) => {
            let status = match e.code {
                "KMSInternalException" => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            (
                status,
                Some(e.code),
                json!({"__type": e.code, "message": e.message}),
            )
        }
    };
    tracing::debug!(
        op,
        access_key = access_key.as_deref().unwrap_or("-"),
        status = status.as_u16(),
        error = code.unwrap_or("-"),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "kms request"
    );
    let mut response = response(status, JSON_11, body.to_string().into_bytes());
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&request_id()) {
        headers.insert(HeaderName::from_static("x-amzn-requestid"), id);
    }
    if let Some(code) = code {
        headers.insert(
            HeaderName::from_static("x-amzn-errortype"),
            HeaderValue::from_static(code),
        );
    }
    Ok(response)
}

/// `GET|POST /__mock/faults`: test-only fault control; see the module docs.
async fn admin(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let is_post = req.method() == Method::POST;
    let update = async {
        let body = read_body(req).await?;
        if !is_post || body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice::<FaultUpdate>(&body)
            .map(Some)
            .map_err(|e| invalid(format!("expected {{\"latency_ms\", \"throttle\", \"unavailable\", \"clock_skew_s\"}}: {e}")))
    };
    match update.await {
        Ok(update) => {
            if let Some(update) = update {
                shared.faults.apply(&update);
                tracing::info!(faults = ?shared.faults.state(), "fault switches changed");
            }
            let body = serde_json::to_vec(&shared.faults.state()).unwrap_or_default();
            response(StatusCode::OK, "application/json", body)
        }
        Err(e) => {
            let body = json!({"__type": e.code, "message": e.message}).to_string();
            response(
                StatusCode::BAD_REQUEST,
                "application/json",
                body.into_bytes(),
            )
        }
    }
}

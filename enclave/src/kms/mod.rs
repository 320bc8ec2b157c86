//! Everything the enclave needs to get a key out of KMS (docs/design.md §4): the [`Kms`]
//! seam the signing path calls, the `aws-sdk-kms` client behind it, the connector that
//! carries its TLS over the host's relay, and the recipient key that opens KMS's
//! answers.

pub mod client;
pub mod connector;
pub mod metered;
pub mod recipient;

use common::wire::messages::AwsCredentials;
use futures_util::future::BoxFuture;

/// What the enclave asks of KMS. The production implementation is
/// [`client::KmsClient`]; unit tests put a fake behind it so the enclave's decisions
/// are tested in-process.
pub trait Kms: Send + Sync {
    /// `Decrypt` with a `Recipient`, naming `key_id` (the measured key ARN): the answer
    /// is KMS's `CiphertextForRecipient` (a CMS envelope for the recipient key in
    /// `attestation_document`), never a plaintext, with the key KMS says it used.
    fn decrypt_for_recipient<'a>(
        &'a self,
        ciphertext_blob: &'a [u8],
        key_id: &'a str,
        encryption_context: &'a [(&'a str, &'a str)],
        attestation_document: &'a [u8],
    ) -> BoxFuture<'a, Result<RecipientAnswer, KmsError>>;

    /// `GenerateDataKey` (AES-256) with a `Recipient`, for `key_id` (the measured key
    /// ARN): the data key comes back only as a CMS envelope for the recipient key, next
    /// to its `CiphertextBlob` for storage.
    fn generate_data_key_for_recipient<'a>(
        &'a self,
        key_id: &'a str,
        encryption_context: &'a [(&'a str, &'a str)],
        attestation_document: &'a [u8],
    ) -> BoxFuture<'a, Result<GeneratedDataKey, KmsError>>;

    /// Replaces the AWS credentials KMS calls are signed with.
    fn set_credentials(&self, credentials: AwsCredentials);
}

/// What KMS answered to a `Recipient` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientAnswer {
    /// The ARN of the key KMS used, as its TLS-authenticated answer names it.
    pub key_id: Option<String>,
    /// The CMS envelope for the enclave's recipient key.
    pub ciphertext_for_recipient: Vec<u8>,
}

impl RecipientAnswer {
    /// The envelope, if KMS used the `expected` key: an answer about any other key
    /// (one the host's own AWS account may control) is never opened.
    pub fn for_key(self, expected: &str) -> Result<Vec<u8>, KmsError> {
        if self.key_id.as_deref() == Some(expected) {
            Ok(self.ciphertext_for_recipient)
        } else {
            Err(KmsError::KeyMismatch {
                expected: expected.to_string(),
                actual: self.key_id.unwrap_or_else(|| "no KeyId".to_string()),
            })
        }
    }
}

/// What KMS answered to `GenerateDataKey` with a `Recipient`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedDataKey {
    /// The data key for the recipient key, and the key KMS used.
    pub answer: RecipientAnswer,
    /// The data key encrypted under the KMS key: what the host stores.
    pub ciphertext_blob: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error("KMS denied access: {0}")]
    AccessDenied(String),
    #[error(
        "KMS refused the ciphertext (tampered, another key, or a different encryption context): {0}"
    )]
    InvalidCiphertext(String),
    #[error("KMS key not found: {0}")]
    NotFound(String),
    #[error(
        "KMS throttled the call (retried with jittered backoff while the retry quota lasted); back off and retry: {0}"
    )]
    Throttled(String),
    #[error("KMS did not answer: {0}")]
    Unavailable(String),
    #[error("no AWS credentials: {0}")]
    NoCredentials(String),
    #[error(
        "KMS rejected the AWS credentials the host pushed ({code}: {message}); the host \
         re-pushes them from the instance role on every refresh"
    )]
    CredentialsRejected { code: String, message: String },
    #[error("KMS error {code}: {message}")]
    Other { code: String, message: String },
    #[error("KMS answered without a CiphertextForRecipient")]
    MissingCiphertextForRecipient,
    #[error("KMS answered GenerateDataKey without a CiphertextBlob")]
    MissingCiphertextBlob,
    #[error("bad KMS settings: {0}")]
    Settings(String),
    #[error("KMS answered for key {actual}, not the measured key {expected}")]
    KeyMismatch { expected: String, actual: String },
}

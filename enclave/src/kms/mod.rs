//! Everything the enclave needs to get a key out of KMS (docs/design.md §4): the [`Kms`]
//! seam the signing path calls, the `aws-sdk-kms` client behind it, the connector that
//! carries its TLS over the host's relay, and the recipient key that opens KMS's
//! answers.

pub mod client;
pub mod connector;
pub mod recipient;

use common::wire::messages::AwsCredentials;
use futures_util::future::BoxFuture;

/// What the enclave asks of KMS. The production implementation is
/// [`client::KmsClient`]; unit tests put a fake behind it so the enclave's decisions
/// are tested in-process.
pub trait Kms: Send + Sync {
    /// `Decrypt` with a `Recipient`: the answer is KMS's `CiphertextForRecipient` (a CMS
    /// envelope for the recipient key in `attestation_document`), never a plaintext.
    fn decrypt_for_recipient<'a>(
        &'a self,
        ciphertext_blob: &'a [u8],
        key_id: Option<&'a str>,
        encryption_context: &'a [(&'a str, &'a str)],
        attestation_document: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, KmsError>>;

    /// Replaces the AWS credentials KMS calls are signed with.
    fn set_credentials(&self, credentials: AwsCredentials);
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
    #[error("KMS is throttling requests: {0}")]
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
    #[error("bad KMS settings: {0}")]
    Settings(String),
}

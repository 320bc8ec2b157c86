//! KMS calls from inside the enclave: `aws-sdk-kms` over [`RelayHttpClient`], with
//! credentials the host pushes in (the enclave has no instance metadata service).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, future};
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{BehaviorVersion, IdentityCache, Region};
use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeyEncryptionMechanism, RecipientInfo};
use common::wire::transport::Endpoint;

use super::connector::RelayHttpClient;
use super::{GeneratedDataKey, Kms, KmsError, RecipientAnswer};
use common::wire::messages::AwsCredentials;
use futures_util::future::BoxFuture;

/// Where and how to reach KMS.
#[derive(Debug, Clone)]
pub struct KmsSettings {
    pub region: String,
    /// `https://kms.<region>.amazonaws.com`, or the mock's `https://localhost:PORT`.
    pub endpoint_url: String,
    /// The host's relay: vsock://3:PORT on Nitro, unix://PATH in mock-vsock mode.
    pub relay: Endpoint,
    /// Root certificates for the KMS endpoint's TLS. Production: the public web roots.
    pub roots: rustls::RootCertStore,
    /// Attempts per call, including the first; retries (throttling, 5xx, timeouts,
    /// never a refusal) wait a full-jitter exponential backoff from `initial_backoff`
    /// up to `max_backoff`.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub attempt_timeout: Duration,
    /// The whole call, retries included.
    pub operation_timeout: Duration,
}

/// Credentials as the host last pushed them. Swapped atomically; readers never block.
#[derive(Debug, Clone, Default)]
pub struct PushedCredentials(Arc<ArcSwapOption<Credentials>>);

impl PushedCredentials {
    pub fn set(
        &self,
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
        expires: Option<SystemTime>,
    ) {
        self.0.store(Some(Arc::new(Credentials::new(
            access_key_id,
            secret_access_key,
            session_token,
            expires,
            "signer-host",
        ))));
    }
}

impl ProvideCredentials for PushedCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::ready(self.0.load_full().map(|c| (*c).clone()).ok_or_else(
            || CredentialsError::not_loaded("the host has not sent AWS credentials yet"),
        ))
    }
}

#[derive(Debug, Clone)]
pub struct KmsClient {
    client: aws_sdk_kms::Client,
    credentials: PushedCredentials,
}

impl KmsClient {
    pub fn new(
        settings: KmsSettings,
        credentials: PushedCredentials,
    ) -> Result<KmsClient, KmsError> {
        let host = settings
            .endpoint_url
            .strip_prefix("https://")
            .and_then(|rest| rest.split(['/', ':']).next())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                KmsError::Settings(format!("{} is not an https:// URL", settings.endpoint_url))
            })?
            .to_string();
        let http = RelayHttpClient::new(settings.relay, &host, settings.roots)
            .map_err(|e| KmsError::Settings(format!("TLS: {e}")))?;
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region))
            .endpoint_url(settings.endpoint_url)
            .http_client(http)
            .credentials_provider(credentials.clone())
            // Pushed credentials change under us; the provider is already a cheap load.
            .identity_cache(IdentityCache::no_cache())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(settings.max_attempts.max(1))
                    .with_initial_backoff(settings.initial_backoff)
                    .with_max_backoff(settings.max_backoff),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(settings.attempt_timeout)
                    .operation_timeout(settings.operation_timeout)
                    .build(),
            )
            .build();
        Ok(KmsClient {
            client: aws_sdk_kms::Client::from_conf(config),
            credentials,
        })
    }

    /// `Decrypt` with a `Recipient`: KMS checks the attestation against the key policy
    /// and answers with the plaintext encrypted to our RSA key (never in the clear).
    async fn decrypt(
        &self,
        ciphertext_blob: &[u8],
        key_id: &str,
        encryption_context: &[(&str, &str)],
        attestation_document: &[u8],
    ) -> Result<RecipientAnswer, KmsError> {
        let recipient = recipient_info(attestation_document);
        let mut request = self
            .client
            .decrypt()
            .ciphertext_blob(Blob::new(ciphertext_blob))
            .key_id(key_id)
            .recipient(recipient);
        for (k, v) in encryption_context {
            request = request.encryption_context(*k, *v);
        }
        let output = request.send().await.map_err(|e| classify_sdk_error(&e))?;
        Ok(RecipientAnswer {
            key_id: output.key_id().map(str::to_string),
            ciphertext_for_recipient: output
                .ciphertext_for_recipient()
                .map(|b| b.as_ref().to_vec())
                .ok_or(KmsError::MissingCiphertextForRecipient)?,
        })
    }

    /// `GenerateDataKey` (AES_256) with a `Recipient`: the plaintext data key reaches
    /// only the attested recipient key.
    async fn generate_data_key(
        &self,
        key_id: &str,
        encryption_context: &[(&str, &str)],
        attestation_document: &[u8],
    ) -> Result<GeneratedDataKey, KmsError> {
        let recipient = recipient_info(attestation_document);
        let mut request = self
            .client
            .generate_data_key()
            .key_id(key_id)
            .key_spec(DataKeySpec::Aes256)
            .recipient(recipient);
        for (k, v) in encryption_context {
            request = request.encryption_context(*k, *v);
        }
        let output = request.send().await.map_err(|e| classify_sdk_error(&e))?;
        Ok(GeneratedDataKey {
            answer: RecipientAnswer {
                key_id: output.key_id().map(str::to_string),
                ciphertext_for_recipient: output
                    .ciphertext_for_recipient()
                    .map(|b| b.as_ref().to_vec())
                    .ok_or(KmsError::MissingCiphertextForRecipient)?,
            },
            ciphertext_blob: output
                .ciphertext_blob()
                .map(|b| b.as_ref().to_vec())
                .ok_or(KmsError::MissingCiphertextBlob)?,
        })
    }
}

impl Kms for KmsClient {
    fn decrypt_for_recipient<'a>(
        &'a self,
        ciphertext_blob: &'a [u8],
        key_id: &'a str,
        encryption_context: &'a [(&'a str, &'a str)],
        attestation_document: &'a [u8],
    ) -> BoxFuture<'a, Result<RecipientAnswer, KmsError>> {
        Box::pin(self.decrypt(
            ciphertext_blob,
            key_id,
            encryption_context,
            attestation_document,
        ))
    }

    fn generate_data_key_for_recipient<'a>(
        &'a self,
        key_id: &'a str,
        encryption_context: &'a [(&'a str, &'a str)],
        attestation_document: &'a [u8],
    ) -> BoxFuture<'a, Result<GeneratedDataKey, KmsError>> {
        Box::pin(self.generate_data_key(key_id, encryption_context, attestation_document))
    }

    fn set_credentials(&self, credentials: AwsCredentials) {
        let expires = credentials
            .expires_unix
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        self.credentials.set(
            credentials.access_key_id,
            credentials.secret_access_key,
            credentials.session_token,
            expires,
        );
    }
}

/// `Recipient`: KMS answers for the RSA key in the attestation document, never in the
/// clear.
fn recipient_info(attestation_document: &[u8]) -> RecipientInfo {
    RecipientInfo::builder()
        .key_encryption_algorithm(KeyEncryptionMechanism::RsaesOaepSha256)
        .attestation_document(Blob::new(attestation_document))
        .build()
}

fn classify_sdk_error<E, R>(error: &aws_sdk_kms::error::SdkError<E, R>) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_kms::error::SdkError;
    match error {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let code = err.code().unwrap_or("Unknown").to_string();
            let message = err.message().unwrap_or_default().to_string();
            match code.as_str() {
                "AccessDeniedException" => KmsError::AccessDenied(message),
                "InvalidCiphertextException" | "IncorrectKeyException" => {
                    KmsError::InvalidCiphertext(message)
                }
                "NotFoundException" => KmsError::NotFound(message),
                "ThrottlingException" | "LimitExceededException" => KmsError::Throttled(message),
                "ExpiredTokenException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "IncompleteSignature" => KmsError::CredentialsRejected { code, message },
                _ => KmsError::Other { code, message },
            }
        }
        // The credentials provider fails inside the dispatch: not a KMS outage.
        SdkError::DispatchFailure(dispatch)
            if dispatch
                .as_connector_error()
                .is_some_and(|e| lacks_credentials(e)) =>
        {
            KmsError::NoCredentials(format!(
                "{}",
                aws_smithy_types::error::display::DisplayErrorContext(error)
            ))
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            KmsError::Unavailable(format!(
                "{}",
                aws_smithy_types::error::display::DisplayErrorContext(error)
            ))
        }
        _ => {
            let text = format!(
                "{}",
                aws_smithy_types::error::display::DisplayErrorContext(error)
            );
            if text.contains("credentials") {
                KmsError::NoCredentials(text)
            } else {
                KmsError::Unavailable(text)
            }
        }
    }
}

/// Whether a credentials error is anywhere in `error`'s chain of sources.
fn lacks_credentials(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(current) = next {
        if current.downcast_ref::<CredentialsError>().is_some() {
            return true;
        }
        next = current.source();
    }
    false
}

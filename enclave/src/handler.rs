//! Turns one request into one response. Each request runs in its own task, so a slow
//! one (a KMS round trip) never holds up the others.

use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use common::protocol::{AwsCredentials, KeyFormat, KeyMaterial, Request, Response, SignatureInfo};
use common::soroban::{
    auth_payload_hash, authorizing_account, decode_auth_entry, encode_auth_entry,
    set_auth_signature,
};
use common::stellar::{
    add_signature, decode_envelope, encode_envelope, hex, network_id, required_signers,
    signature_hint, transaction_hash,
};
use common::{ErrorCode, WireError};
use futures_util::future::join_all;
use tracing::{info, warn};

use crate::BUILD_FLAVOR;
use common::policy::SigningPolicy;

use crate::attestor::Attestor;
use crate::cache::KeyCache;
use crate::keys::{KeyError, open_sealed_seed, seed_from_kms_direct, sign_checked};
use crate::kms::client::{KmsClient, KmsError};
use crate::kms::recipient::RecipientError;

/// Upper bound for the test-only `Ping` delay, so a mistaken value cannot park a task
/// for hours.
#[cfg(feature = "mock")]
const MAX_TEST_DELAY_MS: u32 = 30_000;

/// Most signers one request may name (the envelope holds at most 20 signatures).
const MAX_SIGNERS: usize = 20;

/// What signing needs: the network this enclave signs for, KMS, and the attested
/// recipient identity.
pub struct Signing {
    pub network_passphrase: String,
    pub network_id: [u8; 32],
    pub kms: KmsClient,
    pub attestor: Arc<Attestor>,
    /// Opt-in: decrypted seeds kept for a bounded time and number of uses.
    pub cache: Option<Arc<KeyCache>>,
    /// What the keys may sign, from this enclave's own configuration.
    pub policy: SigningPolicy,
}

impl Signing {
    pub fn new(
        network_passphrase: String,
        kms: KmsClient,
        attestor: Arc<Attestor>,
        policy: SigningPolicy,
    ) -> Signing {
        Signing {
            network_id: network_id(&network_passphrase),
            network_passphrase,
            kms,
            attestor,
            cache: None,
            policy,
        }
    }
}

#[derive(Default)]
pub struct Handler {
    signing: Option<Signing>,
}

fn wire(code: ErrorCode, message: impl Into<String>) -> WireError {
    WireError::new(code, message)
}

impl From<KmsError> for WireError {
    fn from(e: KmsError) -> WireError {
        let code = match &e {
            KmsError::AccessDenied(_) => ErrorCode::KmsAccessDenied,
            KmsError::InvalidCiphertext(_) | KmsError::NotFound(_) => {
                ErrorCode::KmsInvalidCiphertext
            }
            KmsError::NoCredentials(_) | KmsError::CredentialsRejected { .. } => {
                ErrorCode::NoCredentials
            }
            KmsError::Settings(_) => ErrorCode::Internal,
            KmsError::Throttled(_)
            | KmsError::Unavailable(_)
            | KmsError::Other { .. }
            | KmsError::MissingCiphertextForRecipient => ErrorCode::KmsUnavailable,
        };
        wire(code, e.to_string())
    }
}

impl From<KeyError> for WireError {
    fn from(e: KeyError) -> WireError {
        let code = match &e {
            KeyError::PublicKeyMismatch { .. } => ErrorCode::PublicKeyMismatch,
            KeyError::BadPublicKey(_) => ErrorCode::BadRequest,
            KeyError::UnrecognisedSecret { .. }
            | KeyError::DataKeyLength { .. }
            | KeyError::SealBroken => ErrorCode::UnusableKey,
        };
        wire(code, e.to_string())
    }
}

impl From<RecipientError> for WireError {
    fn from(e: RecipientError) -> WireError {
        wire(
            ErrorCode::KmsUnavailable,
            format!("cannot open KMS's answer: {e}"),
        )
    }
}

impl Handler {
    pub fn new(signing: Option<Signing>) -> Self {
        Self { signing }
    }

    pub async fn handle(&self, request: Request) -> Result<Response, WireError> {
        match request {
            Request::Ping { delay_ms } => {
                #[cfg(feature = "mock")]
                if delay_ms > 0 {
                    let delay = delay_ms.min(MAX_TEST_DELAY_MS);
                    tokio::time::sleep(std::time::Duration::from_millis(delay.into())).await;
                }
                #[cfg(not(feature = "mock"))]
                let _ = delay_ms;
                Ok(Response::Pong {
                    build: BUILD_FLAVOR,
                })
            }
            Request::SetCredentials(credentials) => self.set_credentials(credentials),
            Request::Sign {
                network_passphrase,
                transaction,
                signers,
            } => self.sign(&network_passphrase, &transaction, &signers).await,
            Request::AuthorizeSoroban {
                network_passphrase,
                entry,
                signature_expiration_ledger,
                signer,
            } => {
                self.authorize_soroban(
                    &network_passphrase,
                    &entry,
                    signature_expiration_ledger,
                    &signer,
                )
                .await
            }
        }
    }

    fn signing(&self) -> Result<&Signing, WireError> {
        self.signing.as_ref().ok_or_else(|| {
            wire(
                ErrorCode::KmsUnavailable,
                "this enclave was started without a network and KMS configuration; it cannot sign",
            )
        })
    }

    fn set_credentials(&self, credentials: AwsCredentials) -> Result<Response, WireError> {
        let signing = self.signing()?;
        let expires = credentials
            .expires_unix
            .map(|s| UNIX_EPOCH + std::time::Duration::from_secs(s));
        signing.kms.credentials().set(
            credentials.access_key_id,
            credentials.secret_access_key,
            credentials.session_token,
            expires,
        );
        Ok(Response::CredentialsStored)
    }

    /// The signing configuration, if the caller's network is the one this enclave signs
    /// for.
    fn signing_for(&self, network_passphrase: &str) -> Result<&Signing, WireError> {
        let signing = self.signing()?;
        if network_passphrase != signing.network_passphrase {
            return Err(wire(
                ErrorCode::WrongNetwork,
                format!(
                    "this enclave signs for {:?}; the request is for {network_passphrase:?}",
                    signing.network_passphrase
                ),
            ));
        }
        Ok(signing)
    }

    async fn authorize_soroban(
        &self,
        network_passphrase: &str,
        entry: &[u8],
        signature_expiration_ledger: u32,
        signer: &KeyMaterial,
    ) -> Result<Response, WireError> {
        let signing = self.signing_for(network_passphrase)?;
        let mut entry = decode_auth_entry(entry)?;
        // The signer must be the very account the entry authorizes for.
        let account = authorizing_account(&entry)?;
        let raw = parse_public_key(&signer.public_key)?;
        if raw != account {
            return Err(wire(
                ErrorCode::NotARequiredSigner,
                format!(
                    "the entry authorizes for {}, not {}",
                    stellar_strkey::ed25519::PublicKey(account),
                    signer.public_key
                ),
            ));
        }
        // Checked before any KMS call, like transactions.
        signing.policy.check_soroban_auth(&entry, &raw)?;
        // The payload comes from the XDR and our own network id, never the caller.
        let hash = auth_payload_hash(&entry, signature_expiration_ledger, signing.network_id)?;
        let (public_key, signature) = sign_one(signing, signer, &hash).await?;
        set_auth_signature(
            &mut entry,
            signature_expiration_ledger,
            &public_key,
            &signature,
        )?;
        Ok(Response::SorobanAuthorized {
            entry: encode_auth_entry(&entry)?,
            hash,
            signature: SignatureInfo {
                public_key: signer.public_key.clone(),
                hint: signature_hint(&public_key),
                signature: signature.to_vec(),
            },
        })
    }

    async fn sign(
        &self,
        network_passphrase: &str,
        transaction: &[u8],
        signers: &[KeyMaterial],
    ) -> Result<Response, WireError> {
        let signing = self.signing_for(network_passphrase)?;
        if signers.is_empty() || signers.len() > MAX_SIGNERS {
            return Err(wire(
                ErrorCode::BadRequest,
                format!("name 1 to {MAX_SIGNERS} signers, not {}", signers.len()),
            ));
        }
        let mut envelope = decode_envelope(transaction)?;
        // Invariant 3: sign only as a required signer of this very envelope.
        let required = required_signers(&envelope);
        for key in signers {
            let raw = parse_public_key(&key.public_key)?;
            if required.contains(&raw) {
                // Checked before any KMS call: a refused transaction costs nothing.
                signing
                    .policy
                    .check(&envelope, &raw, common::now_unix_secs())?;
            } else {
                return Err(wire(
                    ErrorCode::NotARequiredSigner,
                    format!(
                        "{} is not a required signer of this transaction (source, operation \
                         source, or fee-bump fee source)",
                        key.public_key
                    ),
                ));
            }
        }
        // Invariant 2: the hash comes from the XDR and our own network id, never the caller.
        let hash = transaction_hash(&envelope, signing.network_id)?;
        // One KMS round trip per signer, all at once.
        let outcomes = join_all(signers.iter().map(|key| sign_one(signing, key, &hash))).await;
        let mut signatures = Vec::with_capacity(signers.len());
        for (key, outcome) in signers.iter().zip(outcomes) {
            let (public_key, signature) = outcome?;
            add_signature(&mut envelope, &public_key, &signature)?;
            signatures.push(SignatureInfo {
                public_key: key.public_key.clone(),
                hint: signature_hint(&public_key),
                signature: signature.to_vec(),
            });
        }
        Ok(Response::Signed {
            transaction: encode_envelope(&envelope)?,
            hash,
            signatures,
        })
    }
}

fn parse_public_key(public_key: &str) -> Result<[u8; 32], WireError> {
    stellar_strkey::ed25519::PublicKey::from_string(public_key)
        .map(|key| key.0)
        .map_err(|_| {
            wire(
                ErrorCode::BadRequest,
                format!("{public_key:?} is not a G... key"),
            )
        })
}

/// Decrypts one key through KMS, signs, forgets the key. Logs one line per signature.
async fn sign_one(
    signing: &Signing,
    key: &KeyMaterial,
    hash: &[u8; 32],
) -> Result<([u8; 32], [u8; 64]), WireError> {
    let started = Instant::now();
    let result = async {
        if let Some(seed) = signing
            .cache
            .as_ref()
            .and_then(|cache| cache.take(&key.public_key, &key.ciphertext))
        {
            return Ok(sign_checked(&seed, &key.public_key, hash)?);
        }
        let identity = signing.attestor.current();
        let context = [("pubkey", key.public_key.as_str())];
        let answer = signing
            .kms
            .decrypt_for_recipient(
                &key.ciphertext,
                Some(&key.kms_key_id),
                &context,
                &identity.attestation_document,
            )
            .await?;
        let plaintext = identity.recipient.open(&answer)?;
        let seed = match key.format {
            KeyFormat::KmsDirect => seed_from_kms_direct(&plaintext)?,
            KeyFormat::Envelope => {
                let sealed = key.sealed_seed.as_deref().ok_or_else(|| {
                    wire(
                        ErrorCode::BadRequest,
                        "an envelope key needs its sealed seed",
                    )
                })?;
                open_sealed_seed(&plaintext, sealed, &key.public_key)?
            }
        };
        drop(plaintext);
        let signed = sign_checked(&seed, &key.public_key, hash)?;
        // Only a seed proven to match its public key is ever cached.
        if let Some(cache) = &signing.cache {
            cache.put(&key.public_key, &key.ciphertext, &seed);
        }
        Ok::<_, WireError>(signed)
        // `seed` (Zeroizing) is wiped here.
    }
    .await;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match &result {
        Ok(_) => info!(public_key = %key.public_key, hash = %hex(hash), elapsed_ms, "signed"),
        Err(e) => {
            warn!(public_key = %key.public_key, hash = %hex(hash), elapsed_ms, code = %e.code, error = %e.message, "signing refused")
        }
    }
    result
}

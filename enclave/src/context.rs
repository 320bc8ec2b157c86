//! What every signing operation needs, built once at start-up from the enclave's
//! measured settings: the network it signs for, KMS, the attested recipient identity,
//! the optional key cache and the signing policy.

use std::sync::Arc;

use common::kms_key::KmsKeyArn;

use common::stellar::envelope::network_id;
use common::stellar::signing_policy::SigningPolicy;
use common::wire::{ErrorCode, WireError};

use crate::attestor::{Attestor, Identity};
use crate::budget::SpendingLimits;
use crate::cache::KeyCache;
use crate::kms::Kms;
use crate::kms::metered::MeteredKms;
use crate::metrics::KmsMetrics;

/// The signing configuration; absent when a mock build runs as a bare transport.
pub struct SigningContext {
    /// The one network this enclave signs for (measured).
    pub network_passphrase: String,
    /// SHA-256 of the passphrase: the first input of every signature payload.
    pub network_id: [u8; 32],
    /// KMS, reached over the host's relay with TLS ending here; every call counted in
    /// `kms_metrics`.
    pub kms: Arc<dyn Kms>,
    /// The KMS calls so far, for [`SigningContext::stats`].
    pub kms_metrics: Arc<KmsMetrics>,
    /// The KMS key this enclave uses (measured): named in every call, required in
    /// every answer, and the one every new seal goes under.
    pub kms_key_arn: KmsKeyArn,
    /// During a rotation only (measured): the previous key, still read for keys sealed
    /// under it until they are rewrapped. Never sealed under.
    pub previous_kms_key_arn: Option<KmsKeyArn>,
    /// The RSA recipient key and the attestation document binding it.
    pub attestor: Arc<Attestor>,
    /// Opt-in: decrypted seeds kept for a bounded time and number of uses.
    pub cache: Option<Arc<KeyCache>>,
    /// What the keys may sign, from this enclave's own configuration.
    pub policy: SigningPolicy,
    /// What the distribution account may spend per window, and has spent.
    pub limits: SpendingLimits,
    /// KMS calls at once ([`MAX_CONCURRENT_KMS_CALLS`]); further signatures wait.
    pub kms_calls: tokio::sync::Semaphore,
    /// Held by the one key generation allowed at a time.
    pub generation: tokio::sync::Mutex<()>,
    /// SHA-256 of the measured settings (`config::settings_digest`), the `user_data`
    /// of every attestation document made for a caller.
    pub settings_digest: [u8; 32],
}

/// KMS calls the enclave makes at once, so the TLS sessions and answers it holds stay
/// bounded however many signers the requests in flight name.
pub const MAX_CONCURRENT_KMS_CALLS: usize = 64;

/// How long a KMS call waits for a slot before its request is answered `enclave_busy`:
/// one KMS operation's bound (`startup.rs`). Requests in flight may name up to 20
/// signers each, so without it the queue for slots, and a request's time in the
/// enclave, would have no bound but the host's request timeout.
pub const KMS_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(8);

impl SigningContext {
    /// A context without a key cache (per-call KMS decryption, the default).
    pub fn new(
        network_passphrase: String,
        kms: Arc<dyn Kms>,
        kms_key_arn: KmsKeyArn,
        attestor: Arc<Attestor>,
        policy: SigningPolicy,
        limits: SpendingLimits,
    ) -> SigningContext {
        let kms_metrics = Arc::new(KmsMetrics::default());
        SigningContext {
            network_id: network_id(&network_passphrase),
            network_passphrase,
            kms: Arc::new(MeteredKms::new(kms, kms_metrics.clone())),
            kms_metrics,
            kms_key_arn,
            previous_kms_key_arn: None,
            attestor,
            cache: None,
            policy,
            limits,
            kms_calls: tokio::sync::Semaphore::new(MAX_CONCURRENT_KMS_CALLS),
            generation: tokio::sync::Mutex::new(()),
            settings_digest: [0; 32],
        }
    }

    /// The enclave's counters, for the host's `/metrics`.
    pub fn stats(&self) -> common::wire::messages::EnclaveStats {
        let (fee_budget_remaining_stroops, sponsorships_remaining) = self.limits.remaining();
        common::wire::messages::EnclaveStats {
            kms_calls: self.kms_metrics.snapshot(),
            fee_budget_remaining_stroops,
            sponsorships_remaining,
        }
    }

    /// The measured KMS key a stored key names, if it names one: the current key, or
    /// during a rotation the previous one.
    pub fn measured_kms_key(&self, kms_key_id: &str) -> Option<&KmsKeyArn> {
        std::iter::once(&self.kms_key_arn)
            .chain(self.previous_kms_key_arn.as_ref())
            .find(|arn| arn.as_str() == kms_key_id)
    }

    /// A turn at KMS: a slot of the bounded KMS calls (waited for in order, at most
    /// [`KMS_SLOT_WAIT`]) and the attested identity to call with, kept for the whole call.
    pub async fn kms_turn(
        &self,
    ) -> Result<(tokio::sync::SemaphorePermit<'_>, Arc<Identity>), WireError> {
        self.kms_turn_within(KMS_SLOT_WAIT).await
    }

    /// [`SigningContext::kms_turn`], waiting at most `slot_wait` for a slot (zero: only a
    /// free one, for work no request waits on, which must not queue ahead of requests).
    pub async fn kms_turn_within(
        &self,
        slot_wait: std::time::Duration,
    ) -> Result<(tokio::sync::SemaphorePermit<'_>, Arc<Identity>), WireError> {
        let slot = tokio::time::timeout(slot_wait, self.kms_calls.acquire())
            .await
            .map_err(|_| {
                WireError::new(
                    ErrorCode::EnclaveBusy,
                    format!(
                        "all {MAX_CONCURRENT_KMS_CALLS} KMS call slots stayed taken for {} s \
                         (a slow KMS, or many signers in flight); retry shortly",
                        slot_wait.as_secs()
                    ),
                )
            })?
            .map_err(|_| WireError::new(ErrorCode::Internal, "the KMS call limiter is closed"))?;
        Ok((slot, self.attestor.current()?))
    }

    /// Refuses a caller who believes it talks to another network (docs/design.md §2
    /// invariant 2: the payload always uses our own network id, whatever is asked).
    pub fn check_network(&self, network_passphrase: &str) -> Result<(), WireError> {
        if network_passphrase == self.network_passphrase {
            return Ok(());
        }
        Err(WireError::new(
            ErrorCode::WrongNetwork,
            format!(
                "this enclave signs for {:?}; the request is for {network_passphrase:?}",
                self.network_passphrase
            ),
        ))
    }
}

//! The enclave's KMS identity: an RSA-2048 recipient key and an NSM attestation document
//! binding it. Replaced on a timer, so a key pair lives minutes, and a document handed to
//! KMS is always fresh (KMS refuses stale ones).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::kms::recipient::{RecipientError, RecipientKey};
use crate::nsm::{Nsm, NsmError};

/// The rotation period is clamped to this range: short enough that a document is
/// always fresh for KMS, long enough that RSA key generation stays cheap.
pub const ROTATION_RANGE_SECS: std::ops::RangeInclusive<u64> = 10..=240;
/// An identity older than this is never used (KMS refuses documents older than five
/// minutes; this leaves a margin for the call itself).
pub const MAX_IDENTITY_AGE: Duration = Duration::from_secs(270);
/// After a failed rotation, try again this soon instead of a whole period later.
const ROTATION_RETRY: Duration = Duration::from_secs(2);

/// The rotation period for `requested_secs`, clamped to [`ROTATION_RANGE_SECS`].
pub fn rotation_period(requested_secs: u64) -> Duration {
    Duration::from_secs(
        requested_secs.clamp(*ROTATION_RANGE_SECS.start(), *ROTATION_RANGE_SECS.end()),
    )
}

/// Why no identity can be used.
#[derive(Debug, thiserror::Error)]
pub enum AttestorError {
    /// The RSA recipient key could not be made.
    #[error("recipient key: {0}")]
    Key(#[from] RecipientError),
    /// The NSM refused or is absent.
    #[error("attestation: {0}")]
    Nsm(#[from] NsmError),
    /// Rotation has failed for so long that the current document is too old to use.
    #[error(
        "the attestation document is {age_secs} s old, beyond the limit of {limit_secs} s; \
         rotation keeps failing (see the enclave log)"
    )]
    Stale { age_secs: u64, limit_secs: u64 },
    /// [`CALLER_ATTESTATIONS_AT_ONCE`] documents for callers are being made already.
    #[error(
        "{CALLER_ATTESTATIONS_AT_ONCE} attestation documents are being made for other callers; retry shortly"
    )]
    Busy,
}

pub struct Identity {
    pub recipient: RecipientKey,
    pub attestation_document: Vec<u8>,
    pub created: Instant,
}

pub struct Attestor {
    nsm: Arc<dyn Nsm>,
    current: ArcSwap<Identity>,
    max_age: Duration,
    /// Documents for callers being made at once ([`CALLER_ATTESTATIONS_AT_ONCE`]).
    caller_slots: Arc<tokio::sync::Semaphore>,
}

/// Attestation documents for callers made at once; more are answered `enclave_busy`.
pub const CALLER_ATTESTATIONS_AT_ONCE: usize = 2;

fn fresh_identity(nsm: &dyn Nsm) -> Result<Identity, AttestorError> {
    let recipient = RecipientKey::generate()?;
    let attestation_document = nsm.attest(recipient.public_key_der())?;
    Ok(Identity {
        recipient,
        attestation_document,
        created: Instant::now(),
    })
}

impl Attestor {
    /// A document for a caller (see [`Nsm::attest_for_caller`]) carrying `user_data`
    /// and `nonce`. The NSM call blocks (a device ioctl behind a lock), so it runs on
    /// the blocking pool like a rotation, and at most [`CALLER_ATTESTATIONS_AT_ONCE`]
    /// at a time: a flood of them holds up neither the workers that sign nor the
    /// rotation for long.
    pub async fn attest_for_caller(
        self: &Arc<Self>,
        user_data: Vec<u8>,
        nonce: Vec<u8>,
    ) -> Result<Vec<u8>, AttestorError> {
        let slot = self
            .caller_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| AttestorError::Busy)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            this.nsm.attest_for_caller(&user_data, &nonce)
        })
        .await
        .map_err(|e| AttestorError::Nsm(NsmError::Refused(e.to_string())))?
        .map_err(AttestorError::Nsm)
    }

    /// An attestor whose identities are used for at most [`MAX_IDENTITY_AGE`].
    pub fn new(nsm: Arc<dyn Nsm>) -> Result<Arc<Attestor>, AttestorError> {
        Self::with_max_age(nsm, MAX_IDENTITY_AGE)
    }

    /// An attestor whose identities are used for at most `max_age`.
    pub fn with_max_age(
        nsm: Arc<dyn Nsm>,
        max_age: Duration,
    ) -> Result<Arc<Attestor>, AttestorError> {
        let first = fresh_identity(nsm.as_ref())?;
        Ok(Arc::new(Attestor {
            nsm,
            current: ArcSwap::from_pointee(first),
            max_age,
            caller_slots: Arc::new(tokio::sync::Semaphore::new(CALLER_ATTESTATIONS_AT_ONCE)),
        }))
    }

    /// The identity to use for the next KMS call, unless it is too old. Callers keep
    /// the `Arc` for the whole call, so a rotation in between cannot pull the key from
    /// under them.
    pub fn current(&self) -> Result<Arc<Identity>, AttestorError> {
        let identity = self.current.load_full();
        let age = identity.created.elapsed();
        if age > self.max_age {
            return Err(AttestorError::Stale {
                age_secs: age.as_secs(),
                limit_secs: self.max_age.as_secs(),
            });
        }
        Ok(identity)
    }

    /// Random bytes from the NSM (see [`Nsm::random`]).
    pub fn nsm_random(&self) -> Result<Vec<u8>, NsmError> {
        self.nsm.random()
    }

    pub async fn rotate(self: &Arc<Self>) -> Result<(), AttestorError> {
        let this = self.clone();
        // RSA key generation takes tens of milliseconds: keep it off the async workers.
        let identity = tokio::task::spawn_blocking(move || fresh_identity(this.nsm.as_ref()))
            .await
            .map_err(|e| AttestorError::Nsm(NsmError::Refused(e.to_string())))??;
        self.current.store(Arc::new(identity));
        Ok(())
    }

    /// Rotates every `period` (clamped to [`ROTATION_RANGE_SECS`]) until `shutdown`;
    /// a failed rotation is retried after a short pause.
    pub fn spawn_rotation(self: &Arc<Self>, period: Duration, shutdown: CancellationToken) {
        let this = self.clone();
        let period = rotation_period(period.as_secs());
        tokio::spawn(async move {
            let mut pause = period;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                match this.rotate().await {
                    Ok(()) => {
                        info!("rotated the KMS recipient key and attestation document");
                        pause = period;
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in = ?ROTATION_RETRY, "rotation failed; keeping the current identity while it is fresh");
                        pause = ROTATION_RETRY;
                    }
                }
            }
        });
    }
}

#[cfg(all(test, feature = "mock"))]
mod tests {
    use super::*;
    use crate::nsm::mock::MockNsmDevice;

    #[tokio::test]
    async fn rotation_replaces_the_key_and_its_document_and_old_holders_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let nsm = MockNsmDevice::new(dir.path(), &Default::default()).unwrap();
        let attestor = Attestor::new(Arc::new(nsm)).unwrap();
        let before = attestor.current().unwrap();
        attestor.rotate().await.unwrap();
        let after = attestor.current().unwrap();
        assert_ne!(
            before.recipient.subject_key_id(),
            after.recipient.subject_key_id()
        );
        assert_ne!(before.attestation_document, after.attestation_document);
        // The document binds the identity's own key.
        let root = common::mock_nsm::MockCa::load_or_generate(dir.path()).unwrap();
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap();
        let doc = common::attestation::document::verify(
            &after.attestation_document,
            root.root_der(),
            now,
        )
        .unwrap();
        assert_eq!(
            doc.public_key.as_deref(),
            Some(after.recipient.public_key_der())
        );
        // A call that started before the rotation still holds a working identity.
        assert!(before.recipient.public_key_der().len() > 290);
    }
}

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

#[derive(Debug, thiserror::Error)]
pub enum AttestorError {
    #[error("recipient key: {0}")]
    Key(#[from] RecipientError),
    #[error("attestation: {0}")]
    Nsm(#[from] NsmError),
}

pub struct Identity {
    pub recipient: RecipientKey,
    pub attestation_document: Vec<u8>,
    pub created: Instant,
}

pub struct Attestor {
    nsm: Arc<dyn Nsm>,
    current: ArcSwap<Identity>,
}

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
    pub fn new(nsm: Arc<dyn Nsm>) -> Result<Arc<Attestor>, AttestorError> {
        let first = fresh_identity(nsm.as_ref())?;
        Ok(Arc::new(Attestor {
            nsm,
            current: ArcSwap::from_pointee(first),
        }))
    }

    /// The identity to use for the next KMS call. Callers keep the `Arc` for the whole
    /// call, so a rotation in between cannot pull the key from under them.
    pub fn current(&self) -> Arc<Identity> {
        self.current.load_full()
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

    /// Rotates every `period` until `shutdown`.
    pub fn spawn_rotation(self: &Arc<Self>, period: Duration, shutdown: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(period) => {}
                }
                match this.rotate().await {
                    Ok(()) => info!("rotated the KMS recipient key and attestation document"),
                    Err(e) => warn!(error = %e, "rotation failed; keeping the current identity"),
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
        let before = attestor.current();
        attestor.rotate().await.unwrap();
        let after = attestor.current();
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

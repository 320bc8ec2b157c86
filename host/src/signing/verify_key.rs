//! Verified import: a registered `kms-direct` key becomes active only once the enclave
//! has decrypted it, matched its public key and signed its key-check payload (checked
//! here too, with the public key); until then it stays pending with the reason.

use common::stellar::key_check::verify_key_check;
use common::wire::messages::{KeyMaterial, Request, Response};
use common::wire::{ErrorCode, WireError};

use super::Signing;
use crate::store::{AuditEntry, KeyRecord, KeyState, PendingFor, blocking};

impl Signing {
    /// Asks the enclave to check `key` (pending for verification): on success the key
    /// becomes active; on a refusal the reason is stored on the key and returned.
    pub async fn verify_key(
        &self,
        caller_uid: Option<u32>,
        key: KeyRecord,
    ) -> Result<(), WireError> {
        if key.state != KeyState::Pending || key.pending_for != Some(PendingFor::Verification) {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                format!(
                    "{} is {}, not an imported key awaiting verification",
                    key.public_key,
                    key.state.as_str()
                ),
            ));
        }
        let public_key = key.public_key.clone();
        let outcome = self.check_with_enclave(key).await;
        let audit = AuditEntry {
            caller_uid,
            public_key: Some(public_key.clone()),
            tx_hash: None,
            kind: "key_verified".into(),
            outcome: match &outcome {
                Ok(()) => "ok".into(),
                Err(e) => e.code.to_string(),
            },
            detail: outcome.as_ref().err().map(|e| e.message.clone()),
        };
        let store = self.store.clone();
        let refusal = outcome.clone().err();
        blocking(move || match refusal {
            None => store.set_key_state(&public_key, KeyState::Active, &[audit]),
            Some(e) => {
                let reason = format!("{}: {}", e.code, e.message);
                store.set_pending_reason(&public_key, &reason, &[audit])
            }
        })
        .await?;
        outcome
    }

    /// Has the enclave decrypt `key`, match its public key and sign its key-check
    /// payload (never a Stellar payload), checked here too. Changes nothing: the
    /// readiness canary's probe.
    pub async fn check_key(&self, key: KeyRecord) -> Result<(), WireError> {
        self.check_with_enclave(key).await
    }

    async fn check_with_enclave(&self, key: KeyRecord) -> Result<(), WireError> {
        let raw = stellar_strkey::ed25519::PublicKey::from_string(&key.public_key)
            .map_err(|_| WireError::new(ErrorCode::BadRequest, "not a G... key"))?
            .0;
        let request = Request::VerifyKey {
            key: KeyMaterial::from(key),
        };
        match self.ask_enclave(request).await? {
            Response::KeyVerified { signature } if verify_key_check(&raw, &signature.signature) => {
                Ok(())
            }
            Response::KeyVerified { .. } => Err(WireError::new(
                ErrorCode::Internal,
                "the enclave's key-check signature does not verify",
            )),
            other => Err(super::unexpected(&other)),
        }
    }
}

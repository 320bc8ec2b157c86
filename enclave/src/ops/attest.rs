//! `Attest`: a fresh attestation document for a caller, carrying its nonce and the
//! digest of this enclave's measured settings, and no public key (so KMS can never
//! decrypt anything to it: the host gains nothing it could use against a key).

use common::wire::messages::{MAX_ATTESTATION_NONCE, Response};
use common::wire::{ErrorCode, WireError};

use crate::context::SigningContext;

pub async fn attest(context: &SigningContext, nonce: &[u8]) -> Result<Response, WireError> {
    if nonce.is_empty() || nonce.len() > MAX_ATTESTATION_NONCE {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            format!(
                "the nonce is {} bytes; expected 1 to {MAX_ATTESTATION_NONCE}",
                nonce.len()
            ),
        ));
    }
    // The NSM call blocks (a device ioctl behind a lock): on the blocking pool, and at
    // most a few at once, so a flood of them can hold up neither the async workers that
    // sign nor the identity rotation for long.
    let Ok(slot) = context.attestor.caller_slots().try_acquire_owned() else {
        return Err(WireError::new(
            ErrorCode::EnclaveBusy,
            "attestation documents are being made for other callers; retry shortly",
        ));
    };
    let (attestor, digest, nonce) = (
        context.attestor.clone(),
        context.settings_digest,
        nonce.to_vec(),
    );
    let document = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        attestor.attest_for_caller(&digest, &nonce)
    })
    .await
    .map_err(|e| WireError::new(ErrorCode::Internal, format!("attestation task: {e}")))?
    .map_err(|e| WireError::new(ErrorCode::Internal, format!("attestation: {e}")))?;
    Ok(Response::Attested {
        document,
        settings_digest: context.settings_digest,
    })
}

//! `Attest`: a fresh attestation document for a caller, carrying its nonce and the
//! digest of this enclave's measured settings, and no public key (so KMS can never
//! decrypt anything to it: the host gains nothing it could use against a key).

use common::wire::messages::{MAX_ATTESTATION_NONCE, Response};
use common::wire::{ErrorCode, WireError};

use crate::context::SigningContext;

pub fn attest(context: &SigningContext, nonce: &[u8]) -> Result<Response, WireError> {
    if nonce.is_empty() || nonce.len() > MAX_ATTESTATION_NONCE {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            format!(
                "the nonce is {} bytes; expected 1 to {MAX_ATTESTATION_NONCE}",
                nonce.len()
            ),
        ));
    }
    let document = context
        .attestor
        .attest_for_caller(&context.settings_digest, nonce)
        .map_err(|e| WireError::new(ErrorCode::Internal, format!("attestation: {e}")))?;
    Ok(Response::Attested {
        document,
        settings_digest: context.settings_digest,
    })
}

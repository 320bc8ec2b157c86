//! `Attest`: a fresh attestation document for a caller, carrying its nonce and the
//! digest of this enclave's measured settings, and no public key (so KMS can never
//! decrypt anything to it: the host gains nothing it could use against a key).

use common::wire::messages::{MAX_ATTESTATION_NONCE, Response};
use common::wire::{ErrorCode, WireError};

use crate::attestor::AttestorError;
use crate::context::SigningContext;

pub async fn attest(context: &SigningContext, nonce: Vec<u8>) -> Result<Response, WireError> {
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
        .attest_for_caller(context.settings_digest.to_vec(), nonce)
        .await
        .map_err(|e| match e {
            AttestorError::Busy => WireError::new(ErrorCode::EnclaveBusy, e.to_string()),
            other => WireError::new(ErrorCode::Internal, format!("attestation: {other}")),
        })?;
    Ok(Response::Attested {
        document,
        settings_digest: context.settings_digest,
    })
}

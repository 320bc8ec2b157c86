//! `RewrapKey`: during a rotation of the KMS key, one stored key moves from the
//! previous key (or the `kms-direct` format) to an `envelope` seal under the current
//! key. The enclave decrypts it with the key its record names, checks it against its
//! public key, and seals it like a generated key; the host swaps the record. Both KMS
//! keys serve signatures until the rotation build is replaced.

use common::wire::messages::{KeyFormat, KeyMaterial, Response};
use common::wire::{ErrorCode, WireError};
use tracing::info;

use super::generate::seal_in_envelope;
use crate::context::SigningContext;
use crate::key_use::{check_key_material, open_key};
use crate::keys::public_key_of;

/// Re-seals `key` under the current KMS key.
pub async fn rewrap_key(
    context: &SigningContext,
    key: &KeyMaterial,
) -> Result<Response, WireError> {
    check_key_material(context, key)?;
    if key.format == KeyFormat::Envelope && key.kms_key_id == context.kms_key_arn.as_str() {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            format!(
                "{} is already sealed under {}; nothing to rewrap",
                key.public_key, context.kms_key_arn
            ),
        ));
    }
    let seed = open_key(context, key).await?;
    let derived = public_key_of(&seed);
    if derived != key.public_key {
        return Err(WireError::new(
            ErrorCode::PublicKeyMismatch,
            format!(
                "the decrypted key belongs to {derived}, not the requested {}",
                key.public_key
            ),
        ));
    }
    let (_slot, identity) = context.kms_turn().await?;
    let rewrapped = seal_in_envelope(context, &identity, &seed).await?;
    info!(public_key = %key.public_key, from = %key.kms_key_id, to = %context.kms_key_arn, "key rewrapped");
    Ok(Response::KeyRewrapped { key: rewrapped })
}

//! `VerifyKey`: proof that a stored key works, before the host puts it to use. The
//! enclave decrypts the key through KMS, checks it against its public key and signs
//! the key-check payload, which is fixed by the key and domain-separated, so the host
//! learns only that the key opens and matches, and can never get a usable signature.

use common::stellar::envelope::signature_hint;
use common::stellar::key_check::key_check_hash;
use common::wire::WireError;
use common::wire::messages::{KeyMaterial, Response, SignatureInfo};

use crate::context::SigningContext;
use crate::key_use::{check_key_material, sign_with_fresh_key};

/// Decrypts `key`, checks it and signs its key-check payload.
pub async fn verify_key(
    context: &SigningContext,
    key: &KeyMaterial,
) -> Result<Response, WireError> {
    let raw = check_key_material(context, key)?;
    // Always through KMS: a check answered from the opt-in cache would prove nothing
    // about KMS now, and would put the key back in the cache.
    let (_, signature) = sign_with_fresh_key(context, key, &key_check_hash(&raw)).await?;
    Ok(Response::KeyVerified {
        signature: SignatureInfo {
            public_key: key.public_key.clone(),
            hint: signature_hint(&raw),
            signature: signature.to_vec(),
        },
    })
}

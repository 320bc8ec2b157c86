//! `AuthorizeSoroban`: a signature on a Soroban authorization entry with address
//! credentials, for the account the entry names.

use common::stellar::envelope::signature_hint;
use common::stellar::soroban::{
    auth_payload_hash, authorizing_account, decode_auth_entry, encode_auth_entry,
    set_auth_signature,
};
use common::wire::messages::{KeyMaterial, Response, SignatureInfo};
use common::wire::{ErrorCode, WireError};

use std::sync::Arc;

use crate::context::SigningContext;
use crate::key_use::{check_key_material, sign_with_key};

/// Signs `entry` (raw XDR) with `signer`, valid through `signature_expiration_ledger`.
pub async fn authorize_soroban(
    context: &Arc<SigningContext>,
    network_passphrase: &str,
    entry: &[u8],
    signature_expiration_ledger: u32,
    signer: &KeyMaterial,
) -> Result<Response, WireError> {
    context.check_network(network_passphrase)?;
    let mut entry = decode_auth_entry(entry)?;
    // The signer must be the very account the entry authorizes for.
    let account = authorizing_account(&entry)?;
    let raw = check_key_material(context, signer)?;
    if raw != account {
        return Err(WireError::new(
            ErrorCode::NotARequiredSigner,
            format!(
                "the entry authorizes for {}, not {}",
                stellar_strkey::ed25519::PublicKey(account),
                signer.public_key
            ),
        ));
    }
    // Checked before any KMS call, like transactions.
    context.policy.check_soroban_auth(&entry, &raw)?;
    // The payload comes from the XDR and our own network id, never the caller.
    let hash = auth_payload_hash(&entry, signature_expiration_ledger, context.network_id)?;
    let (public_key, signature) = sign_with_key(context, signer, &hash).await?;
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

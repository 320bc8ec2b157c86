//! `ImportWalletBackend`: stellar/wallet-backend's channel keys move in without the
//! host ever seeing a seed or the passphrase. The passphrase arrives as a KMS
//! ciphertext the operator made (context `purpose=wallet-backend-import`), is decrypted
//! here through the attested KMS call, opens each channel key (AES-128-GCM under
//! SHA-256(passphrase)[:16], wallet-backend's own scheme), and each seed, checked
//! against its public key, is re-sealed in the `envelope` format like a generated key.

use common::wire::messages::{
    MAX_IMPORTED_KEYS, Response, WALLET_BACKEND_PASSPHRASE_CONTEXT, WalletBackendKey,
};
use common::wire::{ErrorCode, WireError};
use tracing::info;

use super::generate::seal_in_envelope;
use crate::context::SigningContext;
use crate::keys::{Seed, open_wallet_backend_seed};

/// Imports `channels`; all or nothing (the first key that does not open or match stops
/// the import before anything is sealed).
pub async fn import_wallet_backend(
    context: &SigningContext,
    passphrase_ciphertext: &[u8],
    channels: &[WalletBackendKey],
) -> Result<Response, WireError> {
    if channels.is_empty() || channels.len() > MAX_IMPORTED_KEYS {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            format!(
                "import 1 to {MAX_IMPORTED_KEYS} keys at once, not {}",
                channels.len()
            ),
        ));
    }
    for key in channels {
        if stellar_strkey::ed25519::PublicKey::from_string(&key.public_key).is_err() {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                format!("{:?} is not a G... key", key.public_key),
            ));
        }
    }
    // One import or generation at a time, as for generation.
    let Ok(_one_at_a_time) = context.generation.try_lock() else {
        return Err(WireError::new(
            ErrorCode::EnclaveBusy,
            "a key generation or import is running; retry when it has finished",
        ));
    };
    let seeds = open_all(context, passphrase_ciphertext, channels).await?;
    // One KMS call at a time: an import is a one-off migration, and the seeds are
    // already in memory, so none waits for a slot.
    let (_slot, identity) = context.kms_turn().await?;
    let mut keys = Vec::with_capacity(seeds.len());
    for seed in &seeds {
        keys.push(seal_in_envelope(context, &identity, seed).await?);
    }
    info!(
        count = channels.len(),
        "wallet-backend channel keys imported"
    );
    Ok(Response::KeysImported { keys })
}

/// Every channel key's seed, opened with the decrypted passphrase (wiped on return).
async fn open_all(
    context: &SigningContext,
    passphrase_ciphertext: &[u8],
    channels: &[WalletBackendKey],
) -> Result<Vec<Seed>, WireError> {
    let (_slot, identity) = context.kms_turn().await?;
    let measured_key = context.kms_key_arn.as_str();
    let answer = context
        .kms
        .decrypt_for_recipient(
            passphrase_ciphertext,
            measured_key,
            &[WALLET_BACKEND_PASSPHRASE_CONTEXT],
            &identity.attestation_document,
        )
        .await?
        .for_key(measured_key)?;
    let passphrase = identity.recipient.open(&answer)?;
    channels
        .iter()
        .map(|key| {
            open_wallet_backend_seed(&passphrase, &key.encrypted, &key.public_key)
                .map_err(WireError::from)
        })
        .collect()
}

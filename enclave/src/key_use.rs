//! One use of one stored key: decrypt it through KMS (or take it from the opt-in cache),
//! check it is the key the request names, sign the hash, forget the key. Every path
//! that signs goes through [`sign_with_key`]; nothing else ever holds a seed, except the
//! key cache's refresh ahead here, which decrypts a cached record again and signs nothing.

use std::sync::Arc;
use std::time::Instant;

use common::stellar::envelope::hex;
use common::wire::messages::{KeyFormat, KeyMaterial};
use common::wire::{ErrorCode, WireError};
use tracing::{debug, info, warn};

use crate::cache::{KeyCache, Lookup};
use crate::context::SigningContext;
use crate::keys::{
    KeyError, Seed, kms_context, open_sealed_seed, public_key_of, seed_from_kms_direct,
    sign_checked,
};

/// A `G...` strkey as raw bytes, or `bad_request`.
fn parse_public_key(public_key: &str) -> Result<[u8; 32], WireError> {
    stellar_strkey::ed25519::PublicKey::from_string(public_key)
        .map(|key| key.0)
        .map_err(|_| {
            WireError::new(
                ErrorCode::BadRequest,
                format!("{public_key:?} is not a G... key"),
            )
        })
}

/// The raw public key of `key`, once its record is one this enclave can use: a `G...`
/// key under the measured KMS key. Checked for every signer before any KMS call.
pub fn check_key_material(
    context: &SigningContext,
    key: &KeyMaterial,
) -> Result<[u8; 32], WireError> {
    let raw = parse_public_key(&key.public_key)?;
    check_kms_key(context, key)?;
    Ok(raw)
}

/// The measured KMS key `key` is stored under (a string comparison, cheap enough to
/// repeat on the signing path): the current key, or during a rotation the previous one.
fn check_kms_key<'c>(
    context: &'c SigningContext,
    key: &KeyMaterial,
) -> Result<&'c common::kms_key::KmsKeyArn, WireError> {
    context.measured_kms_key(&key.kms_key_id).ok_or_else(|| {
        WireError::new(
            ErrorCode::KmsKeyMismatch,
            format!(
                "{} is stored under KMS key {:?}; this enclave uses only its measured key {}",
                key.public_key, key.kms_key_id, context.kms_key_arn
            ),
        )
    })
}

/// Decrypts `key`, checks it against its public key (docs/design.md §2 invariant 4),
/// signs `hash` and drops the seed. Returns the raw public key and the signature. One
/// log line per signature, with its duration and never a secret. With the key cache on,
/// the signature past a cached entry's refresh point (half its uses spent, or the last
/// eighth of its ttl) also starts [`refresh_ahead`].
pub async fn sign_with_key(
    context: &Arc<SigningContext>,
    key: &KeyMaterial,
    hash: &[u8; 32],
) -> Result<([u8; 32], [u8; 64]), WireError> {
    let (signed, refresh_due) = sign_logged(context, key, hash, context.cache.as_deref()).await?;
    if refresh_due {
        refresh_ahead(context.clone(), key.clone());
    }
    Ok(signed)
}

/// Decrypts a cached key again in the background, once half its entry's uses are spent or
/// its last eighth of ttl has begun: into the spare that takes over when the entry runs
/// out or expires, or, for an entry with more than half its uses left, in its place at
/// once (see `cache.rs`). Requests for a busy key then need not wait for KMS when its
/// entry runs out or expires (unless more than half its uses are asked for within one
/// KMS call, or the key goes unused through that last eighth). A failure is logged and,
/// like a refill's, given to the callers that missed meanwhile and waited for it.
///
/// It takes a KMS slot only if one is free: requests never queue behind a refresh (if
/// none is free, the entry's other refresh point, if still ahead, tries again; else the
/// entry runs out and is refilled as without one).
fn refresh_ahead(context: Arc<SigningContext>, mut key: KeyMaterial) {
    if key.format == KeyFormat::KmsDirect {
        // Not part of a kms-direct record's cache entry; whatever the host put there
        // need not be carried along.
        key.sealed_seed = None;
    }
    tokio::spawn(async move {
        let Some(cache) = context.cache.as_deref() else {
            return;
        };
        let Some(mut turn) = cache.refresh_turn(&key) else {
            return;
        };
        let refreshed = open_key_within(&context, &key, std::time::Duration::ZERO)
            .await
            .and_then(|seed| {
                if cache.put_spare(&key, &seed) {
                    Ok(())
                } else {
                    Err(WireError::from(KeyError::PublicKeyMismatch {
                        expected: key.public_key.clone(),
                        derived: public_key_of(&seed),
                    }))
                }
            });
        match refreshed {
            Ok(()) => {
                turn.cached();
                debug!(public_key = %key.public_key, "refreshed a cached key ahead of its use");
            }
            // No free KMS slot: give up the turn; the entry's other refresh point, if
            // still ahead, tries again, and a caller that misses takes the turn and waits
            // for a slot like any request.
            Err(error) if error.code == ErrorCode::EnclaveBusy => {}
            Err(error) => {
                warn!(public_key = %key.public_key, code = %error.code, error = %error.message, "refresh ahead failed");
                turn.failed(&error);
            }
        }
    });
}

/// [`sign_with_key`] with a fresh KMS decryption, never the opt-in cache (neither read
/// nor filled): a key check must prove KMS and the key work now.
pub async fn sign_with_fresh_key(
    context: &SigningContext,
    key: &KeyMaterial,
    hash: &[u8; 32],
) -> Result<([u8; 32], [u8; 64]), WireError> {
    sign_logged(context, key, hash, None)
        .await
        .map(|(signed, _)| signed)
}

async fn sign_logged(
    context: &SigningContext,
    key: &KeyMaterial,
    hash: &[u8; 32],
    cache: Option<&KeyCache>,
) -> Result<(([u8; 32], [u8; 64]), bool), WireError> {
    let started = Instant::now();
    let result = decrypt_and_sign(context, key, hash, cache).await;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match &result {
        Ok(_) => info!(public_key = %key.public_key, hash = %hex(hash), elapsed_ms, "signed"),
        Err(e) => {
            warn!(public_key = %key.public_key, hash = %hex(hash), elapsed_ms, code = %e.code, error = %e.message, "signing refused");
        }
    }
    result
}

/// The signature, and whether it came from a cache entry now due for a refresh ahead.
async fn decrypt_and_sign(
    context: &SigningContext,
    key: &KeyMaterial,
    hash: &[u8; 32],
    cache: Option<&KeyCache>,
) -> Result<(([u8; 32], [u8; 64]), bool), WireError> {
    let mut decrypting = None;
    if let Some(cache) = cache {
        // `open_key` checks the KMS key; a cached seed is checked here, so a record
        // naming another KMS key never signs either way.
        check_kms_key(context, key)?;
        match cache.sign_or_take_turn(key, hash).await {
            Lookup::Signed {
                signed,
                refresh_due,
            } => return Ok((signed, refresh_due)),
            Lookup::Failed(error) => return Err(error),
            Lookup::Decrypt(turn) => decrypting = turn,
        }
    }
    let outcome = async {
        let seed = open_key(context, key).await?;
        let signed = sign_checked(&seed, &key.public_key, hash)?;
        // Only a seed proven to match its public key is ever cached.
        let cached = cache.is_some_and(|cache| cache.put(key, &seed));
        Ok((signed, cached))
    }
    .await;
    // The waiting callers go on when the turn is dropped: signing from the cache, or
    // answering with this failure.
    if let Some(turn) = decrypting.as_mut() {
        match &outcome {
            Ok((_, true)) => turn.cached(),
            Ok((_, false)) => {}
            Err(error) => turn.failed(error),
        }
    }
    drop(decrypting);
    outcome.map(|(signed, _)| (signed, false))
}

/// Decrypts `key` through KMS (attested, for the measured key its record names) and
/// returns its seed, not yet checked against its public key: callers check it (signing
/// does, and rewrapping signs nothing until it has).
pub async fn open_key(context: &SigningContext, key: &KeyMaterial) -> Result<Seed, WireError> {
    open_key_within(context, key, crate::context::KMS_SLOT_WAIT).await
}

/// [`open_key`], waiting at most `slot_wait` for a KMS slot.
async fn open_key_within(
    context: &SigningContext,
    key: &KeyMaterial,
    slot_wait: std::time::Duration,
) -> Result<Seed, WireError> {
    // The callers check every signer before any KMS call; the KMS key is checked again
    // here so no future caller can skip it (the public key is checked after decryption).
    let measured_key = check_kms_key(context, key)?.as_str();
    let (_slot, identity) = context.kms_turn_within(slot_wait).await?;
    let encryption_context = kms_context(key.format, &key.public_key);
    let answer = context
        .kms
        .decrypt_for_recipient(
            &key.ciphertext,
            measured_key,
            &encryption_context,
            &identity.attestation_document,
        )
        .await?
        .for_key(measured_key)?;
    let plaintext = identity.recipient.open(&answer)?;
    let seed = match key.format {
        KeyFormat::KmsDirect => seed_from_kms_direct(&plaintext)?,
        KeyFormat::Envelope => {
            let sealed = key.sealed_seed.as_deref().ok_or_else(|| {
                WireError::new(
                    ErrorCode::BadRequest,
                    "an envelope key needs its sealed seed",
                )
            })?;
            open_sealed_seed(&plaintext, sealed, &key.public_key)?
        }
    };
    Ok(seed)
}

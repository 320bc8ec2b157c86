//! `GenerateKeys`: new keys born here. Each seed is drawn from the NSM and the OS RNG,
//! sealed in the `envelope` format under a data key that KMS's `GenerateDataKey` sent
//! only to this enclave's attested recipient key, for the measured KMS key (docs/design.md
//! §2 invariants 5 and 9), checked to reopen to the same public key, and forgotten. The
//! host receives public keys and ciphertexts, never a seed or a data key.

use std::time::Instant;

use common::wire::messages::{KeyFormat, KeyMaterial, MAX_GENERATED_KEYS, Response};
use common::wire::{ErrorCode, WireError};
use futures_util::{StreamExt, TryStreamExt};
use tracing::info;
use zeroize::Zeroizing;

use crate::attestor::Identity;
use crate::context::SigningContext;
use crate::keys::{Seed, draw_seed, kms_context, open_sealed_seed, public_key_of, seal_seed};

/// KMS calls one generation makes at once: enough to hide KMS latency, few enough that
/// signing keeps most of the KMS slots and quota.
pub const GENERATION_CONCURRENCY: usize = 8;

/// Generates `count` keys; all or nothing (the first failure stops the rest). One
/// generation runs at a time: a flood of requests gets `enclave_busy`, not a queue of
/// thousands of KMS calls ahead of every signature.
pub async fn generate_keys(context: &SigningContext, count: u32) -> Result<Response, WireError> {
    if !(1..=MAX_GENERATED_KEYS).contains(&count) {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            format!("generate 1 to {MAX_GENERATED_KEYS} keys at once, not {count}"),
        ));
    }
    let Ok(_one_at_a_time) = context.generation.try_lock() else {
        return Err(WireError::new(
            ErrorCode::EnclaveBusy,
            "another key generation is running; retry when it has finished",
        ));
    };
    let keys = futures_util::stream::iter(0..count)
        .map(|_| generate_one(context))
        .buffer_unordered(GENERATION_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(Response::KeysGenerated { keys })
}

async fn generate_one(context: &SigningContext) -> Result<KeyMaterial, WireError> {
    let started = Instant::now();
    // The KMS turn first, so no seed waits in memory for a slot.
    let (_slot, identity) = context.kms_turn().await?;
    // The NSM call is a blocking ioctl: keep it off the async workers.
    let attestor = context.attestor.clone();
    let nsm_random = tokio::task::spawn_blocking(move || attestor.nsm_random())
        .await
        .map_err(|e| WireError::new(ErrorCode::Internal, format!("the NSM task failed: {e}")))?
        .map_err(|e| {
            WireError::new(
                ErrorCode::Internal,
                format!("the NSM gave no random bytes: {e}"),
            )
        })?;
    let nsm_random = Zeroizing::new(nsm_random);
    let seed = draw_seed(&nsm_random)?;
    let key = seal_in_envelope(context, &identity, &seed).await?;
    info!(
        public_key = %key.public_key,
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "key generated"
    );
    Ok(key)
}

/// Seals `seed` in the `envelope` format under a fresh data key for the measured KMS
/// key (sent only to `identity`'s recipient key), and checks the seal reopens to the
/// same public key: the record the host stores. Generation and import share it.
pub(crate) async fn seal_in_envelope(
    context: &SigningContext,
    identity: &Identity,
    seed: &Seed,
) -> Result<KeyMaterial, WireError> {
    let public_key = public_key_of(seed);
    let measured_key = context.kms_key_arn.as_str();
    let generated = context
        .kms
        .generate_data_key_for_recipient(
            measured_key,
            &kms_context(KeyFormat::Envelope, &public_key),
            &identity.attestation_document,
        )
        .await?;
    let envelope = generated.answer.for_key(measured_key)?;
    let data_key = identity.recipient.open(&envelope)?;
    let data_key: &[u8; 32] = data_key.as_slice().try_into().map_err(|_| {
        WireError::new(
            ErrorCode::KmsUnavailable,
            format!(
                "KMS sent a data key of {} bytes, expected 32",
                data_key.len()
            ),
        )
    })?;
    let mut nonce = [0u8; 12];
    aws_lc_rs::rand::fill(&mut nonce)
        .map_err(|_| WireError::new(ErrorCode::Internal, "no random nonce"))?;
    let sealed = seal_seed(data_key, seed, &public_key, nonce);
    // What the host stores must open to this very key, or nothing is returned.
    let reopened = open_sealed_seed(data_key, &sealed, &public_key)?;
    if public_key_of(&reopened) != public_key {
        return Err(WireError::new(
            ErrorCode::Internal,
            "a sealed seed did not reopen to its public key",
        ));
    }
    Ok(KeyMaterial {
        public_key,
        format: KeyFormat::Envelope,
        kms_key_id: measured_key.to_string(),
        ciphertext: generated.ciphertext_blob,
        sealed_seed: Some(sealed),
    })
    // `reopened` and the data key are wiped here.
}

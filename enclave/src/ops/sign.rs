//! `Sign`: signatures on a transaction envelope (v0, v1 or fee-bump).

use common::stellar::envelope::{
    MAX_SIGNATURES, add_signature, decode_envelope, encode_envelope, required_signers,
    signature_hint, signatures, transaction_hash,
};
use common::wire::messages::{KeyMaterial, Response, SignatureInfo};
use common::wire::{ErrorCode, WireError};
use futures_util::future::join_all;

use common::stellar::signing_policy::SignatureRequest;

use std::sync::Arc;

use crate::context::SigningContext;
use crate::key_use::{check_key_material, sign_with_key};

/// Signs `transaction` (raw XDR) with each of `signers`, each of which must be a
/// required signer that the signing policy admits.
pub async fn sign_transaction(
    context: &Arc<SigningContext>,
    network_passphrase: &str,
    transaction: &[u8],
    signers: &[KeyMaterial],
) -> Result<Response, WireError> {
    context.check_network(network_passphrase)?;
    if signers.is_empty() || signers.len() > MAX_SIGNATURES {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            format!("name 1 to {MAX_SIGNATURES} signers, not {}", signers.len()),
        ));
    }
    let mut envelope = decode_envelope(transaction)?;
    let raw_signers = signers
        .iter()
        .map(|key| check_key_material(context, key))
        .collect::<Result<Vec<_>, _>>()?;
    // Everything that needs no seed is checked before any KMS call.
    check_signature_count(&envelope, &raw_signers)?;
    // docs/design.md §2 invariant 3: sign only as a required signer of this envelope.
    let required = required_signers(&envelope);
    let request = SignatureRequest {
        envelope: &envelope,
        signers: &raw_signers,
        now_unix: common::now_unix_secs(),
        network_id: context.network_id,
    };
    for (key, raw) in signers.iter().zip(&raw_signers) {
        if !required.contains(raw) {
            return Err(WireError::new(
                ErrorCode::NotARequiredSigner,
                format!(
                    "{} is not a required signer of this transaction (source, operation \
                     source, or fee-bump fee source)",
                    key.public_key
                ),
            ));
        }
        // Checked before any KMS call: a refused transaction costs nothing.
        context.policy.check(&request, raw)?;
    }
    // The distribution account's share of the window's budget, held until it signed.
    let (fee, sponsored) = context.policy.distribution_spend(&request);
    let reservation = context.limits.reserve(fee, sponsored)?;
    // Invariant 2: the hash comes from the XDR and our own network id, never the caller.
    let hash = transaction_hash(&envelope, context.network_id)?;
    // One KMS round trip per signer, all at once.
    let outcomes = join_all(signers.iter().map(|key| sign_with_key(context, key, &hash))).await;
    let mut signatures = Vec::with_capacity(signers.len());
    for (key, outcome) in signers.iter().zip(outcomes) {
        let (public_key, signature) = outcome?;
        add_signature(&mut envelope, &public_key, &signature)?;
        signatures.push(SignatureInfo {
            public_key: key.public_key.clone(),
            hint: signature_hint(&public_key),
            signature: signature.to_vec(),
        });
    }
    let transaction = encode_envelope(&envelope)?;
    reservation.commit();
    Ok(Response::Signed {
        transaction,
        hash,
        signatures,
    })
}

/// Each key at most once, and the envelope's existing signatures plus the new ones
/// within the protocol's limit.
fn check_signature_count(
    envelope: &stellar_xdr::TransactionEnvelope,
    signers: &[[u8; 32]],
) -> Result<(), WireError> {
    let mut distinct = signers.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() != signers.len() {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            "a signer is named twice; name each key once",
        ));
    }
    let existing = signatures(envelope).len();
    if existing + signers.len() > MAX_SIGNATURES {
        return Err(WireError::new(
            ErrorCode::TooManySignatures,
            format!(
                "the envelope carries {existing} signatures; {} more would exceed the limit \
                 of {MAX_SIGNATURES}",
                signers.len()
            ),
        ));
    }
    Ok(())
}

//! Signatures on a transaction envelope: `POST /v1/sign`, and the fee-bump flow once it
//! has built its envelope.

use std::collections::HashSet;

use common::stellar::envelope::{MAX_SIGNATURES, network_id, required_signers, sequence_owner};
use common::stellar::signing_policy::SignatureRequest;
use common::wire::messages::{Request, Response, SignatureInfo};
use common::wire::{ErrorCode, WireError};
use stellar_xdr::TransactionEnvelope;

use super::{SignKind, Signing, active_material, roles_of, unexpected};
use crate::store::KeyRecord;

/// A signed envelope as the enclave returned it.
#[derive(Debug, Clone)]
pub struct SignedEnvelope {
    /// Raw XDR with the new signatures appended.
    pub transaction: Vec<u8>,
    /// The signature payload hash, computed by the enclave.
    pub hash: [u8; 32],
    /// One per signer.
    pub signatures: Vec<SignatureInfo>,
}

impl Signing {
    /// Has the enclave sign `envelope` (given decoded, and as the XDR bytes to send)
    /// with `signers`, audits the outcome as `kind`, and keeps the channel whose
    /// sequence the transaction consumes locked.
    pub async fn sign_envelope(
        &self,
        caller_uid: Option<u32>,
        network: &str,
        (envelope, xdr): (&TransactionEnvelope, Vec<u8>),
        signers: Vec<String>,
        kind: SignKind,
    ) -> Result<SignedEnvelope, WireError> {
        // Duplicates anywhere in the list, not only adjacent ones: one KMS call per key.
        let mut seen = HashSet::new();
        let signers: Vec<String> = signers
            .into_iter()
            .filter(|s| seen.insert(s.clone()))
            .collect();
        if signers.is_empty() || signers.len() > MAX_SIGNATURES {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                format!("name 1 to {MAX_SIGNATURES} signers, not {}", signers.len()),
            ));
        }
        let network_id = network_id(network);
        let lookup = self.lookup(signers.clone(), self.precheck).await?;
        let roles = roles_of(&lookup.keys);
        // Every outcome from here on is audited, refusals by the host's own checks too.
        let outcome = async {
            self.precheck_envelope(network_id, envelope, &signers, lookup.distribution.as_ref())?;
            let request = Request::Sign {
                network_passphrase: network.to_string(),
                transaction: xdr,
                signers: active_material(lookup.keys)?,
            };
            match self.ask_enclave(request).await? {
                Response::Signed {
                    transaction,
                    hash,
                    signatures,
                } => Ok(SignedEnvelope {
                    transaction,
                    hash,
                    signatures,
                }),
                other => Err(unexpected(&other)),
            }
        }
        .await;
        let channel = sequence_owner(envelope, network_id).ok();
        self.record(
            caller_uid,
            kind,
            (&signers, &roles),
            outcome.as_ref().map(|signed| signed.hash),
            channel,
        )
        .await?;
        outcome
    }

    /// The enclave's signing policy, checked here first with the stored distribution
    /// key, so a violation costs no round trip.
    pub(super) fn precheck_envelope(
        &self,
        network_id: [u8; 32],
        envelope: &TransactionEnvelope,
        signers: &[String],
        distribution: Option<&KeyRecord>,
    ) -> Result<(), WireError> {
        let Some(distribution) = distribution
            .and_then(|d| stellar_strkey::ed25519::PublicKey::from_string(&d.public_key).ok())
        else {
            return Ok(());
        };
        let policy = self.signing_policy(distribution.0);
        let raw: Vec<[u8; 32]> = signers
            .iter()
            .filter_map(|s| stellar_strkey::ed25519::PublicKey::from_string(s).ok())
            .map(|key| key.0)
            .collect();
        let request = SignatureRequest {
            envelope,
            signers: &raw,
            now_unix: common::now_unix_secs(),
            network_id,
        };
        let required = required_signers(envelope);
        for key in raw.iter().filter(|key| required.contains(key)) {
            policy.check(&request, key)?;
        }
        Ok(())
    }
}

//! Fee-bumps the distribution account pays: `POST /v1/fee-bump` wraps a signed
//! transaction of an account this signer manages, then has the enclave sign the bump.

use common::stellar::envelope::{encode_envelope, network_id, sequence_owner};
use common::wire::{ErrorCode, WireError};
use stellar_xdr::{
    FeeBumpTransaction, FeeBumpTransactionEnvelope, FeeBumpTransactionExt,
    FeeBumpTransactionInnerTx, MuxedAccount, TransactionEnvelope, TransactionV1Envelope, Uint256,
};

use super::{SignKind, SignedEnvelope, Signing};
use crate::store::KeyState;

/// How the caller sets the fee-bump's fee: exactly one of the two, above zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeChoice {
    /// Per operation: the bump pays `base_fee × (operations + 1)`.
    pub base_fee: Option<i64>,
    /// The total fee, directly.
    pub max_fee: Option<i64>,
}

/// A signed fee-bump.
#[derive(Debug, Clone)]
pub struct FeeBumped {
    /// The fee-bump envelope, signed by the distribution account.
    pub signed: SignedEnvelope,
    /// Hash of the inner transaction (what channel unlocks match).
    pub inner_hash: [u8; 32],
    /// The fee the distribution account pays, in stroops.
    pub fee: i64,
    /// The distribution account.
    pub fee_source: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> WireError {
    WireError::new(code, message)
}

/// The inner transaction as v1; v0 signatures stay valid (they are over the v1 form).
fn inner_of(envelope: TransactionEnvelope) -> Result<TransactionV1Envelope, WireError> {
    match envelope {
        TransactionEnvelope::Tx(e) => Ok(e),
        TransactionEnvelope::TxV0(e) => Ok(TransactionV1Envelope {
            tx: e.tx.into(),
            signatures: e.signatures,
        }),
        TransactionEnvelope::TxFeeBump(_) => Err(refuse(
            ErrorCode::NotEligibleForFeeBump,
            "the transaction is already a fee-bump; bump its inner transaction instead",
        )),
    }
}

/// The bump's total fee, at least the inner transaction's rate per operation (the
/// protocol counts the bump itself as one more operation).
fn fee_for(inner: &TransactionV1Envelope, choice: FeeChoice) -> Result<i64, WireError> {
    let operations = inner.tx.operations.len() as i64;
    let fee = match (choice.base_fee, choice.max_fee) {
        (Some(base), None) if base > 0 => base.saturating_mul(operations + 1),
        (None, Some(max)) if max > 0 => max,
        _ => {
            return Err(refuse(
                ErrorCode::BadRequest,
                "give exactly one of base_fee or max_fee, greater than zero",
            ));
        }
    };
    if fee.saturating_mul(operations.max(1))
        < i64::from(inner.tx.fee).saturating_mul(operations + 1)
    {
        return Err(refuse(
            ErrorCode::BadRequest,
            format!(
                "a fee of {fee} for {} operations is below the inner transaction's rate ({} for {operations})",
                operations + 1,
                inner.tx.fee
            ),
        ));
    }
    Ok(fee)
}

impl Signing {
    /// Wraps `envelope` in a fee-bump paid by the distribution account and has the
    /// enclave sign it. The inner source must be an active key of this signer.
    pub async fn fee_bump(
        &self,
        caller_uid: Option<u32>,
        network: &str,
        envelope: TransactionEnvelope,
        fee: FeeChoice,
    ) -> Result<FeeBumped, WireError> {
        let inner = inner_of(envelope)?;
        if inner.signatures.is_empty() {
            return Err(refuse(
                ErrorCode::NoSignaturesProvided,
                "the inner transaction carries no signature; sign it before asking for a fee-bump",
            ));
        }
        let fee = fee_for(&inner, fee)?;
        let inner_envelope = TransactionEnvelope::Tx(inner.clone());
        let owner = sequence_owner(&inner_envelope, network_id(network))?;
        let inner_source = format!("{}", stellar_strkey::ed25519::PublicKey(owner.account));
        let lookup = self.lookup(vec![inner_source.clone()], true).await?;
        let managed = lookup
            .keys
            .iter()
            .any(|(_, key)| key.as_ref().is_some_and(|k| k.state == KeyState::Active));
        if !managed {
            return Err(refuse(
                ErrorCode::NotEligibleForFeeBump,
                format!("the inner source {inner_source} is not an account this signer manages"),
            ));
        }
        let distribution = lookup.distribution.ok_or_else(|| {
            refuse(
                ErrorCode::UnknownKey,
                "no active distribution key: provision one to pay fees",
            )
        })?;
        let fee_source = stellar_strkey::ed25519::PublicKey::from_string(&distribution.public_key)
            .map_err(|_| {
                refuse(
                    ErrorCode::Internal,
                    "stored distribution key is not a G... key",
                )
            })?;
        let bump = TransactionEnvelope::TxFeeBump(FeeBumpTransactionEnvelope {
            tx: FeeBumpTransaction {
                fee_source: MuxedAccount::Ed25519(Uint256(fee_source.0)),
                fee,
                inner_tx: FeeBumpTransactionInnerTx::Tx(inner),
                ext: FeeBumpTransactionExt::V0,
            },
            signatures: Default::default(),
        });
        let xdr = encode_envelope(&bump)?;
        let signed = self
            .sign_envelope(
                caller_uid,
                network,
                (&bump, xdr),
                vec![distribution.public_key.clone()],
                SignKind::FeeBump,
            )
            .await?;
        Ok(FeeBumped {
            signed,
            inner_hash: owner.hash,
            fee,
            fee_source: distribution.public_key,
        })
    }
}

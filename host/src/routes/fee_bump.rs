//! `POST /v1/fee-bump`: wrap a signed transaction in a fee-bump paid by the distribution
//! account, and have the enclave sign it.

use axum::extract::{ConnectInfo, State};
use common::ErrorCode;
use common::stellar::{decode_envelope, encode_envelope, hex, network_id, sequence_owner};
use serde::{Deserialize, Serialize};
use stellar_xdr::{
    FeeBumpTransaction, FeeBumpTransactionEnvelope, FeeBumpTransactionExt,
    FeeBumpTransactionInnerTx, MuxedAccount, TransactionEnvelope, TransactionV1Envelope, Uint256,
};

use super::sign::{SignAnswer, decode_base64, network_of, sign_envelope};
use crate::api::{ApiError, ApiJson, AppState, Caller, blocking};
use crate::store::{KeyRole, KeyState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeeBumpRequest {
    /// Base64 XDR of a signed v1 (or v0) transaction envelope.
    transaction: String,
    /// Fee per operation: the fee-bump pays `base_fee × (operations + 1)`.
    base_fee: Option<i64>,
    /// Or the total fee, directly.
    max_fee: Option<i64>,
    network_passphrase: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FeeBumpAnswer {
    #[serde(flatten)]
    signed: SignAnswer,
    /// Hash of the inner transaction (what channel unlocks match).
    inner_hash: String,
    fee: i64,
    fee_source: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

pub async fn fee_bump(
    State(state): State<AppState>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    ApiJson(request): ApiJson<FeeBumpRequest>,
) -> Result<axum::Json<FeeBumpAnswer>, ApiError> {
    let network = network_of(&state, request.network_passphrase)?;
    let envelope =
        decode_envelope(&decode_base64(&request.transaction)?).map_err(|e| ApiError(e.into()))?;
    let inner: TransactionV1Envelope = match envelope {
        TransactionEnvelope::Tx(e) => e,
        // A v0 transaction's signatures are over its v1 form: converting keeps them valid.
        TransactionEnvelope::TxV0(e) => TransactionV1Envelope {
            tx: e.tx.into(),
            signatures: e.signatures,
        },
        TransactionEnvelope::TxFeeBump(_) => {
            return Err(refuse(
                ErrorCode::NotEligibleForFeeBump,
                "the transaction is already a fee-bump; bump its inner transaction instead",
            ));
        }
    };
    if inner.signatures.is_empty() {
        return Err(refuse(
            ErrorCode::NoSignaturesProvided,
            "the inner transaction carries no signature; sign it before asking for a fee-bump",
        ));
    }
    let operations = inner.tx.operations.len() as i64;
    let fee = match (request.base_fee, request.max_fee) {
        (Some(base), None) if base > 0 => base.saturating_mul(operations + 1),
        (None, Some(max)) if max > 0 => max,
        _ => {
            return Err(refuse(
                ErrorCode::BadRequest,
                "give exactly one of base_fee or max_fee, greater than zero",
            ));
        }
    };
    // The protocol requires the fee-bump's rate per operation (inner operations + 1)
    // to be at least the inner transaction's rate.
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
    let inner_envelope = TransactionEnvelope::Tx(inner.clone());
    let owner =
        sequence_owner(&inner_envelope, network_id(&network)).map_err(|e| ApiError(e.into()))?;
    let inner_source = format!("{}", stellar_strkey::ed25519::PublicKey(owner.account));
    let store = state.store.clone();
    let source = inner_source.clone();
    let (managed, distribution) = blocking(move || {
        let managed = store
            .key(&source)?
            .is_some_and(|k| k.state == KeyState::Active);
        let distribution = store
            .list_keys(Some(KeyRole::Distribution))?
            .into_iter()
            .find(|k| k.state == KeyState::Active)
            .map(|k| k.public_key);
        Ok((managed, distribution))
    })
    .await?;
    if !managed {
        return Err(refuse(
            ErrorCode::NotEligibleForFeeBump,
            format!("the inner source {inner_source} is not an account this signer manages"),
        ));
    }
    let distribution = distribution.ok_or_else(|| {
        refuse(
            ErrorCode::UnknownKey,
            "no active distribution key: provision one to pay fees",
        )
    })?;
    let fee_source =
        stellar_strkey::ed25519::PublicKey::from_string(&distribution).map_err(|_| {
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
    let xdr = encode_envelope(&bump).map_err(|e| ApiError(e.into()))?;
    let signed = sign_envelope(
        &state,
        caller,
        &network,
        (&bump, xdr),
        vec![distribution.clone()],
        "fee_bump",
    )
    .await?;
    Ok(axum::Json(FeeBumpAnswer {
        signed,
        inner_hash: hex(&owner.hash),
        fee,
        fee_source: distribution,
    }))
}

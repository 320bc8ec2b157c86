//! Stellar transaction envelopes: decoding untrusted XDR with bounds, the signature
//! payload hash (docs/design.md §6), and decorated signatures.

use sha2::{Digest, Sha256};
use stellar_xdr::{
    DecoratedSignature, Limits, ReadXdr, Signature, SignatureHint, TransactionEnvelope, WriteXdr,
};

/// Largest envelope accepted. Stellar's own transaction size limit is far below this.
pub const MAX_ENVELOPE_LEN: usize = 256 * 1024;
/// XDR nesting depth limit: generous for real transactions (Soroban invocations nest),
/// small enough that hostile input cannot exhaust the stack.
pub const MAX_XDR_DEPTH: u32 = 200;
/// Protocol limit on signatures per envelope.
pub const MAX_SIGNATURES: usize = 20;

/// Why an envelope could not be decoded, encoded, hashed or signed. Over the wire it
/// becomes `too_many_signatures`, or `malformed_transaction` for the other variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StellarError {
    /// The XDR is longer than [`MAX_ENVELOPE_LEN`]: `actual` bytes, `max` allowed.
    #[error("transaction envelope of {actual} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Bytes given.
        actual: usize,
        /// Most bytes accepted.
        max: usize,
    },
    /// The XDR does not decode (or encode) within the bounds; the text is the codec's.
    #[error("malformed transaction envelope XDR: {0}")]
    Malformed(String),
    /// The XDR decodes, but not to these bytes: it is not the canonical encoding of what
    /// it decodes to (the codec reads any non-1 boolean as false, for one). Refused, so
    /// that the bytes the caller sent are exactly the transaction the policy checked.
    #[error(
        "transaction envelope XDR is not canonical: it decodes, but re-encodes differently from byte {first_difference}"
    )]
    NotCanonical {
        /// Offset of the first byte where the input and the canonical encoding differ.
        first_difference: usize,
    },
    /// One more signature would exceed [`MAX_SIGNATURES`]: `count` already there, `max`
    /// allowed.
    #[error("the envelope already carries {count} signatures; the maximum is {max}")]
    TooManySignatures {
        /// Signatures the envelope already carries.
        count: usize,
        /// Most signatures an envelope may carry.
        max: usize,
    },
}

#[cfg(feature = "wire")]
impl From<StellarError> for crate::wire::WireError {
    fn from(e: StellarError) -> crate::wire::WireError {
        let code = match &e {
            StellarError::TooManySignatures { .. } => crate::wire::ErrorCode::TooManySignatures,
            StellarError::TooLarge { .. }
            | StellarError::Malformed(_)
            | StellarError::NotCanonical { .. } => crate::wire::ErrorCode::MalformedTransaction,
        };
        crate::wire::WireError::new(code, e.to_string())
    }
}

/// SHA-256 of the network passphrase.
pub fn network_id(passphrase: &str) -> [u8; 32] {
    Sha256::digest(passphrase.as_bytes()).into()
}

/// Decodes an untrusted TransactionEnvelope within the size and depth bounds.
pub fn decode_envelope(xdr: &[u8]) -> Result<TransactionEnvelope, StellarError> {
    decode_bounded(xdr)
}

/// Decodes untrusted XDR of any type within the size and depth bounds, accepting only
/// its canonical encoding.
pub fn decode_bounded<T: ReadXdr + WriteXdr>(xdr: &[u8]) -> Result<T, StellarError> {
    if xdr.len() > MAX_ENVELOPE_LEN {
        return Err(StellarError::TooLarge {
            actual: xdr.len(),
            max: MAX_ENVELOPE_LEN,
        });
    }
    let limits = Limits {
        depth: MAX_XDR_DEPTH,
        len: xdr.len(),
    };
    let value =
        T::from_xdr(xdr, limits.clone()).map_err(|e| StellarError::Malformed(e.to_string()))?;
    let canonical = value
        .to_xdr(limits)
        .map_err(|e| StellarError::Malformed(e.to_string()))?;
    if canonical != xdr {
        let first_difference = canonical
            .iter()
            .zip(xdr)
            .position(|(a, b)| a != b)
            .unwrap_or(canonical.len().min(xdr.len()));
        return Err(StellarError::NotCanonical { first_difference });
    }
    Ok(value)
}

/// Encodes an envelope to XDR.
pub fn encode_envelope(envelope: &TransactionEnvelope) -> Result<Vec<u8>, StellarError> {
    envelope
        .to_xdr(Limits::none())
        .map_err(|e| StellarError::Malformed(e.to_string()))
}

/// The hash that signatures sign: SHA-256 of the TransactionSignaturePayload for this
/// network. v0 envelopes hash as v1 (`ENVELOPE_TYPE_TX`); fee-bumps as
/// `ENVELOPE_TYPE_TX_FEE_BUMP`.
pub fn transaction_hash(
    envelope: &TransactionEnvelope,
    network_id: [u8; 32],
) -> Result<[u8; 32], StellarError> {
    envelope
        .hash(network_id)
        .map_err(|e| StellarError::Malformed(e.to_string()))
}

/// The hash a fee-bump's inner transaction is signed over (and appears under in ledger
/// history), computed in place.
pub fn inner_hash(
    inner: &stellar_xdr::TransactionV1Envelope,
    network_id: [u8; 32],
) -> Result<[u8; 32], StellarError> {
    inner
        .hash(network_id)
        .map_err(|e| StellarError::Malformed(e.to_string()))
}

/// The hint for a public key: its last four bytes.
pub fn signature_hint(public_key: &[u8; 32]) -> [u8; 4] {
    [
        public_key[28],
        public_key[29],
        public_key[30],
        public_key[31],
    ]
}

fn signatures_mut(
    envelope: &mut TransactionEnvelope,
) -> &mut stellar_xdr::VecM<DecoratedSignature, 20> {
    match envelope {
        TransactionEnvelope::TxV0(e) => &mut e.signatures,
        TransactionEnvelope::Tx(e) => &mut e.signatures,
        TransactionEnvelope::TxFeeBump(e) => &mut e.signatures,
    }
}

/// The signatures the envelope carries (a fee-bump's own, not its inner ones).
pub fn signatures(envelope: &TransactionEnvelope) -> &[DecoratedSignature] {
    match envelope {
        TransactionEnvelope::TxV0(e) => &e.signatures,
        TransactionEnvelope::Tx(e) => &e.signatures,
        TransactionEnvelope::TxFeeBump(e) => &e.signatures,
    }
}

/// Appends a signature unless the same one is already there. Returns whether it was
/// added.
pub fn add_signature(
    envelope: &mut TransactionEnvelope,
    public_key: &[u8; 32],
    signature: &[u8; 64],
) -> Result<bool, StellarError> {
    let decorated = DecoratedSignature {
        hint: SignatureHint(signature_hint(public_key)),
        signature: Signature(
            signature
                .to_vec()
                .try_into()
                .map_err(|_| StellarError::Malformed("signature length".into()))?,
        ),
    };
    let existing = signatures_mut(envelope);
    if existing.contains(&decorated) {
        return Ok(false);
    }
    if existing.len() >= MAX_SIGNATURES {
        return Err(StellarError::TooManySignatures {
            count: existing.len(),
            max: MAX_SIGNATURES,
        });
    }
    let mut list = existing.to_vec();
    list.push(decorated);
    *existing = list
        .try_into()
        .map_err(|_| StellarError::TooManySignatures {
            count: MAX_SIGNATURES + 1,
            max: MAX_SIGNATURES,
        })?;
    Ok(true)
}

/// The accounts whose signatures this envelope's own hash needs (docs/design.md §2 inv. 3):
/// the transaction source and every operation source for v0/v1 (muxed accounts
/// resolve to their G account); the fee source for a fee-bump (the inner transaction's
/// signers sign the inner hash, not this one).
pub fn required_signers(envelope: &TransactionEnvelope) -> Vec<[u8; 32]> {
    use stellar_xdr::Operation;
    let account = account_key;
    let op_sources = |ops: &[Operation]| -> Vec<[u8; 32]> {
        ops.iter()
            .filter_map(|op| op.source_account.as_ref().map(account))
            .collect()
    };
    let mut signers = match envelope {
        TransactionEnvelope::TxV0(e) => {
            let mut v = vec![e.tx.source_account_ed25519.0];
            v.extend(op_sources(&e.tx.operations));
            v
        }
        TransactionEnvelope::Tx(e) => {
            let mut v = vec![account(&e.tx.source_account)];
            v.extend(op_sources(&e.tx.operations));
            v
        }
        TransactionEnvelope::TxFeeBump(e) => vec![account(&e.tx.fee_source)],
    };
    signers.sort_unstable();
    signers.dedup();
    signers
}

/// The G account behind a (possibly muxed) account.
pub fn account_key(account: &stellar_xdr::MuxedAccount) -> [u8; 32] {
    match account {
        stellar_xdr::MuxedAccount::Ed25519(k) => k.0,
        stellar_xdr::MuxedAccount::MuxedEd25519(m) => m.ed25519.0,
    }
}

/// A v1 transaction's `maxTime`, when bounded (0 means unbounded).
pub fn max_time(tx: &stellar_xdr::Transaction) -> Option<u64> {
    use stellar_xdr::Preconditions;
    let bound = match &tx.cond {
        Preconditions::None => None,
        Preconditions::Time(t) => Some(t.max_time.0),
        Preconditions::V2(v2) => v2.time_bounds.as_ref().map(|t| t.max_time.0),
    };
    bound.filter(|t| *t != 0)
}

/// Who a transaction's sequence number belongs to, and until when it can land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceOwner {
    /// The source account (a muxed source resolves to its G account).
    pub account: [u8; 32],
    /// `maxTime`, when bounded.
    pub max_time: Option<u64>,
    /// The hash that shows up in ledger history for it (the inner hash of a fee-bump).
    pub hash: [u8; 32],
}

/// The transaction whose sequence number a channel lock protects: the inner one of a
/// fee-bump. Returns its source account (muxed accounts resolve to their G account),
/// its `maxTime` if bounded, and its hash (the inner hash for a fee-bump, which is what
/// appears in ledger history as the inner transaction).
pub fn sequence_owner(
    envelope: &TransactionEnvelope,
    network_id: [u8; 32],
) -> Result<SequenceOwner, StellarError> {
    use stellar_xdr::FeeBumpTransactionInnerTx;
    let account = account_key;
    let bounded = |t: u64| (t != 0).then_some(t);
    match envelope {
        TransactionEnvelope::TxV0(e) => Ok(SequenceOwner {
            account: e.tx.source_account_ed25519.0,
            max_time: e
                .tx
                .time_bounds
                .as_ref()
                .and_then(|t| bounded(t.max_time.0)),
            hash: transaction_hash(envelope, network_id)?,
        }),
        TransactionEnvelope::Tx(e) => Ok(SequenceOwner {
            account: account(&e.tx.source_account),
            max_time: max_time(&e.tx),
            hash: transaction_hash(envelope, network_id)?,
        }),
        TransactionEnvelope::TxFeeBump(e) => {
            let FeeBumpTransactionInnerTx::Tx(inner) = &e.tx.inner_tx;
            Ok(SequenceOwner {
                account: account(&inner.tx.source_account),
                max_time: max_time(&inner.tx),
                hash: inner_hash(inner, network_id)?,
            })
        }
    }
}

/// Lower-case hex, the form hashes take in the host's API, store and logs.
pub use crate::hex;

#[cfg(test)]
mod tests {
    use super::*;

    /// Published vector: the network id of the public network.
    #[test]
    fn network_ids() {
        assert_eq!(
            hex(&network_id(
                "Public Global Stellar Network ; September 2015"
            )),
            "7ac33997544e3175d266bd022439b22cdb16508c01163f26e5cb2a3e1045a979"
        );
        assert_eq!(
            hex(&network_id("Test SDF Network ; September 2015")),
            "cee0302d59844d32bdca915c8203dd44b33fbb7edc19051ea37abedf28ecd472"
        );
    }

    fn v1(source: [u8; 32], max_time: u64) -> stellar_xdr::TransactionV1Envelope {
        use stellar_xdr::*;
        TransactionV1Envelope {
            tx: Transaction {
                source_account: MuxedAccount::MuxedEd25519(MuxedAccountMed25519 {
                    id: 7,
                    ed25519: Uint256(source),
                }),
                fee: 100,
                seq_num: SequenceNumber(1),
                cond: Preconditions::Time(TimeBounds {
                    min_time: TimePoint(0),
                    max_time: TimePoint(max_time),
                }),
                memo: Memo::None,
                operations: vec![Operation {
                    source_account: None,
                    body: OperationBody::BumpSequence(BumpSequenceOp {
                        bump_to: SequenceNumber(2),
                    }),
                }]
                .try_into()
                .unwrap(),
                ext: TransactionExt::V0,
            },
            signatures: Default::default(),
        }
    }

    #[test]
    fn the_sequence_owner_of_a_fee_bump_is_its_inner_transaction() {
        use stellar_xdr::*;
        let net = network_id("Test SDF Network ; September 2015");
        let inner = v1([1; 32], 1_700_000_300);
        let inner_hash = transaction_hash(&TransactionEnvelope::Tx(inner.clone()), net).unwrap();
        let bump = TransactionEnvelope::TxFeeBump(FeeBumpTransactionEnvelope {
            tx: FeeBumpTransaction {
                fee_source: MuxedAccount::Ed25519(Uint256([9; 32])),
                fee: 400,
                inner_tx: FeeBumpTransactionInnerTx::Tx(inner),
                ext: FeeBumpTransactionExt::V0,
            },
            signatures: Default::default(),
        });
        let owner = sequence_owner(&bump, net).unwrap();
        // The channel (muxed source resolved to its G account) and the inner hash, not
        // the fee-bump's own hash.
        assert_eq!(owner.account, [1; 32]);
        assert_eq!(owner.max_time, Some(1_700_000_300));
        assert_eq!(owner.hash, inner_hash);
        assert_ne!(owner.hash, transaction_hash(&bump, net).unwrap());
        // Unbounded maxTime (0) means no bound.
        let open = TransactionEnvelope::Tx(v1([1; 32], 0));
        assert_eq!(sequence_owner(&open, net).unwrap().max_time, None);
    }

    #[test]
    fn required_signers_cover_sources_and_only_the_fee_source_for_fee_bumps() {
        use stellar_xdr::*;
        let mut envelope = v1([1; 32], 5);
        let op = Operation {
            source_account: Some(MuxedAccount::MuxedEd25519(MuxedAccountMed25519 {
                id: 3,
                ed25519: Uint256([2; 32]),
            })),
            body: OperationBody::Inflation,
        };
        let mut ops = envelope.tx.operations.to_vec();
        ops.push(op);
        envelope.tx.operations = ops.try_into().unwrap();
        let tx = TransactionEnvelope::Tx(envelope.clone());
        assert_eq!(required_signers(&tx), vec![[1; 32], [2; 32]]);
        let bump = TransactionEnvelope::TxFeeBump(FeeBumpTransactionEnvelope {
            tx: FeeBumpTransaction {
                fee_source: MuxedAccount::Ed25519(Uint256([9; 32])),
                fee: 400,
                inner_tx: FeeBumpTransactionInnerTx::Tx(envelope),
                ext: FeeBumpTransactionExt::V0,
            },
            signatures: Default::default(),
        });
        assert_eq!(required_signers(&bump), vec![[9; 32]]);
    }

    #[test]
    fn signatures_are_appended_once_and_capped_at_twenty() {
        let mut envelope = TransactionEnvelope::Tx(v1([1; 32], 5));
        assert!(add_signature(&mut envelope, &[3; 32], &[4; 64]).unwrap());
        assert!(
            !add_signature(&mut envelope, &[3; 32], &[4; 64]).unwrap(),
            "no duplicate"
        );
        assert_eq!(signatures(&envelope)[0].hint.0, [3, 3, 3, 3]);
        for i in 10..29u8 {
            add_signature(&mut envelope, &[3; 32], &[i; 64]).unwrap();
        }
        assert_eq!(
            add_signature(&mut envelope, &[3; 32], &[99; 64]).unwrap_err(),
            StellarError::TooManySignatures { count: 20, max: 20 }
        );
        let bytes = encode_envelope(&envelope).unwrap();
        assert_eq!(decode_envelope(&bytes).unwrap(), envelope);
    }

    /// Published vectors from rs-stellar-xdr's `tests/tx_hash.rs` (v0, v1, fee-bump and
    /// its inner transaction), through our decode → hash path.
    #[test]
    fn published_rs_stellar_xdr_hash_vectors() {
        use stellar_xdr::*;
        let net = network_id("Test SDF Network ; September 2015");
        let roundtrip =
            |e: TransactionEnvelope| decode_envelope(&encode_envelope(&e).unwrap()).unwrap();
        let v0 = roundtrip(TransactionEnvelope::TxV0(TransactionV0Envelope {
            tx: TransactionV0 {
                source_account_ed25519: Uint256([0; 32]),
                fee: 100,
                seq_num: SequenceNumber(1),
                time_bounds: None,
                operations: VecM::default(),
                memo: Memo::Text("v0".as_bytes().try_into().unwrap()),
                ext: TransactionV0Ext::V0,
            },
            signatures: VecM::default(),
        }));
        assert_eq!(
            hex(&transaction_hash(&v0, net).unwrap()),
            "037d99f3d0ded34afbf25ae9bf33d84d0a7b6cb2f37a8751301490660c4fc9c7"
        );
        let tx = |memo: &str| Transaction {
            source_account: MuxedAccount::Ed25519(Uint256([0; 32])),
            fee: 100,
            seq_num: SequenceNumber(1),
            cond: Preconditions::None,
            operations: VecM::default(),
            memo: Memo::Text(memo.as_bytes().try_into().unwrap()),
            ext: TransactionExt::V0,
        };
        let v1 = roundtrip(TransactionEnvelope::Tx(TransactionV1Envelope {
            tx: tx("v1"),
            signatures: VecM::default(),
        }));
        assert_eq!(
            hex(&transaction_hash(&v1, net).unwrap()),
            "cbe35083a4f43334c6314ef6f8c950200c91a336d7373efd34cfb71d2d009a63"
        );
        let bump = roundtrip(TransactionEnvelope::TxFeeBump(FeeBumpTransactionEnvelope {
            tx: FeeBumpTransaction {
                fee_source: MuxedAccount::Ed25519(Uint256([0; 32])),
                fee: 200,
                inner_tx: FeeBumpTransactionInnerTx::Tx(TransactionV1Envelope {
                    tx: tx("inner"),
                    signatures: VecM::default(),
                }),
                ext: FeeBumpTransactionExt::V0,
            },
            signatures: VecM::default(),
        }));
        assert_eq!(
            hex(&transaction_hash(&bump, net).unwrap()),
            "93136bdb126dfda1154143c5e16894fc9ccad41c1a54ed1f8dc8ed0964d53330"
        );
        assert_eq!(
            hex(&sequence_owner(&bump, net).unwrap().hash),
            "9f8bd4d2b3bb1ad9b4aac192fd4ee430a12862115d4464b904b4836ab2a60a35"
        );
    }

    /// A v1 envelope invoking a contract with one argument, `false`, last in the XDR.
    fn soroban_bool_envelope() -> TransactionEnvelope {
        use stellar_xdr::*;
        let mut envelope = v1([1; 32], 100);
        envelope.tx.operations = vec![Operation {
            source_account: None,
            body: OperationBody::InvokeHostFunction(InvokeHostFunctionOp {
                host_function: HostFunction::InvokeContract(InvokeContractArgs {
                    contract_address: ScAddress::Contract(ContractId(Hash([2; 32]))),
                    function_name: "set".try_into().unwrap(),
                    args: vec![ScVal::Bool(false)].try_into().unwrap(),
                }),
                auth: VecM::default(),
            }),
        }]
        .try_into()
        .unwrap();
        TransactionEnvelope::Tx(envelope)
    }

    #[test]
    fn hostile_xdr_is_rejected_without_panicking() {
        assert!(matches!(
            decode_envelope(&[]),
            Err(StellarError::Malformed(_))
        ));
        assert!(matches!(
            decode_envelope(&[0, 0, 0, 9]),
            Err(StellarError::Malformed(_))
        ));
        assert!(matches!(
            decode_envelope(&vec![0u8; MAX_ENVELOPE_LEN + 1]),
            Err(StellarError::TooLarge { .. })
        ));
        // A Soroban argument `true` written as 2: the codec reads it as false, so the
        // bytes would not be the transaction the policy checked.
        let envelope = soroban_bool_envelope();
        let canonical = encode_envelope(&envelope).unwrap();
        assert_eq!(decode_envelope(&canonical).unwrap(), envelope);
        // The bool's value, then the empty auth list, the ext and the signature count.
        let at = canonical.len() - 4 * 4;
        assert_eq!(canonical[at..at + 4], [0, 0, 0, 0]);
        let mut two = canonical.clone();
        two[at + 3] = 2;
        assert_eq!(
            decode_envelope(&two),
            Err(StellarError::NotCanonical {
                first_difference: at + 3
            })
        );
        // A v1 envelope whose operation count claims 2^32-1 entries.
        let mut huge = vec![0, 0, 0, 2];
        huge.extend_from_slice(&[0xff; 64]);
        assert!(decode_envelope(&huge).is_err());
    }
}

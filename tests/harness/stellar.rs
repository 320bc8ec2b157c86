//! Transaction builders the whole-stack tests share.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use stellar_xdr::{
    Limits, Memo, MuxedAccount, Operation, OperationBody, Preconditions, SequenceNumber,
    TimeBounds, TimePoint, Transaction, TransactionEnvelope, TransactionExt, TransactionV1Envelope,
    Uint256, WriteXdr,
};

/// The network the development enclave signs for.
pub const NETWORK: &str = "Test SDF Network ; September 2015";

/// A user account the tests use as the source of the operations channels pay for.
pub const USER: [u8; 32] = [0x75; 32];

/// The raw key of a `G...` strkey.
pub fn raw(public_key: &str) -> [u8; 32] {
    stellar_strkey::ed25519::PublicKey::from_string(public_key)
        .expect("a G... key")
        .0
}

/// A plain (non-muxed) account.
pub fn account(public_key: &str) -> MuxedAccount {
    MuxedAccount::Ed25519(Uint256(raw(public_key)))
}

/// A channel-sourced payment of `stroops` from the user's funds ([`USER`] is the
/// operation's source: the channel only sequences and pays the fee).
pub fn user_payment(source: &str, destination: &str, stroops: i64) -> TransactionEnvelope {
    let body = OperationBody::Payment(stellar_xdr::PaymentOp {
        destination: account(destination),
        asset: stellar_xdr::Asset::Native,
        amount: stroops,
    });
    transaction(
        source,
        100,
        vec![op(Some(MuxedAccount::Ed25519(Uint256(USER))), body)],
    )
}

/// Base64 XDR of an envelope.
pub fn b64(envelope: &TransactionEnvelope) -> String {
    B64.encode(envelope.to_xdr(Limits::none()).expect("encodable"))
}

/// SHA-256 of [`NETWORK`].
pub fn network_id() -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(NETWORK.as_bytes()).into()
}

/// Now plus `ahead` seconds.
pub fn in_secs(ahead: u64) -> u64 {
    common::now_unix_secs() + ahead
}

/// An operation with an optional explicit source.
pub fn op(source: Option<MuxedAccount>, body: OperationBody) -> Operation {
    Operation {
        source_account: source,
        body,
    }
}

/// An unsigned v1 transaction by `source` with fee `fee` and `maxTime` two minutes ahead.
pub fn transaction(source: &str, fee: u32, operations: Vec<Operation>) -> TransactionEnvelope {
    TransactionEnvelope::Tx(TransactionV1Envelope {
        tx: Transaction {
            source_account: account(source),
            fee,
            seq_num: SequenceNumber(4_294_967_297),
            cond: Preconditions::Time(TimeBounds {
                min_time: TimePoint(0),
                max_time: TimePoint(in_secs(120)),
            }),
            memo: Memo::None,
            operations: operations.try_into().expect("at most 100 operations"),
            ext: TransactionExt::V0,
        },
        signatures: Default::default(),
    })
}

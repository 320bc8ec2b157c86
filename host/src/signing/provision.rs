//! Channel accounts entering and leaving the ledger: `POST /v1/channels/provision`
//! builds the sponsored creation of pending channel accounts, `POST /v1/channels/merge`
//! the merge of withdrawn ones into the distribution account. Either is signed in one
//! enclave request by the distribution key and every account's key, and recorded on
//! the keys before the signed envelope leaves (so a re-run after a crash knows what may
//! still land).

use std::collections::HashSet;

use common::stellar::envelope::{encode_envelope, hex, network_id};
use common::wire::messages::{KeyMaterial, Request, Response};
use common::wire::{ErrorCode, WireError};
use stellar_xdr::{
    AccountId, BeginSponsoringFutureReservesOp, CreateAccountOp, Memo, MuxedAccount, Operation,
    OperationBody, Preconditions, PublicKey, SequenceNumber, TimeBounds, TimePoint, Transaction,
    TransactionEnvelope, TransactionExt, TransactionV1Envelope, Uint256,
};

use super::{SignKind, Signing, count, roles_of, unexpected};
use crate::store::{
    AuditEntry, KeyRecord, KeyRole, KeyState, LedgerChange, PendingFor, Provisioning, blocking,
};

/// Accounts per creation transaction: three operations each within the protocol's 100,
/// and the distribution key plus one key per account within the 20 signatures.
pub const MAX_ACCOUNTS_PER_TRANSACTION: usize = 19;
/// The latest `maxTime` a creation transaction gets, seconds ahead: the enclave's
/// policy window, and how long a crashed run must wait before it may rebuild.
pub const MAX_PROVISIONING_WINDOW_SECS: u64 = 300;

/// Builds a creation or merge transaction: distribution, accounts, sequence, fee,
/// maxTime.
type Builder = fn([u8; 32], &[[u8; 32]], i64, u32, u64) -> Result<TransactionEnvelope, WireError>;

/// What to build.
#[derive(Debug, Clone)]
pub struct ProvisionRequest {
    /// Create the accounts, or merge them into the distribution account.
    pub purpose: LedgerChange,
    /// Channel keys (`G...`) pending for `purpose`, 1 to [`MAX_ACCOUNTS_PER_TRANSACTION`].
    pub accounts: Vec<String>,
    /// The distribution account's current sequence number; the transaction uses the next.
    pub distribution_sequence: i64,
    /// Seconds until `maxTime`, 1 to [`MAX_PROVISIONING_WINDOW_SECS`].
    pub window_secs: u64,
    /// Fee per operation in stroops.
    pub fee_per_operation: u32,
}

/// A signed creation transaction.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The envelope XDR with every signature.
    pub transaction: Vec<u8>,
    pub tx_hash: [u8; 32],
    pub max_time: u64,
    /// The distribution account (the transaction's source and sponsor).
    pub distribution: String,
}

/// The sponsored creation of `accounts` by `distribution`: for each, Begin sponsoring
/// (distribution), CreateAccount with 0 XLM, End sponsoring (the new account).
pub fn creation_transaction(
    distribution: [u8; 32],
    accounts: &[[u8; 32]],
    sequence: i64,
    fee: u32,
    max_time: u64,
) -> Result<TransactionEnvelope, WireError> {
    let account_id = |key: [u8; 32]| AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(key)));
    let operations: Vec<Operation> = accounts
        .iter()
        .flat_map(|&account| {
            [
                Operation {
                    source_account: None,
                    body: OperationBody::BeginSponsoringFutureReserves(
                        BeginSponsoringFutureReservesOp {
                            sponsored_id: account_id(account),
                        },
                    ),
                },
                Operation {
                    source_account: None,
                    body: OperationBody::CreateAccount(CreateAccountOp {
                        destination: account_id(account),
                        starting_balance: 0,
                    }),
                },
                Operation {
                    source_account: Some(MuxedAccount::Ed25519(Uint256(account))),
                    body: OperationBody::EndSponsoringFutureReserves,
                },
            ]
        })
        .collect();
    distribution_transaction(distribution, operations, sequence, fee, max_time)
}

/// A v1 transaction by `distribution` with `operations`, valid until `max_time`.
fn distribution_transaction(
    distribution: [u8; 32],
    operations: Vec<Operation>,
    sequence: i64,
    fee: u32,
    max_time: u64,
) -> Result<TransactionEnvelope, WireError> {
    let count = operations.len();
    let operations = operations.try_into().map_err(|_| {
        bad_request(format!(
            "{count} operations are too many for one transaction"
        ))
    })?;
    Ok(TransactionEnvelope::Tx(TransactionV1Envelope {
        tx: Transaction {
            source_account: MuxedAccount::Ed25519(Uint256(distribution)),
            fee,
            seq_num: SequenceNumber(sequence),
            cond: Preconditions::Time(TimeBounds {
                min_time: TimePoint(0),
                max_time: TimePoint(max_time),
            }),
            memo: Memo::None,
            operations,
            ext: TransactionExt::V0,
        },
        signatures: Default::default(),
    }))
}

/// The merge of `accounts` into `distribution`, which pays the fee: one AccountMerge
/// per account, the account as its source.
pub fn merge_transaction(
    distribution: [u8; 32],
    accounts: &[[u8; 32]],
    sequence: i64,
    fee: u32,
    max_time: u64,
) -> Result<TransactionEnvelope, WireError> {
    let operations: Vec<Operation> = accounts
        .iter()
        .map(|&account| Operation {
            source_account: Some(MuxedAccount::Ed25519(Uint256(account))),
            body: OperationBody::AccountMerge(MuxedAccount::Ed25519(Uint256(distribution))),
        })
        .collect();
    distribution_transaction(distribution, operations, sequence, fee, max_time)
}

fn bad_request(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::BadRequest, message)
}

/// The request's accounts, checked: distinct, within bounds, each a stored channel key
/// pending for `purpose`.
fn pending_channels(
    purpose: LedgerChange,
    accounts: &[String],
    keys: Vec<(String, Option<KeyRecord>)>,
) -> Result<Vec<(KeyMaterial, [u8; 32])>, WireError> {
    if accounts.is_empty() || accounts.len() > MAX_ACCOUNTS_PER_TRANSACTION {
        return Err(bad_request(format!(
            "name 1 to {MAX_ACCOUNTS_PER_TRANSACTION} accounts per creation transaction, not {}",
            accounts.len()
        )));
    }
    let mut seen = HashSet::new();
    keys.into_iter()
        .map(|(public_key, key)| {
            if !seen.insert(public_key.clone()) {
                return Err(bad_request(format!("{public_key} is named twice")));
            }
            let key = key.ok_or_else(|| {
                WireError::new(ErrorCode::UnknownKey, format!("{public_key} is not stored"))
            })?;
            let waits_for = key.pending_for.unwrap_or(PendingFor::Creation);
            if key.role != KeyRole::Channel
                || key.state != KeyState::Pending
                || waits_for != purpose.pending_for()
            {
                return Err(bad_request(format!(
                    "{public_key} is a {} {} key; a {} takes channel keys pending for it",
                    key.state.as_str(),
                    key.role.as_str(),
                    purpose.as_str()
                )));
            }
            let raw = stellar_strkey::ed25519::PublicKey::from_string(&public_key)
                .map_err(|_| bad_request(format!("{public_key} is not a G... key")))?;
            Ok((KeyMaterial::from(key), raw.0))
        })
        .collect()
}

impl Signing {
    /// Builds, signs (one enclave request) and records a creation transaction.
    pub async fn provision(
        &self,
        caller_uid: Option<u32>,
        network: &str,
        request: ProvisionRequest,
    ) -> Result<Provisioned, WireError> {
        if !(1..=MAX_PROVISIONING_WINDOW_SECS).contains(&request.window_secs) {
            return Err(bad_request(format!(
                "max_time_secs: 1 to {MAX_PROVISIONING_WINDOW_SECS}, not {}",
                request.window_secs
            )));
        }
        let next_sequence = request
            .distribution_sequence
            .checked_add(1)
            .filter(|_| request.distribution_sequence >= 0)
            .ok_or_else(|| bad_request("sequence: the distribution account's current sequence"))?;
        let lookup = self.lookup(request.accounts.clone(), true).await?;
        let distribution = lookup.distribution.ok_or_else(|| {
            WireError::new(
                ErrorCode::UnknownKey,
                "no active distribution key: generate or register one first",
            )
        })?;
        let distribution_raw = stellar_strkey::ed25519::PublicKey::from_string(
            &distribution.public_key,
        )
        .map_err(|_| WireError::new(ErrorCode::Internal, "stored distribution key is no G..."))?;
        // In the order of `signers` below: the distribution key, then the accounts.
        let roles: Vec<&'static str> = std::iter::once(KeyRole::Distribution.as_str())
            .chain(roles_of(&lookup.keys))
            .collect();
        let channels = pending_channels(request.purpose, &request.accounts, lookup.keys)?;
        let raw: Vec<[u8; 32]> = channels.iter().map(|(_, raw)| *raw).collect();
        let (operations_per_account, build): (usize, Builder) = match request.purpose {
            LedgerChange::Creation => (3, creation_transaction),
            LedgerChange::Merge => (1, merge_transaction),
        };
        let operations = u32::try_from(raw.len() * operations_per_account).unwrap_or(u32::MAX);
        let fee = request.fee_per_operation.saturating_mul(operations);
        let max_time = common::now_unix_secs() + request.window_secs;
        let envelope = build(distribution_raw.0, &raw, next_sequence, fee, max_time)?;
        let mut signers: Vec<String> = vec![distribution.public_key.clone()];
        signers.extend(request.accounts.iter().cloned());
        if self.precheck {
            self.precheck_envelope(
                network_id(network),
                &envelope,
                &signers,
                Some(&distribution),
            )?;
        }
        let mut material = vec![KeyMaterial::from(distribution.clone())];
        material.extend(channels.into_iter().map(|(key, _)| key));
        let sign = Request::Sign {
            network_passphrase: network.to_string(),
            transaction: encode_envelope(&envelope)?,
            signers: material,
        };
        let (transaction, tx_hash) = match self.ask_enclave(sign).await {
            Ok(Response::Signed {
                transaction, hash, ..
            }) => (transaction, hash),
            Ok(other) => return Err(unexpected(&other)),
            Err(refused) => {
                self.record(
                    caller_uid,
                    SignKind::Provisioning,
                    (&signers, &roles),
                    Err(&refused),
                    None,
                )
                .await?;
                return Err(refused);
            }
        };
        let provisioning = Provisioning {
            tx_hash: hex(&tx_hash),
            max_time,
        };
        let audit: Vec<AuditEntry> = signers
            .iter()
            .map(|public_key| AuditEntry {
                caller_uid,
                public_key: Some(public_key.clone()),
                tx_hash: Some(provisioning.tx_hash.clone()),
                kind: SignKind::Provisioning.as_str().into(),
                outcome: "ok".into(),
                detail: Some(format!(
                    "{} of {} accounts, maxTime {max_time}",
                    request.purpose.as_str(),
                    raw.len()
                )),
            })
            .collect();
        let store = self.store.clone();
        let accounts = request.accounts;
        // Durable before the envelope leaves: whoever submits it, a re-run sees it.
        blocking(move || store.record_provisioning(&accounts, &provisioning, &audit)).await?;
        count(SignKind::Provisioning, &roles, None);
        Ok(Provisioned {
            transaction,
            tx_hash,
            max_time,
            distribution: distribution.public_key,
        })
    }
}

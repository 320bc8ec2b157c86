//! The stub's ledger: accounts, a queue, and the part of Stellar's validation and
//! apply rules that channel provisioning touches (sequence numbers, time bounds, fees,
//! signatures of every source, sponsorship, CreateAccount, AccountMerge). Everything
//! else fails as `opNOT_SUPPORTED`, so a test never passes on a rule the stub skips.

use std::collections::{HashMap, HashSet};

use common::stellar::envelope::{required_signers, signatures, transaction_hash};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use stellar_xdr::{
    AccountMergeResult, BeginSponsoringFutureReservesResult, CreateAccountResult,
    EndSponsoringFutureReservesResult, MuxedAccount, OperationBody, OperationResult,
    OperationResultTr, Transaction, TransactionEnvelope, TransactionResult, TransactionResultExt,
    TransactionResultResult,
};

/// Stroops per base reserve (0.5 XLM); a sponsor pays two per account it creates.
const BASE_RESERVE: i64 = 5_000_000;
/// The network's minimum fee per operation.
const BASE_FEE: i64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub sequence: i64,
    pub balance: i64,
    pub last_modified: u32,
    /// Reserves this account pays for accounts it sponsors.
    pub sponsoring_reserve: i64,
    /// Who pays this account's reserve, when sponsored.
    pub sponsor: Option<[u8; 32]>,
}

/// A transaction in a closed ledger.
#[derive(Debug, Clone)]
pub struct Applied {
    pub ledger: u32,
    pub close_time: u64,
    pub application_order: u32,
    pub envelope: TransactionEnvelope,
    pub result: TransactionResult,
}

impl Applied {
    pub fn succeeded(&self) -> bool {
        matches!(self.result.result, TransactionResultResult::TxSuccess(_))
    }
}

/// What `sendTransaction` did.
#[derive(Debug, Clone)]
pub enum Admission {
    Pending,
    Duplicate,
    TryAgainLater,
    Error(TransactionResult),
}

#[derive(Debug)]
pub struct Ledger {
    pub network_id: [u8; 32],
    pub sequence: u32,
    pub close_time: u64,
    pub oldest_close_time: u64,
    pub accounts: HashMap<[u8; 32], Account>,
    queue: Vec<([u8; 32], TransactionEnvelope)>,
    pub applied: HashMap<[u8; 32], Applied>,
}

fn result(fee_charged: i64, result: TransactionResultResult) -> TransactionResult {
    TransactionResult {
        fee_charged,
        result,
        ext: TransactionResultExt::V0,
    }
}

fn key_of(account: &MuxedAccount) -> [u8; 32] {
    match account {
        MuxedAccount::Ed25519(key) => key.0,
        MuxedAccount::MuxedEd25519(muxed) => muxed.ed25519.0,
    }
}

fn account_id_key(id: &stellar_xdr::AccountId) -> [u8; 32] {
    let stellar_xdr::PublicKey::PublicKeyTypeEd25519(key) = &id.0;
    key.0
}

impl Ledger {
    pub fn new(network_id: [u8; 32], close_time: u64, funded: &[([u8; 32], i64)]) -> Ledger {
        let sequence = 2;
        let accounts = funded
            .iter()
            .map(|&(key, balance)| {
                let account = Account {
                    sequence: i64::from(sequence) << 32,
                    balance,
                    last_modified: sequence,
                    sponsoring_reserve: 0,
                    sponsor: None,
                };
                (key, account)
            })
            .collect();
        Ledger {
            network_id,
            sequence,
            close_time,
            oldest_close_time: close_time,
            accounts,
            queue: Vec::new(),
            applied: HashMap::new(),
        }
    }

    /// `sendTransaction`: checks a transaction as a validator would before it queues it.
    pub fn admit(&mut self, envelope: TransactionEnvelope) -> ([u8; 32], Admission) {
        let Ok(hash) = transaction_hash(&envelope, self.network_id) else {
            return (
                [0; 32],
                Admission::Error(result(0, TransactionResultResult::TxMalformed)),
            );
        };
        if self.applied.contains_key(&hash) || self.queue.iter().any(|(h, _)| *h == hash) {
            return (hash, Admission::Duplicate);
        }
        let TransactionEnvelope::Tx(v1) = &envelope else {
            return (
                hash,
                Admission::Error(result(0, TransactionResultResult::TxNotSupported)),
            );
        };
        let source = key_of(&v1.tx.source_account);
        if self.queue.iter().any(|(_, queued)| match queued {
            TransactionEnvelope::Tx(q) => key_of(&q.tx.source_account) == source,
            _ => false,
        }) {
            return (hash, Admission::TryAgainLater);
        }
        if let Err(code) = self.check_valid(&v1.tx, &envelope, hash) {
            return (hash, Admission::Error(result(0, code)));
        }
        self.queue.push((hash, envelope));
        (hash, Admission::Pending)
    }

    fn check_valid(
        &self,
        tx: &Transaction,
        envelope: &TransactionEnvelope,
        hash: [u8; 32],
    ) -> Result<(), TransactionResultResult> {
        let Some(source) = self.accounts.get(&key_of(&tx.source_account)) else {
            return Err(TransactionResultResult::TxNoAccount);
        };
        if tx.seq_num.0 != source.sequence + 1 {
            return Err(TransactionResultResult::TxBadSeq);
        }
        if let stellar_xdr::Preconditions::Time(bounds) = &tx.cond {
            if bounds.max_time.0 != 0 && self.close_time > bounds.max_time.0 {
                return Err(TransactionResultResult::TxTooLate);
            }
            if bounds.min_time.0 > self.close_time {
                return Err(TransactionResultResult::TxTooEarly);
            }
        }
        let operations = i64::try_from(tx.operations.len()).unwrap_or(i64::MAX);
        if i64::from(tx.fee) < BASE_FEE * operations.max(1) {
            return Err(TransactionResultResult::TxInsufficientFee);
        }
        if source.balance < i64::from(tx.fee) {
            return Err(TransactionResultResult::TxInsufficientBalance);
        }
        verify_signatures(envelope, hash)
    }

    /// Closes a ledger at `close_time`: applies the queue in order.
    pub fn close(&mut self, close_time: u64) {
        self.sequence += 1;
        self.close_time = self.close_time.max(close_time);
        let queue = std::mem::take(&mut self.queue);
        for (order, (hash, envelope)) in queue.into_iter().enumerate() {
            let TransactionEnvelope::Tx(v1) = &envelope else {
                continue;
            };
            let outcome = self.apply(&v1.tx);
            self.applied.insert(
                hash,
                Applied {
                    ledger: self.sequence,
                    close_time: self.close_time,
                    application_order: u32::try_from(order + 1).unwrap_or(u32::MAX),
                    envelope,
                    result: outcome,
                },
            );
        }
    }

    /// Charges the fee and consumes the sequence, then applies every operation or none.
    fn apply(&mut self, tx: &Transaction) -> TransactionResult {
        let source_key = key_of(&tx.source_account);
        let fee = i64::from(tx.fee);
        let Some(source) = self.accounts.get_mut(&source_key) else {
            return result(0, TransactionResultResult::TxNoAccount);
        };
        if tx.seq_num.0 != source.sequence + 1 {
            return result(0, TransactionResultResult::TxBadSeq);
        }
        source.sequence = tx.seq_num.0;
        source.balance -= fee;
        source.last_modified = self.sequence;
        let before = self.accounts.clone();
        let mut sponsoring: HashMap<[u8; 32], [u8; 32]> = HashMap::new();
        let mut results = Vec::new();
        let mut failed = false;
        for op in &tx.operations {
            let op_source = op.source_account.as_ref().map_or(source_key, key_of);
            let outcome = self.apply_operation(op_source, &op.body, &mut sponsoring);
            failed |= !operation_succeeded(&outcome);
            results.push(outcome);
        }
        let results = results.try_into().unwrap_or_default();
        if failed {
            self.accounts = before;
            return result(fee, TransactionResultResult::TxFailed(results));
        }
        if !sponsoring.is_empty() {
            self.accounts = before;
            return result(fee, TransactionResultResult::TxBadSponsorship);
        }
        result(fee, TransactionResultResult::TxSuccess(results))
    }

    fn apply_operation(
        &mut self,
        source: [u8; 32],
        body: &OperationBody,
        sponsoring: &mut HashMap<[u8; 32], [u8; 32]>,
    ) -> OperationResult {
        let ledger = self.sequence;
        let supported = matches!(
            body,
            OperationBody::BeginSponsoringFutureReserves(_)
                | OperationBody::CreateAccount(_)
                | OperationBody::EndSponsoringFutureReserves
                | OperationBody::AccountMerge(_)
        );
        if !supported {
            return OperationResult::OpNotSupported;
        }
        if !self.accounts.contains_key(&source) {
            return OperationResult::OpNoAccount;
        }
        let inner = match body {
            OperationBody::BeginSponsoringFutureReserves(begin) => {
                let sponsored = account_id_key(&begin.sponsored_id);
                OperationResultTr::BeginSponsoringFutureReserves(if sponsored == source {
                    BeginSponsoringFutureReservesResult::Malformed
                } else if let std::collections::hash_map::Entry::Vacant(entry) =
                    sponsoring.entry(sponsored)
                {
                    entry.insert(source);
                    BeginSponsoringFutureReservesResult::Success
                } else {
                    BeginSponsoringFutureReservesResult::AlreadySponsored
                })
            }
            OperationBody::CreateAccount(create) => {
                let destination = account_id_key(&create.destination);
                let sponsor = sponsoring.get(&destination).copied();
                let reserve = 2 * BASE_RESERVE;
                OperationResultTr::CreateAccount(if create.starting_balance < 0 {
                    CreateAccountResult::Malformed
                } else if self.accounts.contains_key(&destination) {
                    CreateAccountResult::AlreadyExist
                } else if sponsor.is_none() && create.starting_balance < reserve {
                    // Unsponsored, the new account must hold its own reserve.
                    CreateAccountResult::LowReserve
                } else if self.spendable(source) < create.starting_balance
                    || sponsor.is_some_and(|payer| self.spendable(payer) < reserve)
                {
                    CreateAccountResult::Underfunded
                } else {
                    if let Some(payer) = self.accounts.get_mut(&source) {
                        payer.balance -= create.starting_balance;
                    }
                    if let Some(payer) = sponsor.and_then(|s| self.accounts.get_mut(&s)) {
                        payer.sponsoring_reserve += reserve;
                    }
                    self.accounts.insert(
                        destination,
                        Account {
                            sequence: i64::from(ledger) << 32,
                            balance: create.starting_balance,
                            last_modified: ledger,
                            sponsoring_reserve: 0,
                            sponsor,
                        },
                    );
                    CreateAccountResult::Success
                })
            }
            OperationBody::EndSponsoringFutureReserves => {
                OperationResultTr::EndSponsoringFutureReserves(
                    if sponsoring.remove(&source).is_some() {
                        EndSponsoringFutureReservesResult::Success
                    } else {
                        EndSponsoringFutureReservesResult::NotSponsored
                    },
                )
            }
            OperationBody::AccountMerge(destination) => {
                let destination = key_of(destination);
                OperationResultTr::AccountMerge(
                    match (self.accounts.get(&source).copied(), destination == source) {
                        (_, true) => AccountMergeResult::Malformed,
                        (None, false) => AccountMergeResult::NoAccount,
                        (Some(merged), false) if merged.sponsoring_reserve > 0 => {
                            AccountMergeResult::IsSponsor
                        }
                        (Some(merged), false) => match self.accounts.get_mut(&destination) {
                            None => AccountMergeResult::NoAccount,
                            Some(target) => {
                                target.balance += merged.balance;
                                target.last_modified = ledger;
                                self.accounts.remove(&source);
                                let sponsor =
                                    merged.sponsor.and_then(|s| self.accounts.get_mut(&s));
                                if let Some(sponsor) = sponsor {
                                    sponsor.sponsoring_reserve -= 2 * BASE_RESERVE;
                                }
                                AccountMergeResult::Success(merged.balance)
                            }
                        },
                    },
                )
            }
            _ => return OperationResult::OpNotSupported,
        };
        OperationResult::OpInner(inner)
    }

    /// What an account can spend above its own reserve and those it sponsors (a
    /// sponsored account's own reserve is its sponsor's).
    fn spendable(&self, key: [u8; 32]) -> i64 {
        self.accounts.get(&key).map_or(i64::MIN, |a| {
            let own = if a.sponsor.is_some() {
                0
            } else {
                2 * BASE_RESERVE
            };
            a.balance - own - a.sponsoring_reserve
        })
    }
}

fn operation_succeeded(result: &OperationResult) -> bool {
    matches!(
        result,
        OperationResult::OpInner(
            OperationResultTr::BeginSponsoringFutureReserves(
                BeginSponsoringFutureReservesResult::Success
            ) | OperationResultTr::CreateAccount(CreateAccountResult::Success)
                | OperationResultTr::EndSponsoringFutureReserves(
                    EndSponsoringFutureReservesResult::Success
                )
                | OperationResultTr::AccountMerge(AccountMergeResult::Success(_))
        )
    )
}

/// Every source (the transaction's and each operation's) signed with its master key,
/// and no signature is left unused: `txBAD_AUTH` / `txBAD_AUTH_EXTRA` otherwise.
fn verify_signatures(
    envelope: &TransactionEnvelope,
    hash: [u8; 32],
) -> Result<(), TransactionResultResult> {
    let required = required_signers(envelope);
    let mut used = HashSet::new();
    for key in &required {
        let verifying =
            VerifyingKey::from_bytes(key).map_err(|_| TransactionResultResult::TxBadAuth)?;
        let position = signatures(envelope).iter().position(|decorated| {
            decorated.hint.0 == key[28..]
                && Signature::from_slice(&decorated.signature.0)
                    .is_ok_and(|signature| verifying.verify(&hash, &signature).is_ok())
        });
        match position {
            Some(index) => {
                used.insert(index);
            }
            None => return Err(TransactionResultResult::TxBadAuth),
        }
    }
    if used.len() < signatures(envelope).len() {
        return Err(TransactionResultResult::TxBadAuthExtra);
    }
    Ok(())
}

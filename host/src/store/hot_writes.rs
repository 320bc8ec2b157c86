//! The signing path's writes (channel locks and audit rows), one implementation for
//! every backend: a backend says how its writer's connection runs each statement
//! ([`HotSql`]); this runs them as group-committed writes (`group_commit.rs`) and
//! implements [`ChannelLocks`] and [`AuditLog`] for any [`Backend`].

use std::time::Duration;

use rand::RngCore;

use super::group_commit::{Session, Unclaimed, Writer};
use super::{
    AuditEntry, AuditLog, AuditRow, ChannelLease, ChannelLocks, ChannelSummary, LockLimits,
    Pending, PendingWrite, SignedChannelTx, StoreError, UnlockOutcome, names_an_account, ready,
};

/// One statement of each hot write, on the writer's connection (inside its batch). A
/// write that refuses (a [`StoreError::is_refusal`] error) must have changed nothing:
/// the writer commits its batch around it without undoing anything. (On SQLite the writer
/// checks: a refusal that changed rows is undone like a failure.)
pub trait HotSql: Session {
    /// Locks an idle account until `until` with `token`, or says why none is idle.
    fn lease(&mut self, now: i64, until: i64, token: String) -> Result<ChannelLease, StoreError>;
    /// Frees `account` if `lock_token` still holds it.
    fn release_lease(
        &mut self,
        now: i64,
        account: &str,
        lock_token: &str,
    ) -> Result<(), StoreError>;
    /// Frees the accounts whose recorded transaction is one of `hashes`.
    fn unlock_hashes(&mut self, now: i64, hashes: &[String]) -> Result<UnlockOutcome, StoreError>;
    /// Records the signed transaction's hash on its channel and keeps the lock until
    /// `until`; `None` when the account is not in the pool.
    fn extend_lock(
        &mut self,
        now: i64,
        until: i64,
        signed: &SignedChannelTx,
    ) -> Result<Option<i64>, StoreError>;
    fn insert_audit(&mut self, now: i64, entry: &AuditEntry) -> Result<(), StoreError>;
}

/// A store backend: its writer, and the reads and rare writes that are its own.
pub trait Backend: Send + Sync {
    type Connection: HotSql;
    fn writer(&self) -> &Writer<Self::Connection>;
    fn lock_limits(&self) -> LockLimits;
    /// [`ChannelLocks::withdraw_idle`], durably.
    fn take_idle(&self, count: u32, caller_uid: Option<u32>) -> Result<Vec<String>, StoreError>;
    /// [`ChannelLocks::summary`].
    fn channel_summary(&self, with_accounts: bool) -> Result<ChannelSummary, StoreError>;
    /// [`AuditLog::recent_audit`].
    fn audit_rows(&self, limit: u32) -> Result<Vec<AuditRow>, StoreError>;
}

fn new_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    common::hex(&bytes)
}

/// Until when a channel whose transaction was signed stays locked: its `maxTime` plus
/// the margin. Without a maxTime the transaction could land at any time; the signing
/// policy refuses those for channel accounts, so this only guards the store itself.
fn locked_until_for(now: i64, limits: LockLimits, max_time_unix_s: Option<u64>) -> i64 {
    match max_time_unix_s {
        Some(max_time) => (max_time as i64)
            .saturating_mul(1000)
            .saturating_add(limits.max_time_margin.as_millis() as i64),
        None => now.saturating_add(limits.max_lock.as_millis() as i64),
    }
}

/// An acquire as a write of the group commit, once its duration is checked.
fn acquire_write<C: HotSql>(
    limits: LockLimits,
    duration: Option<Duration>,
) -> Result<impl FnMut(&mut C, i64) -> Result<ChannelLease, StoreError> + Send + 'static, StoreError>
{
    let duration = limits.lock_duration(duration)?;
    let token = new_token();
    Ok(move |conn: &mut C, now: i64| {
        conn.lease(
            now,
            now.saturating_add(duration.as_millis() as i64),
            token.clone(),
        )
    })
}

/// A release, once it names a `G...` account and a token without a NUL: anything else
/// holds no lock and is refused before any SQL (PostgreSQL refuses NUL in text, which
/// would fail the write and make the writer redo its whole batch with savepoints).
fn release_write<C: HotSql>(
    account: &str,
    lock_token: &str,
) -> Result<impl FnMut(&mut C, i64) -> Result<(), StoreError> + Send + use<C>, StoreError> {
    if !names_an_account(account) {
        return Err(StoreError::UnknownChannelAccount(account.to_string()));
    }
    if lock_token.contains('\0') {
        return Err(StoreError::LockTokenMismatch {
            account: account.to_string(),
        });
    }
    let (account, lock_token) = (account.to_string(), lock_token.to_string());
    Ok(move |conn: &mut C, now| conn.release_lease(now, &account, &lock_token))
}

/// One signing request's rows and lock extension, as one write of a group commit.
fn outcome_write<C: HotSql>(
    limits: LockLimits,
    audit: &[AuditEntry],
    signed: Option<&SignedChannelTx>,
) -> impl FnMut(&mut C, i64) -> Result<(), StoreError> + Send + 'static {
    let (audit, signed) = (audit.to_vec(), signed.cloned());
    move |conn, now| {
        for entry in &audit {
            conn.insert_audit(now, entry)?;
        }
        if let Some(signed) = &signed {
            let until = locked_until_for(now, limits, signed.max_time_unix_s);
            conn.extend_lock(now, until, signed)?;
        }
        Ok(())
    }
}

impl<B: Backend> ChannelLocks for B {
    fn acquire(&self, duration: Option<Duration>) -> Result<ChannelLease, StoreError> {
        self.writer()
            .write(acquire_write(self.lock_limits(), duration)?)
    }

    fn release(&self, account: &str, lock_token: &str) -> Result<(), StoreError> {
        self.writer().write(release_write(account, lock_token)?)
    }

    fn unlock_by_tx_hashes(&self, hashes: &[String]) -> Result<UnlockOutcome, StoreError> {
        let hashes = hashes.to_vec();
        self.writer()
            .write(move |conn: &mut B::Connection, now| conn.unlock_hashes(now, &hashes))
    }

    fn record_signed(
        &self,
        account: &str,
        tx_hash: &str,
        max_time_unix_s: Option<u64>,
    ) -> Result<i64, StoreError> {
        let limits = self.lock_limits();
        let signed = SignedChannelTx {
            account: account.to_string(),
            tx_hash: tx_hash.to_string(),
            max_time_unix_s,
        };
        self.writer().write(move |conn: &mut B::Connection, now| {
            let until = locked_until_for(now, limits, signed.max_time_unix_s);
            conn.extend_lock(now, until, &signed)?
                .ok_or_else(|| StoreError::UnknownChannelAccount(signed.account.clone()))
        })
    }

    fn summary(&self, with_accounts: bool) -> Result<ChannelSummary, StoreError> {
        self.channel_summary(with_accounts)
    }

    fn withdraw_idle(
        &self,
        count: u32,
        caller_uid: Option<u32>,
    ) -> Result<Vec<String>, StoreError> {
        self.take_idle(count, caller_uid)
    }

    fn submit_acquire(&self, duration: Option<Duration>) -> Pending<Unclaimed<ChannelLease>> {
        match acquire_write(self.lock_limits(), duration) {
            // A caller that left (hung up, timed out) never learns the token: its account
            // is not locked, or is freed at once, rather than held until the lock expires.
            Ok(write) => self
                .writer()
                .submit_for_caller(write, |lease: &ChannelLease| {
                    release_write(&lease.account, &lease.lock_token).ok()
                }),
            Err(refused) => ready(Err(refused)),
        }
    }

    fn submit_release(&self, account: &str, lock_token: &str) -> PendingWrite {
        match release_write(account, lock_token) {
            Ok(write) => self.writer().submit(write),
            Err(refused) => ready(Err(refused)),
        }
    }
}

impl<B: Backend> AuditLog for B {
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let entry = entry.clone();
        self.writer()
            .write(move |conn: &mut B::Connection, now| conn.insert_audit(now, &entry))
    }

    fn record_outcome(
        &self,
        audit: &[AuditEntry],
        signed: Option<&SignedChannelTx>,
    ) -> Result<(), StoreError> {
        self.writer()
            .write(outcome_write(self.lock_limits(), audit, signed))
    }

    fn submit_outcome(
        &self,
        audit: &[AuditEntry],
        signed: Option<&SignedChannelTx>,
    ) -> PendingWrite {
        self.writer()
            .submit(outcome_write(self.lock_limits(), audit, signed))
    }

    fn recent_audit(&self, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        self.audit_rows(limit)
    }
}

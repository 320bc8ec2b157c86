//! Channel-account locks (docs/design.md §5).
//!
//! Acquire is a pick and an `UPDATE` of the picked row, run by the group-commit writer
//! inside `BEGIN IMMEDIATE`: SQLite admits one writer at a time (across processes too),
//! and each write in a group sees the ones before it, so two callers can never get the
//! same account. The candidate is drawn at random from the few accounts whose locks
//! expired longest ago, found through the `locked_until_ms` index: the cost does not
//! grow with the pool, and an account that just came free is the last to be reused.
//!
//! The hot writes each change one row found by its primary key, without `RETURNING`:
//! SQLite runs a write that may change several rows, or has a `RETURNING` clause (run
//! as a trigger), under a statement journal, a copy of every page it touches that is
//! allocated and freed per statement. That was about an eighth of the host's CPU in
//! cached signing, most of it glibc handing the freed memory back to the kernel and
//! faulting it in again. A read by key beside the write costs far less.

use super::SqliteStore;
use crate::store::group_commit::Writer;
use crate::store::hot_writes::{Backend, HotSql};
use crate::store::{
    AuditEntry, ChannelLease, ChannelRow, ChannelSummary, LockLimits, SignedChannelTx, StoreError,
    UnlockOutcome, UnlockedChannel,
};
use rusqlite::{Connection, OptionalExtension, params};

/// How many of the longest-idle accounts the random pick draws from.
const PICK_FROM: i64 = 16;

/// One of the longest-idle accounts, picked at random among the first few.
pub(super) const PICK_IDLE: &str = "SELECT public_key FROM (
         SELECT public_key FROM channel_locks
         WHERE locked_until_ms <= ?1
         ORDER BY locked_until_ms
         LIMIT ?2)
     ORDER BY random() LIMIT 1";

impl HotSql for Connection {
    /// Locks a random account among the longest idle, on the writer's transaction.
    fn lease(&mut self, now: i64, until: i64, token: String) -> Result<ChannelLease, StoreError> {
        let conn = &*self;
        let picked: Option<String> = conn
            .prepare_cached(PICK_IDLE)?
            .query_row(params![now, PICK_FROM], |row| row.get(0))
            .optional()?;
        let Some(account) = picked else {
            let (total, next_free): (i64, Option<i64>) = conn
                .prepare_cached("SELECT count(*), min(locked_until_ms) FROM channel_locks")?
                .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            return Err(if total == 0 {
                StoreError::NoChannelAccountsConfigured
            } else {
                StoreError::NoIdleChannelAccount {
                    total: total as u64,
                    next_free_in_ms: next_free.map_or(0, |t| t.saturating_sub(now).max(0) as u64),
                }
            });
        };
        let locked = conn
            .prepare_cached(
                "UPDATE channel_locks
             SET locked_at_ms = ?2, locked_until_ms = ?3, lock_token = ?4, tx_hash = NULL
             WHERE public_key = ?1",
            )?
            .execute(params![account, now, until, token])?;
        // The pick ran in this transaction, under the write lock: nothing can have taken
        // the row between the two statements.
        if locked != 1 {
            return Err(StoreError::Writer(format!(
                "picked channel account {account} but locking it changed {locked} rows, not 1"
            )));
        }
        Ok(ChannelLease {
            account,
            lock_token: token,
            locked_until_ms: until,
        })
    }

    fn release_lease(
        &mut self,
        now: i64,
        account: &str,
        lock_token: &str,
    ) -> Result<(), StoreError> {
        let conn = &*self;
        // A freed account's `locked_until_ms` becomes "now": it joins the back of the idle
        // queue, behind accounts that have been idle longer.
        let released = conn
            .prepare_cached(
                "UPDATE channel_locks
             SET locked_at_ms = NULL, locked_until_ms = min(locked_until_ms, ?3),
                 lock_token = NULL, tx_hash = NULL
             WHERE public_key = ?1 AND lock_token = ?2",
            )?
            .execute(params![account, lock_token, now])?;
        if released == 0 {
            let known: bool = conn
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM channel_locks WHERE public_key = ?1)",
                )?
                .query_row(params![account], |row| row.get(0))?;
            return Err(if known {
                StoreError::LockTokenMismatch {
                    account: account.to_string(),
                }
            } else {
                StoreError::UnknownChannelAccount(account.to_string())
            });
        }
        Ok(())
    }

    fn unlock_hashes(&mut self, now: i64, hashes: &[String]) -> Result<UnlockOutcome, StoreError> {
        let conn = &*self;
        let mut outcome = UnlockOutcome::default();
        let mut locked_by =
            conn.prepare_cached("SELECT public_key FROM channel_locks WHERE tx_hash = ?1")?;
        // By primary key, one row per statement: an UPDATE that may touch several rows
        // (as `WHERE tx_hash = ?1` may) needs a statement journal too.
        let mut unlock = conn.prepare_cached(
            "UPDATE channel_locks
         SET locked_at_ms = NULL, locked_until_ms = min(locked_until_ms, ?3),
             lock_token = NULL, tx_hash = NULL
         WHERE public_key = ?1 AND tx_hash = ?2",
        )?;
        for hash in hashes {
            let hash = hash.to_ascii_lowercase();
            let accounts = locked_by
                .query_map(params![hash], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            if accounts.is_empty() {
                outcome.unmatched.push(hash);
                continue;
            }
            for account in accounts {
                unlock.execute(params![account, hash, now])?;
                outcome.unlocked.push(UnlockedChannel {
                    account,
                    tx_hash: hash.clone(),
                });
            }
        }
        Ok(outcome)
    }

    fn extend_lock(
        &mut self,
        now: i64,
        until: i64,
        signed: &SignedChannelTx,
    ) -> Result<Option<i64>, StoreError> {
        let conn = &*self;
        // An UPDATE and a SELECT: one `UPDATE … RETURNING` cost the host about 10 µs more
        // per cached signature (three alternated benchmark runs each), RETURNING making
        // SQLite buffer the rows in an ephemeral table.
        let extended = conn
            .prepare_cached(
                "UPDATE channel_locks
             SET tx_hash = ?2,
                 locked_at_ms = coalesce(locked_at_ms, ?3),
                 locked_until_ms = max(locked_until_ms, ?4)
             WHERE public_key = ?1",
            )?
            .execute(params![
                signed.account,
                signed.tx_hash.to_ascii_lowercase(),
                now,
                until
            ])?;
        if extended == 0 {
            return Ok(None);
        }
        Ok(Some(
            conn.prepare_cached("SELECT locked_until_ms FROM channel_locks WHERE public_key = ?1")?
                .query_row(params![signed.account], |row| row.get(0))?,
        ))
    }

    fn insert_audit(&mut self, now: i64, entry: &AuditEntry) -> Result<(), StoreError> {
        Ok(super::audit::insert_audit(self, now, entry)?)
    }
}

impl Backend for SqliteStore {
    type Connection = Connection;

    fn writer(&self) -> &Writer<Connection> {
        &self.writer
    }

    fn lock_limits(&self) -> LockLimits {
        self.limits
    }

    fn audit_rows(&self, limit: u32) -> Result<Vec<crate::store::AuditRow>, StoreError> {
        SqliteStore::audit_rows(self, limit)
    }

    fn take_idle(&self, count: u32, caller_uid: Option<u32>) -> Result<Vec<String>, StoreError> {
        self.write_durably(|tx, now| {
            let mut taken = tx.prepare(
                "DELETE FROM channel_locks WHERE public_key IN (
                     SELECT public_key FROM channel_locks WHERE locked_until_ms <= ?1
                     ORDER BY locked_until_ms LIMIT ?2)
                 RETURNING public_key",
            )?;
            let accounts = taken
                .query_map(params![now, count], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            for account in &accounts {
                tx.execute(
                    "UPDATE keys SET state = 'pending', pending_for = 'merge', \
                     provisioning_tx_hash = NULL, provisioning_max_time_s = NULL, \
                     updated_at_ms = ?2 WHERE public_key = ?1",
                    params![account, now],
                )?;
                let entry = crate::store::withdrawal_audit(account, caller_uid);
                super::audit::insert_audit(tx, now, &entry)?;
            }
            Ok(accounts)
        })
    }

    fn channel_summary(&self, with_accounts: bool) -> Result<ChannelSummary, StoreError> {
        let now = self.now();
        let conn = self.pool.get()?;
        let (total, locked, expired): (i64, i64, i64) = conn.query_row(
            "SELECT count(*),
                    coalesce(sum(locked_until_ms > ?1), 0),
                    coalesce(sum(locked_until_ms <= ?1 AND lock_token IS NOT NULL), 0)
             FROM channel_locks",
            params![now],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        let accounts = if with_accounts {
            let mut statement = conn.prepare(
                "SELECT public_key, locked_at_ms, locked_until_ms, lock_token IS NOT NULL, tx_hash
                 FROM channel_locks ORDER BY public_key",
            )?;
            let rows = statement.query_map(params![], |row| {
                let locked_until: i64 = row.get(2)?;
                let has_token: bool = row.get(3)?;
                Ok(ChannelRow {
                    account: row.get(0)?,
                    status: crate::store::channel_status(now, locked_until, has_token),
                    locked_at_ms: row.get(1)?,
                    locked_until_ms: (locked_until > 0).then_some(locked_until),
                    tx_hash: row.get(4)?,
                })
            })?;
            Some(rows.collect::<Result<Vec<_>, _>>()?)
        } else {
            None
        };
        Ok(ChannelSummary {
            total: total as u64,
            idle: (total - locked - expired) as u64,
            locked: locked as u64,
            expired: expired as u64,
            accounts,
        })
    }
}

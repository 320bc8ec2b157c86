//! Channel-account locks on PostgreSQL (docs/design.md §5).
//!
//! Acquire is one statement, the form stellar/wallet-backend used: the longest-idle
//! account, found through the `locked_until_ms` index and row-locked with
//! `FOR UPDATE SKIP LOCKED`, is updated and returned. Hosts never wait on, or take, a
//! row another transaction is taking: each skips to the next idle one. Under READ
//! COMMITTED the row lock re-reads the row's latest committed version and re-checks that
//! it is idle, so two hosts can never lease the same account. The order (oldest expiry
//! first, as on SQLite) spreads use over the whole pool, keeps the cost flat as the pool
//! grows (the head of an index), and makes an account that just came free the last to
//! be reused. (Not a random start in the key space: keys are not evenly spaced, so the
//! accounts after the widest gaps would carry most of the load.)

use super::{PgSession, PostgresStore, Sql};
use crate::store::group_commit::Writer;
use crate::store::hot_writes::{Backend, HotSql};
use crate::store::{
    AuditEntry, ChannelLease, ChannelRow, ChannelSummary, LockLimits, SignedChannelTx, StoreError,
    UnlockOutcome, UnlockedChannel,
};

const ACQUIRE: &str = "
    UPDATE channel_locks
    SET locked_at_ms = $1, locked_until_ms = $2, lock_token = $3, tx_hash = NULL
    WHERE public_key = (
        SELECT public_key FROM channel_locks
        WHERE locked_until_ms <= $1
        ORDER BY locked_until_ms LIMIT 1
        FOR UPDATE SKIP LOCKED)
    RETURNING public_key, locked_until_ms";

impl HotSql for PgSession {
    fn lease(&mut self, now: i64, until: i64, token: String) -> Result<ChannelLease, StoreError> {
        let session = self;
        let leased = session.row(ACQUIRE, &[&now, &until, &token])?;
        let Some(row) = leased else {
            let counts = session
                .row(
                    "SELECT count(*), min(locked_until_ms) FROM channel_locks",
                    &[],
                )?
                .ok_or_else(|| StoreError::Corrupt("count(*) returned no row".into()))?;
            let (total, next_free): (i64, Option<i64>) = (counts.try_get(0)?, counts.try_get(1)?);
            return Err(if total == 0 {
                StoreError::NoChannelAccountsConfigured
            } else {
                StoreError::NoIdleChannelAccount {
                    total: total as u64,
                    next_free_in_ms: next_free.map_or(0, |t| t.saturating_sub(now).max(0) as u64),
                }
            });
        };
        Ok(ChannelLease {
            account: row.try_get(0)?,
            lock_token: token,
            locked_until_ms: row.try_get(1)?,
        })
    }

    fn release_lease(
        &mut self,
        now: i64,
        account: &str,
        lock_token: &str,
    ) -> Result<(), StoreError> {
        let session = self;
        // A freed account's `locked_until_ms` becomes "now", as on SQLite.
        let released = session.execute(
            "UPDATE channel_locks
         SET locked_at_ms = NULL, locked_until_ms = LEAST(locked_until_ms, $3),
             lock_token = NULL, tx_hash = NULL
         WHERE public_key = $1 AND lock_token = $2",
            &[&account, &lock_token, &now],
        )?;
        if released == 0 {
            let known = session
                .row(
                    "SELECT 1 FROM channel_locks WHERE public_key = $1",
                    &[&account],
                )?
                .is_some();
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
        let session = self;
        let mut outcome = UnlockOutcome::default();
        for hash in hashes {
            let hash = hash.to_ascii_lowercase();
            let accounts = session.rows(
                "UPDATE channel_locks
             SET locked_at_ms = NULL, locked_until_ms = LEAST(locked_until_ms, $2),
                 lock_token = NULL, tx_hash = NULL
             WHERE tx_hash = $1
             RETURNING public_key",
                &[&hash, &now],
            )?;
            if accounts.is_empty() {
                outcome.unmatched.push(hash);
                continue;
            }
            for row in accounts {
                outcome.unlocked.push(UnlockedChannel {
                    account: row.try_get(0)?,
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
        let session = self;
        Ok(session
            .row(
                "UPDATE channel_locks
             SET tx_hash = $2,
                 locked_at_ms = coalesce(locked_at_ms, $3),
                 locked_until_ms = GREATEST(locked_until_ms, $4)
             WHERE public_key = $1
             RETURNING locked_until_ms",
                &[
                    &signed.account,
                    &signed.tx_hash.to_ascii_lowercase(),
                    &now,
                    &until,
                ],
            )?
            .map(|row| row.try_get(0))
            .transpose()?)
    }

    fn insert_audit(&mut self, now: i64, entry: &AuditEntry) -> Result<(), StoreError> {
        super::audit::insert_audit(self, now, entry)
    }
}

impl Backend for PostgresStore {
    type Connection = PgSession;

    fn writer(&self) -> &Writer<PgSession> {
        &self.writer
    }

    fn lock_limits(&self) -> LockLimits {
        self.limits
    }

    fn audit_rows(&self, limit: u32) -> Result<Vec<crate::store::AuditRow>, StoreError> {
        PostgresStore::audit_rows(self, limit)
    }

    fn take_idle(&self, count: u32, caller_uid: Option<u32>) -> Result<Vec<String>, StoreError> {
        self.write_durably(|tx, now| {
            let accounts: Vec<String> = tx
                .rows(
                    "DELETE FROM channel_locks WHERE public_key IN (
                         SELECT public_key FROM channel_locks WHERE locked_until_ms <= $1
                         ORDER BY locked_until_ms LIMIT $2
                         FOR UPDATE SKIP LOCKED)
                     RETURNING public_key",
                    &[&now, &i64::from(count)],
                )?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?;
            for account in &accounts {
                tx.execute(
                    "UPDATE keys SET state = 'pending', pending_for = 'merge', \
                     provisioning_tx_hash = NULL, provisioning_max_time_s = NULL, \
                     updated_at_ms = $2 WHERE public_key = $1",
                    &[account, &now],
                )?;
                let entry = crate::store::withdrawal_audit(account, caller_uid);
                super::audit::insert_audit(tx, now, &entry)?;
            }
            Ok(accounts)
        })
    }

    fn channel_summary(&self, with_accounts: bool) -> Result<ChannelSummary, StoreError> {
        let now = self.now();
        let mut client = self.client()?;
        let counts = client.query_one(
            "SELECT count(*),
                    count(*) FILTER (WHERE locked_until_ms > $1),
                    count(*) FILTER (WHERE locked_until_ms <= $1 AND lock_token IS NOT NULL)
             FROM channel_locks",
            &[&now],
        )?;
        let (total, locked, expired): (i64, i64, i64) =
            (counts.try_get(0)?, counts.try_get(1)?, counts.try_get(2)?);
        let accounts = if with_accounts {
            let rows = client.query(
                "SELECT public_key, locked_at_ms, locked_until_ms, lock_token IS NOT NULL,
                        tx_hash
                 FROM channel_locks ORDER BY public_key COLLATE \"C\"",
                &[],
            )?;
            Some(
                rows.iter()
                    .map(|row| {
                        let locked_until: i64 = row.try_get(2)?;
                        let has_token: bool = row.try_get(3)?;
                        Ok(ChannelRow {
                            account: row.try_get(0)?,
                            status: crate::store::channel_status(now, locked_until, has_token),
                            locked_at_ms: row.try_get(1)?,
                            locked_until_ms: (locked_until > 0).then_some(locked_until),
                            tx_hash: row.try_get(4)?,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?,
            )
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

//! Key records in memory for the signing path, in front of any backend. A record
//! changes only through the `KeyStore` writes (state, pending reason, seal), which
//! clear the cache here at once; changes made elsewhere (another host on the same
//! database, the offline CLI) are seen through the backend's key epoch, checked at most
//! every [`EPOCH_CHECK`]. Nothing cached is secret: records hold KMS ciphertexts only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use super::{
    AuditEntry, AuditLog, AuditRow, ChannelLease, ChannelLocks, ChannelSummary, KeyRecord, KeyRole,
    KeyState, KeyStore, NewKey, Provisioning, SignedChannelTx, Store, StoreError, UnlockOutcome,
};

/// How stale a record changed by another process may be, at most.
pub const EPOCH_CHECK: Duration = Duration::from_millis(250);
/// A bound on memory: past it the cache starts over.
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
struct Entries {
    keys: HashMap<String, KeyRecord>,
    /// The distribution keys, as `list_keys(Some(Distribution))` returns them.
    distribution: Option<Vec<KeyRecord>>,
    /// Moves on every clear, so a read that raced a write does not store what it read.
    generation: u64,
}

/// A [`Store`] whose key reads come from memory.
#[derive(Debug)]
pub struct KeyCache<S> {
    inner: S,
    entries: RwLock<Entries>,
    /// The key epoch last seen; the lock also lets one caller at a time check it.
    epoch: Mutex<Option<i64>>,
    /// Until when (nanoseconds after `created`) the last epoch check holds.
    fresh_until_ns: AtomicU64,
    created: Instant,
}

impl std::fmt::Debug for Entries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entries")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl<S: Store> KeyCache<S> {
    pub fn new(inner: S) -> KeyCache<S> {
        KeyCache {
            inner,
            entries: RwLock::new(Entries::default()),
            epoch: Mutex::new(None),
            fresh_until_ns: AtomicU64::new(0),
            created: Instant::now(),
        }
    }

    fn nanos_since_created(&self) -> u64 {
        u64::try_from(self.created.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the last epoch check still holds (else a read must check again).
    fn epoch_is_fresh(&self) -> bool {
        self.nanos_since_created() < self.fresh_until_ns.load(Ordering::Acquire)
    }

    fn clear(&self) {
        let mut entries = crate::write(&self.entries);
        entries.keys.clear();
        entries.distribution = None;
        entries.generation = entries.generation.wrapping_add(1);
    }

    /// Clears the cache if another writer changed a key since the last look.
    fn check_epoch(&self) -> Result<(), StoreError> {
        if self.epoch_is_fresh() {
            return Ok(());
        }
        let mut seen = crate::lock(&self.epoch);
        // Another caller may have checked while this one waited for the lock.
        if self.epoch_is_fresh() {
            return Ok(());
        }
        // Stamped before the query: what it reads is at least this fresh.
        let asked_at = self.nanos_since_created();
        let epoch = self.inner.key_epoch()?;
        if *seen != Some(epoch) {
            self.clear();
            *seen = Some(epoch);
        }
        let window = u64::try_from(EPOCH_CHECK.as_nanos()).unwrap_or(u64::MAX);
        self.fresh_until_ns
            .store(asked_at.saturating_add(window), Ordering::Release);
        Ok(())
    }

    /// Stores what was read, unless a write cleared the cache meanwhile.
    fn keep(&self, read_at: u64, store: impl FnOnce(&mut Entries)) {
        let mut entries = crate::write(&self.entries);
        if entries.generation != read_at {
            return;
        }
        if entries.keys.len() >= MAX_ENTRIES {
            entries.keys.clear();
        }
        store(&mut entries);
    }

    /// Runs a key write, then clears the cache whatever it returned (a failed write may
    /// still have changed the row, e.g. a commit whose answer was lost).
    fn writing<T>(&self, write: impl FnOnce(&S) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let result = write(&self.inner);
        self.clear();
        result
    }
}

impl<S: Store> KeyStore for KeyCache<S> {
    fn insert_keys_audited(&self, keys: &[NewKey], audit: &[AuditEntry]) -> Result<(), StoreError> {
        self.writing(|inner| inner.insert_keys_audited(keys, audit))
    }

    fn record_provisioning(
        &self,
        accounts: &[String],
        provisioning: &Provisioning,
        audit: &[AuditEntry],
    ) -> Result<(), StoreError> {
        self.writing(|inner| inner.record_provisioning(accounts, provisioning, audit))
    }

    fn replace_key_seal(
        &self,
        replacement: &NewKey,
        expected_ciphertext: &[u8],
        audit: &[AuditEntry],
    ) -> Result<(), StoreError> {
        self.writing(|inner| inner.replace_key_seal(replacement, expected_ciphertext, audit))
    }

    fn set_pending_reason(
        &self,
        public_key: &str,
        reason: &str,
        audit: &[AuditEntry],
    ) -> Result<(), StoreError> {
        self.writing(|inner| inner.set_pending_reason(public_key, reason, audit))
    }

    fn set_key_state(
        &self,
        public_key: &str,
        state: KeyState,
        audit: &[AuditEntry],
    ) -> Result<(), StoreError> {
        self.writing(|inner| inner.set_key_state(public_key, state, audit))
    }

    fn key(&self, public_key: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.check_epoch()?;
        let read_at = {
            let entries = crate::read(&self.entries);
            if let Some(record) = entries.keys.get(public_key) {
                return Ok(Some(record.clone()));
            }
            entries.generation
        };
        // Unknown keys are not remembered: a caller naming random keys must not fill
        // memory, and a key stored by another host must be found at once.
        let record = self.inner.key(public_key)?;
        if let Some(record) = &record {
            self.keep(read_at, |entries| {
                entries.keys.insert(public_key.to_string(), record.clone());
            });
        }
        Ok(record)
    }

    fn list_keys(&self, role: Option<KeyRole>) -> Result<Vec<KeyRecord>, StoreError> {
        if role != Some(KeyRole::Distribution) {
            return self.inner.list_keys(role);
        }
        self.check_epoch()?;
        let read_at = {
            let entries = crate::read(&self.entries);
            if let Some(distribution) = &entries.distribution {
                return Ok(distribution.clone());
            }
            entries.generation
        };
        let distribution = self.inner.list_keys(role)?;
        self.keep(read_at, |entries| {
            entries.distribution = Some(distribution.clone());
        });
        Ok(distribution)
    }

    fn key_epoch(&self) -> Result<i64, StoreError> {
        self.inner.key_epoch()
    }

    fn key_in_memory(&self, public_key: &str) -> Option<KeyRecord> {
        if !self.epoch_is_fresh() {
            return None;
        }
        let entries = crate::read(&self.entries);
        entries.keys.get(public_key).cloned()
    }

    fn distribution_in_memory(&self) -> Option<Vec<KeyRecord>> {
        if !self.epoch_is_fresh() {
            return None;
        }
        let entries = crate::read(&self.entries);
        entries.distribution.clone()
    }
}

impl<S: Store> ChannelLocks for KeyCache<S> {
    fn acquire(&self, duration: Option<Duration>) -> Result<ChannelLease, StoreError> {
        self.inner.acquire(duration)
    }
    fn release(&self, account: &str, lock_token: &str) -> Result<(), StoreError> {
        self.inner.release(account, lock_token)
    }
    fn submit_acquire(
        &self,
        duration: Option<Duration>,
    ) -> super::Pending<super::Unclaimed<ChannelLease>> {
        self.inner.submit_acquire(duration)
    }
    fn submit_release(&self, account: &str, lock_token: &str) -> super::PendingWrite {
        self.inner.submit_release(account, lock_token)
    }
    fn unlock_by_tx_hashes(&self, hashes: &[String]) -> Result<UnlockOutcome, StoreError> {
        self.inner.unlock_by_tx_hashes(hashes)
    }
    fn record_signed(
        &self,
        account: &str,
        tx_hash: &str,
        max_time_unix_s: Option<u64>,
    ) -> Result<i64, StoreError> {
        self.inner.record_signed(account, tx_hash, max_time_unix_s)
    }
    fn summary(&self, with_accounts: bool) -> Result<ChannelSummary, StoreError> {
        self.inner.summary(with_accounts)
    }
    fn withdraw_idle(
        &self,
        count: u32,
        caller_uid: Option<u32>,
    ) -> Result<Vec<String>, StoreError> {
        // Withdrawn accounts' keys become pending.
        self.writing(|inner| inner.withdraw_idle(count, caller_uid))
    }
}

impl<S: Store> AuditLog for KeyCache<S> {
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.inner.append_audit(entry)
    }
    fn record_outcome(
        &self,
        audit: &[AuditEntry],
        signed: Option<&SignedChannelTx>,
    ) -> Result<(), StoreError> {
        self.inner.record_outcome(audit, signed)
    }
    fn submit_outcome(
        &self,
        audit: &[AuditEntry],
        signed: Option<&SignedChannelTx>,
    ) -> super::PendingWrite {
        self.inner.submit_outcome(audit, signed)
    }
    fn recent_audit(&self, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        self.inner.recent_audit(limit)
    }
}

impl<S: Store> Store for KeyCache<S> {
    fn check(&self) -> Result<(), StoreError> {
        self.inner.check()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

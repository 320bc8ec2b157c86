//! The host's store: key ciphertexts, channel-account locks and the audit log, behind
//! the [`Store`] trait: SQLite (the default, embedded) or PostgreSQL (several hosts on
//! one database).
//!
//! Nothing here is secret: the host only ever holds KMS ciphertexts (docs/design.md
//! §2). What matters is that a key, once the API has said it is stored, survives any
//! crash, and that a channel account is never handed to two callers at once.
//!
//! All methods block; async callers run them on `spawn_blocking`.

mod group_commit;
mod hot_writes;
pub mod key_cache;
mod postgres;
mod records;
pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use group_commit::Unclaimed;
pub use key_cache::KeyCache;
pub use postgres::{PostgresStore, PostgresTarget};
pub use records::*;
pub use sqlite::{SCHEMA_VERSION, SqliteStore};

use common::wire::{ErrorCode, WireError};

/// Stored keys. Key writes are durable before they return.
pub trait KeyStore: Send + Sync {
    /// Stores keys in one transaction: either all are stored or none.
    fn insert_keys(&self, keys: &[NewKey]) -> Result<(), StoreError> {
        self.insert_keys_audited(keys, &[])
    }
    /// Stores keys and the audit rows that record it in one transaction.
    fn insert_keys_audited(&self, keys: &[NewKey], audit: &[AuditEntry]) -> Result<(), StoreError>;
    /// Records that the pending channel accounts `accounts` were signed into the
    /// creation transaction `provisioning`, with its audit rows, durably and in one
    /// transaction. Fails unless every account is a pending channel key.
    fn record_provisioning(
        &self,
        accounts: &[String],
        provisioning: &Provisioning,
        audit: &[AuditEntry],
    ) -> Result<(), StoreError>;
    /// Swaps a key's seal (a rewrap under another KMS key) for `replacement`'s, if its
    /// KMS ciphertext is still `expected_ciphertext`, with the audit rows, durably, in
    /// one transaction: a signature in flight reads the old record or the new one.
    fn replace_key_seal(
        &self,
        replacement: &NewKey,
        expected_ciphertext: &[u8],
        audit: &[AuditEntry],
    ) -> Result<(), StoreError>;
    /// Records why a pending key is still pending, with the audit rows, durably.
    fn set_pending_reason(
        &self,
        public_key: &str,
        reason: &str,
        audit: &[AuditEntry],
    ) -> Result<(), StoreError>;
    /// Moves a key to another state (pending → active → retired), with the audit rows
    /// that record it, in one transaction.
    fn set_key_state(
        &self,
        public_key: &str,
        state: KeyState,
        audit: &[AuditEntry],
    ) -> Result<(), StoreError>;
    /// One key by its public key.
    fn key(&self, public_key: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Every key, or those of one role.
    fn list_keys(&self, role: Option<KeyRole>) -> Result<Vec<KeyRecord>, StoreError>;
    /// A number that changes whenever any key record changes, by any writer.
    fn key_epoch(&self) -> Result<i64, StoreError>;
    /// A key record held in memory and known to be current, without touching the
    /// backend, so an async caller needs no blocking thread; `None` means "ask
    /// [`key`](Self::key)". Only a cache answers.
    fn key_in_memory(&self, _public_key: &str) -> Option<KeyRecord> {
        None
    }
    /// The same for `list_keys(Some(KeyRole::Distribution))`.
    fn distribution_in_memory(&self) -> Option<Vec<KeyRecord>> {
        None
    }
}

/// A write a backend commits on a thread of its own, awaited without holding one.
pub type Pending<T> = tokio::sync::oneshot::Receiver<Result<T, StoreError>>;
pub type PendingWrite = Pending<()>;

/// Whether `text` can name a stored key or channel account: only a `G...` strkey can.
/// Lookups of anything else find nothing without asking the database, so request text
/// never makes a query fail (PostgreSQL refuses a NUL in text).
pub fn names_an_account(text: &str) -> bool {
    stellar_strkey::ed25519::PublicKey::from_string(text).is_ok()
}

/// An answer known before any write (a refused argument), as a pending one.
pub fn ready<T>(result: Result<T, StoreError>) -> Pending<T> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let _ = reply.send(result);
    answer
}

/// The answer to a queued write, once committed.
pub async fn committed<T>(pending: Pending<T>) -> Result<T, WireError> {
    match pending.await {
        Ok(result) => result.map_err(|e| e.to_wire()),
        Err(_) => Err(StoreError::Writer("the writer stopped before answering".into()).to_wire()),
    }
}

/// The append-only audit log.
pub trait AuditLog: Send + Sync {
    /// Appends one row.
    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// The outcome of one signing request: its audit rows and, when a channel's
    /// transaction was signed, the lock kept to its `maxTime`, committed together (a
    /// `signed` account that is not in the pool is no error: nothing to keep locked).
    fn record_outcome(
        &self,
        audit: &[AuditEntry],
        signed: Option<&SignedChannelTx>,
    ) -> Result<(), StoreError>;
    /// [`record_outcome`](Self::record_outcome) queued without blocking the caller:
    /// the pending commit to await (the signing path's write).
    fn submit_outcome(
        &self,
        audit: &[AuditEntry],
        signed: Option<&SignedChannelTx>,
    ) -> PendingWrite;
    /// The latest rows, newest first.
    fn recent_audit(&self, limit: u32) -> Result<Vec<AuditRow>, StoreError>;
}

/// The channel pool (docs/design.md §5). Methods block.
pub trait ChannelLocks: Send + Sync {
    /// Locks a random idle channel account for `duration` (default lock when `None`).
    fn acquire(&self, duration: Option<Duration>) -> Result<ChannelLease, StoreError>;
    /// Failure path: frees the account if `lock_token` still holds it.
    fn release(&self, account: &str, lock_token: &str) -> Result<(), StoreError>;
    /// Success path: frees the accounts whose recorded transaction is one of `hashes`.
    fn unlock_by_tx_hashes(&self, hashes: &[String]) -> Result<UnlockOutcome, StoreError>;
    /// A transaction sourced by `account` was signed: remember its hash (the inner hash
    /// of a fee-bump) and keep the account locked until the transaction can no longer
    /// land (`max_time_unix_s` plus the margin). Returns the new `locked_until_ms`.
    fn record_signed(
        &self,
        account: &str,
        tx_hash: &str,
        max_time_unix_s: Option<u64>,
    ) -> Result<i64, StoreError>;
    fn summary(&self, with_accounts: bool) -> Result<ChannelSummary, StoreError>;
    /// Takes up to `count` idle channel accounts out of the pool, to be merged into the
    /// distribution account: their keys become pending for a merge, audited as
    /// `channel_withdrawn` for `caller_uid`, durably. A locked account is never taken.
    fn withdraw_idle(&self, count: u32, caller_uid: Option<u32>)
    -> Result<Vec<String>, StoreError>;
    /// [`acquire`](Self::acquire) queued without blocking the caller. Not run if the
    /// caller stops awaiting it first; the lease must be [claimed](Unclaimed::claim), or
    /// it is released again at once (its caller left without learning the token).
    fn submit_acquire(&self, duration: Option<Duration>) -> Pending<Unclaimed<ChannelLease>>;
    /// [`release`](Self::release) queued without blocking the caller.
    fn submit_release(&self, account: &str, lock_token: &str) -> PendingWrite;
}

/// A whole store: keys, channel locks and audit, plus health.
pub trait Store: KeyStore + ChannelLocks + AuditLog + std::fmt::Debug {
    /// A cheap round trip, for readiness checks.
    /// Whether the backend answers and its schema is the one this binary migrates to.
    fn check(&self) -> Result<(), StoreError>;
    /// Which backend and where, for logs and `/readyz`.
    fn describe(&self) -> String;
}

/// The store the host shares between its tasks.
pub type SharedStore = Arc<dyn Store>;

/// Opens the configured backend (creating and migrating it as needed), behind the
/// host's key cache.
pub fn open(
    config: &crate::config::StoreConfig,
    limits: LockLimits,
) -> Result<SharedStore, StoreError> {
    let wait = Duration::from_millis(config.busy_timeout_ms);
    let location = config
        .location()
        .map_err(|reason| StoreError::BadUrl { reason })?;
    Ok(match location {
        crate::config::StoreLocation::Sqlite(path) => {
            if let Some(parent) = path.parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|source| StoreError::Sync {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            Arc::new(KeyCache::new(SqliteStore::open(&path, limits, wait)?))
        }
        crate::config::StoreLocation::Postgres(url) => {
            let target = PostgresTarget::new(&url.0, config.ca_file.as_deref())?;
            Arc::new(KeyCache::new(PostgresStore::open(target, limits, wait)?))
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no channel accounts configured: the pool is empty; provision channel accounts first")]
    NoChannelAccountsConfigured,
    #[error(
        "no idle channel account: all {total} channel accounts are locked (the next lock \
         expires in {next_free_in_ms} ms); add channel accounts or lower concurrency"
    )]
    NoIdleChannelAccount { total: u64, next_free_in_ms: u64 },
    #[error("{0} is not a channel account in the pool")]
    UnknownChannelAccount(String),
    #[error(
        "the lock on {account} is not held with this token (it expired and was taken by \
         another caller, or was released already)"
    )]
    LockTokenMismatch { account: String },
    #[error("lock duration of {requested_ms} ms is outside 1..={max_ms} ms")]
    InvalidLockDuration { requested_ms: u64, max_ms: u64 },
    #[error("key {0} is already stored")]
    KeyExists(String),
    #[error(
        "distribution key {active} is active; another ({new}) can be stored only once it is \
         retired"
    )]
    DistributionExists { active: String, new: String },
    #[error("invalid key record: {0}")]
    InvalidKey(String),
    #[error(
        "database schema version {found} is newer than this signer-host supports \
         ({supported}); run a newer signer-host or restore a matching backup"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error(
        "database schema version {found} is not the version {expected} this signer-host \
         migrated it to (changed by another process?); restart signer-host to migrate it"
    )]
    SchemaNotMigrated { found: i64, expected: i64 },
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database error: {}", postgres_detail(.0))]
    Postgres(#[from] ::postgres::Error),
    #[error("database {database}: cannot connect: {}", postgres_detail(.source))]
    Connect {
        database: String,
        source: ::postgres::Error,
    },
    #[error("store location: {reason}")]
    BadUrl { reason: String },
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("database holds a record this signer-host cannot read: {0}")]
    Corrupt(String),
    #[error("database {database}: no connection: {message}")]
    Pool { database: String, message: String },
    /// The group-commit writer could not commit (the whole batch is rolled back).
    #[error("store write failed: {0}")]
    Writer(String),
    #[error("syncing {path}: {source}")]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A PostgreSQL error with what the server or the connection said: the driver's own
/// `Display` is only its kind ("db error").
pub fn postgres_detail(error: &::postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

impl StoreError {
    /// A channel write's refusal, decided from what it read (no idle account, a token
    /// that no longer holds the lock): such a write has changed nothing, so its batch
    /// commits without it. Every other error of a write may leave a change behind (or,
    /// on PostgreSQL, an aborted transaction) and makes the writer redo its batch with a
    /// savepoint per write (`group_commit.rs`).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::NoChannelAccountsConfigured
                | StoreError::NoIdleChannelAccount { .. }
                | StoreError::UnknownChannelAccount(_)
                | StoreError::LockTokenMismatch { .. }
        )
    }

    pub fn to_wire(&self) -> WireError {
        let code = match self {
            StoreError::NoChannelAccountsConfigured => ErrorCode::NoChannelAccountsConfigured,
            StoreError::NoIdleChannelAccount { .. } => ErrorCode::NoIdleChannelAccount,
            StoreError::UnknownChannelAccount(_) => ErrorCode::UnknownChannelAccount,
            StoreError::LockTokenMismatch { .. } => ErrorCode::LockTokenMismatch,
            StoreError::InvalidLockDuration { .. } | StoreError::InvalidKey(_) => {
                ErrorCode::BadRequest
            }
            StoreError::KeyExists(_) | StoreError::DistributionExists { .. } => {
                ErrorCode::KeyExists
            }
            StoreError::SchemaTooNew { .. }
            | StoreError::SchemaNotMigrated { .. }
            | StoreError::Open { .. }
            | StoreError::Sqlite(_)
            | StoreError::Postgres(_)
            | StoreError::Connect { .. }
            | StoreError::BadUrl { .. }
            | StoreError::Migration(_)
            | StoreError::Corrupt(_)
            | StoreError::Pool { .. }
            | StoreError::Writer(_)
            | StoreError::Sync { .. } => ErrorCode::StoreError,
        };
        WireError::new(code, self.to_string())
    }
}

/// Milliseconds since the Unix epoch. A function so tests can move time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default()
    })
}

/// Lock lifetimes. Defaults follow docs/design.md §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockLimits {
    pub default_lock: Duration,
    pub max_lock: Duration,
    /// Added to a signed transaction's `maxTime` when extending its channel's lock, to
    /// absorb clock skew between this host and the network.
    pub max_time_margin: Duration,
}

impl Default for LockLimits {
    fn default() -> Self {
        Self {
            default_lock: Duration::from_secs(30),
            max_lock: Duration::from_mins(5),
            max_time_margin: Duration::from_secs(30),
        }
    }
}

impl LockLimits {
    /// The lock an acquire asks for (the default when `None`), if within the cap.
    pub fn lock_duration(&self, requested: Option<Duration>) -> Result<Duration, StoreError> {
        let duration = requested.unwrap_or(self.default_lock);
        if duration.is_zero() || duration > self.max_lock {
            return Err(StoreError::InvalidLockDuration {
                requested_ms: duration.as_millis() as u64,
                max_ms: self.max_lock.as_millis() as u64,
            });
        }
        Ok(duration)
    }
}

/// A channel account's status in listings: `locked`, `expired` (the lock lapsed
/// without a release) or `idle`.
pub fn channel_status(now: i64, locked_until_ms: i64, has_token: bool) -> &'static str {
    if locked_until_ms > now {
        "locked"
    } else if has_token {
        "expired"
    } else {
        "idle"
    }
}

/// The audit row of a channel account taken out of the pool.
pub fn withdrawal_audit(account: &str, caller_uid: Option<u32>) -> AuditEntry {
    AuditEntry {
        caller_uid,
        public_key: Some(account.to_string()),
        tx_hash: None,
        kind: "channel_withdrawn".into(),
        outcome: "ok".into(),
        detail: Some("left the pool, to be merged into the distribution account".into()),
    }
}

/// Runs a blocking store call off the async workers.
pub async fn blocking<T, F>(call: F) -> Result<T, WireError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(|e| e.to_wire()),
        Err(e) => Err(WireError::new(
            ErrorCode::Internal,
            format!("store task failed: {e}"),
        )),
    }
}

/// The active distribution key, if one is stored. Written once for every caller.
pub fn active_distribution(store: &dyn Store) -> Result<Option<KeyRecord>, StoreError> {
    Ok(the_active(store.list_keys(Some(KeyRole::Distribution))?))
}

/// The active one among the distribution keys.
pub fn the_active(distribution_keys: Vec<KeyRecord>) -> Option<KeyRecord> {
    distribution_keys
        .into_iter()
        .find(|k| k.state == KeyState::Active)
}

#[cfg(test)]
pub(crate) mod tests;

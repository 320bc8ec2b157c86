//! The host's SQLite store: key ciphertexts, channel-account locks and the audit log.
//!
//! Nothing here is secret: the host only ever holds KMS ciphertexts (DESIGN.md §2).
//! What matters is that a key, once the API has said it is stored, survives any crash
//! (full fsync, file and directory), and that a channel account is never handed to two
//! callers at once (every lock change is one statement inside `BEGIN IMMEDIATE`).
//!
//! All methods block; async callers run them on `spawn_blocking`. Channel locking is
//! behind [`ChannelLocks`] so a shared lock store (PostgreSQL) can replace it.

mod audit;
mod channels;
mod keys;
mod pool;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use audit::{AuditEntry, AuditRow};
pub use channels::{ChannelLease, ChannelLocks, ChannelRow, ChannelSummary, UnlockOutcome};
pub use keys::{KeyFormat, KeyRecord, KeyRole, KeyState, NewKey};
pub use schema::SCHEMA_VERSION;

use common::ErrorCode;
use common::WireError;

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
    #[error("invalid key record: {0}")]
    InvalidKey(String),
    #[error(
        "database schema version {found} is newer than this signer-host supports \
         ({supported}); run a newer signer-host or restore a matching backup"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("syncing {path}: {source}")]
    Sync {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StoreError {
    pub fn to_wire(&self) -> WireError {
        let code = match self {
            StoreError::NoChannelAccountsConfigured => ErrorCode::NoChannelAccountsConfigured,
            StoreError::NoIdleChannelAccount { .. } => ErrorCode::NoIdleChannelAccount,
            StoreError::UnknownChannelAccount(_) => ErrorCode::UnknownChannelAccount,
            StoreError::LockTokenMismatch { .. } => ErrorCode::LockTokenMismatch,
            StoreError::InvalidLockDuration { .. } | StoreError::InvalidKey(_) => {
                ErrorCode::BadRequest
            }
            StoreError::KeyExists(_) => ErrorCode::KeyExists,
            StoreError::SchemaTooNew { .. }
            | StoreError::Open { .. }
            | StoreError::Sqlite(_)
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

/// Lock lifetimes. Defaults follow DESIGN.md §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockPolicy {
    pub default_lock: Duration,
    pub max_lock: Duration,
    /// Added to a signed transaction's `maxTime` when extending its channel's lock, to
    /// absorb clock skew between this host and the network.
    pub max_time_margin: Duration,
}

impl Default for LockPolicy {
    fn default() -> Self {
        Self {
            default_lock: Duration::from_secs(30),
            max_lock: Duration::from_secs(300),
            max_time_margin: Duration::from_secs(30),
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: Arc<pool::Pool>,
    clock: Clock,
    policy: LockPolicy,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.pool.path())
            .field("policy", &self.policy)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub fn open(
        path: &Path,
        policy: LockPolicy,
        busy_timeout: Duration,
    ) -> Result<Store, StoreError> {
        Self::open_with_clock(path, policy, busy_timeout, system_clock())
    }

    pub fn open_with_clock(
        path: &Path,
        policy: LockPolicy,
        busy_timeout: Duration,
        clock: Clock,
    ) -> Result<Store, StoreError> {
        let pool = pool::Pool::new(path.to_path_buf(), busy_timeout);
        {
            let mut conn = pool.get()?;
            schema::migrate(&mut conn)?;
        }
        // The database file and its WAL now exist: make their directory entries durable.
        pool.sync_dir()?;
        Ok(Store {
            pool: Arc::new(pool),
            clock,
            policy,
        })
    }

    pub fn policy(&self) -> LockPolicy {
        self.policy
    }

    pub fn path(&self) -> &Path {
        self.pool.path()
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    /// A cheap query, for readiness checks.
    pub fn check(&self) -> Result<(), StoreError> {
        let conn = self.pool.get()?;
        conn.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

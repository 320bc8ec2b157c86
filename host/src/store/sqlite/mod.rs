//! The embedded SQLite backend, the default. One database file; every lock change runs
//! inside `BEGIN IMMEDIATE`, so SQLite's single writer (across processes too) is what
//! keeps a channel from being handed out twice. Key writes are fsynced,
//! file and directory, before they return.

mod audit;
mod channels;
mod keys;
mod pool;
mod schema;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use schema::SCHEMA_VERSION;

use super::group_commit::{Session, Writer, stalled_after};
use super::hot_writes::Backend;
use super::{Clock, LockLimits, Store, StoreError, system_clock};

/// Pooled connections for reads and durable key writes. Signing and channel traffic
/// reads from the key cache and writes through the writer, so this bounds only the
/// listings, health checks and key administration running at once.
const MAX_CONNECTIONS: u32 = 32;

#[derive(Clone)]
pub struct SqliteStore {
    pool: Arc<pool::Pool>,
    /// Lock and audit writes, group-committed.
    writer: Arc<Writer<rusqlite::Connection>>,
    /// How long a batch of writes may take before readiness calls the writer stalled.
    stalled_after: Duration,
    clock: Clock,
    limits: LockLimits,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.pool.path())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub fn open(
        path: &Path,
        limits: LockLimits,
        busy_timeout: Duration,
    ) -> Result<SqliteStore, StoreError> {
        Self::open_with_clock(path, limits, busy_timeout, system_clock())
    }

    pub fn open_with_clock(
        path: &Path,
        limits: LockLimits,
        busy_timeout: Duration,
        clock: Clock,
    ) -> Result<SqliteStore, StoreError> {
        let pool = pool::Pool::new(path.to_path_buf(), busy_timeout, MAX_CONNECTIONS);
        {
            let mut conn = pool.get()?;
            schema::migrate(&mut conn)?;
        }
        // The database file and its WAL now exist: make their directory entries durable.
        pool.sync_dir()?;
        let writer_path = path.to_path_buf();
        let connect = move || {
            pool::open(&writer_path, busy_timeout).map_err(|source| StoreError::Open {
                path: writer_path.clone(),
                source,
            })
        };
        let writer = Writer::start(Box::new(connect), clock.clone())?;
        Ok(SqliteStore {
            pool: Arc::new(pool),
            writer: Arc::new(writer),
            stalled_after: stalled_after(busy_timeout),
            clock,
            limits,
        })
    }

    /// The lock lifetimes this store enforces.
    pub fn limits(&self) -> LockLimits {
        self.limits
    }

    pub fn path(&self) -> &Path {
        self.pool.path()
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Runs `write` (given the transaction and the time) in one `BEGIN IMMEDIATE`
    /// transaction committed with `synchronous=FULL`, then fsyncs the directory: for
    /// writes that must survive power loss (key material, and what a re-run relies on).
    /// Either all of it is stored or none.
    fn write_durably<T>(
        &self,
        write: impl FnOnce(&rusqlite::Transaction<'_>, i64) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let now = self.now();
        let mut conn = self.pool.get()?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let result = (|| -> Result<T, StoreError> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let value = write(&tx, now)?;
            tx.commit()?;
            Ok(value)
        })();
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let value = result?;
        self.pool.sync_dir()?;
        Ok(value)
    }
}

/// The group-commit writer's connection: `BEGIN IMMEDIATE` takes SQLite's write lock
/// (across processes) before the batch's first statement.
impl Session for rusqlite::Connection {
    fn begin(&mut self) -> Result<(), String> {
        self.control("BEGIN IMMEDIATE")
    }

    fn control(&mut self, sql: &str) -> Result<(), String> {
        self.execute_batch(sql)
            .map_err(|e| format!("database error: {e}"))
    }

    /// SQLite may have rolled back on its own (after SQLITE_FULL, IOERR, NOMEM), and then
    /// `ROLLBACK` fails with nothing left to undo: what counts is that no transaction is open.
    fn rollback(&mut self) -> bool {
        let _ = self.control("ROLLBACK");
        self.is_autocommit()
    }

    fn rows_changed(&self) -> Option<u64> {
        Some(self.total_changes())
    }

    fn outside_transaction(&self) -> bool {
        self.is_autocommit()
    }
}

impl Store for SqliteStore {
    fn check(&self) -> Result<(), StoreError> {
        self.writer().health(self.stalled_after)?;
        let conn = self.pool.get()?;
        let found: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        match found.cmp(&schema::SCHEMA_VERSION) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Greater => Err(StoreError::SchemaTooNew {
                found,
                supported: schema::SCHEMA_VERSION,
            }),
            std::cmp::Ordering::Less => Err(StoreError::SchemaNotMigrated {
                found,
                expected: schema::SCHEMA_VERSION,
            }),
        }
    }

    fn describe(&self) -> String {
        format!("SQLite {}", self.path().display())
    }
}

#[cfg(test)]
mod tests;

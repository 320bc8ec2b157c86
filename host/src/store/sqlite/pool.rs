//! SQLite connections for the store's reads and durable key writes, pooled by r2d2.
//! SQLite itself serialises writers (file locks, also across processes); WAL lets
//! readers run alongside. Lock and audit traffic goes through the group-commit writer
//! (`writer.rs`) on a connection of its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use crate::store::StoreError;

/// Enough for every hot statement of the store, so none is parsed twice.
const STATEMENT_CACHE: usize = 64;

/// Opens and checks connections for r2d2.
#[derive(Debug)]
pub struct Connections {
    path: PathBuf,
    busy_timeout: Duration,
}

impl r2d2::ManageConnection for Connections {
    type Connection = Connection;
    type Error = rusqlite::Error;

    fn connect(&self) -> rusqlite::Result<Connection> {
        open(&self.path, self.busy_timeout)
    }

    fn is_valid(&self, conn: &mut Connection) -> rusqlite::Result<()> {
        conn.execute_batch("")
    }

    /// A connection left inside a transaction (a panic mid-way) is not reused.
    fn has_broken(&self, conn: &mut Connection) -> bool {
        !conn.is_autocommit()
    }
}

/// One connection with the store's settings.
pub fn open(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Lock traffic may lose its last commits in a power cut (a lock then simply looks
    // expired), never in a process crash; key writes raise this to FULL for their own
    // commit.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Plans that do not depend on bound values: otherwise SQLite may re-prepare a cached
    // statement each time a parameter it planned with changes (the channel lease did, on
    // every acquire, for more than half its cost).
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

pub type Pooled = r2d2::PooledConnection<Connections>;

pub struct Pool {
    path: PathBuf,
    connections: r2d2::Pool<Connections>,
}

impl Pool {
    /// A pool of at most `max_connections`; a caller waits up to `busy_timeout` for one.
    pub fn new(path: PathBuf, busy_timeout: Duration, max_connections: u32) -> Pool {
        let connections = r2d2::Pool::builder()
            .max_size(max_connections.max(1))
            // Idle connections are kept (opening one costs more than a statement) and
            // opened lazily, so a short-lived CLI run opens only what it uses.
            .min_idle(Some(0))
            .idle_timeout(None)
            .max_lifetime(None)
            .test_on_check_out(false)
            .connection_timeout(busy_timeout.max(Duration::from_millis(100)))
            .build_unchecked(Connections {
                path: path.clone(),
                busy_timeout,
            });
        Pool { path, connections }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self) -> Result<Pooled, StoreError> {
        self.connections.get().map_err(|e| StoreError::Pool {
            database: self.path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// fsyncs the directory holding the database, so that newly created files (the
    /// database, its WAL) survive a crash, not just their contents.
    pub fn sync_dir(&self) -> Result<(), StoreError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::Sync { path: dir, source })
    }
}

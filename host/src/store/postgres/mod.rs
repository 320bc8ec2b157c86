//! The PostgreSQL backend, for several hosts sharing one channel pool and key store
//! (README "Running several hosts"). The same tables, numbered migrations and
//! guarantees as SQLite: acquire is one `UPDATE … FOR UPDATE SKIP LOCKED` statement, so
//! hosts never wait on each other's candidate rows and an account is never handed out
//! twice; lock and audit writes are group-committed by one writer per host; key writes
//! commit with `synchronous_commit = on` before they return.

mod audit;
mod channels;
mod connect;
mod keys;
mod schema;

use std::sync::Arc;
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Row, Statement};

use super::group_commit::{Session, Writer, stalled_after};
use super::hot_writes::Backend;
use super::{Clock, LockLimits, Store, StoreError, system_clock};
pub use connect::PostgresTarget;

/// Pooled connections for reads and durable key writes, per host. Signing and channel
/// traffic reads from the key cache and writes through the writer, so this bounds only
/// the listings, health checks and key administration running at once.
const MAX_CONNECTIONS: u32 = 16;

type Manager = r2d2_postgres::PostgresConnectionManager<tokio_postgres_rustls::MakeRustlsConnect>;

#[derive(Clone)]
pub struct PostgresStore {
    pool: Arc<ConnectionPool>,
    /// Lock and audit writes, group-committed.
    writer: Arc<Writer<PgSession>>,
    /// How long a batch of writes may take before readiness calls the writer stalled.
    stalled_after: Duration,
    target: Arc<PostgresTarget>,
    clock: Clock,
    limits: LockLimits,
}

/// The pool, closed off the async runtime when the last store handle goes: closing a
/// `postgres::Client` blocks on the driver's own runtime, which panics on a tokio
/// worker (where a server's state is dropped at shutdown).
struct ConnectionPool(Option<r2d2::Pool<Manager>>);

impl Drop for ConnectionPool {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let closing = std::thread::Builder::new()
                .name("store-pool-close".into())
                .spawn(move || drop(pool));
            if let Ok(closing) = closing {
                let _ = closing.join();
            }
        }
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.target.describe())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `target`, applies pending migrations (one host at a
    /// time) and starts the writer. `wait` bounds connecting and waiting for a pooled
    /// connection.
    pub fn open(
        target: PostgresTarget,
        limits: LockLimits,
        wait: Duration,
    ) -> Result<PostgresStore, StoreError> {
        Self::open_with_clock(target, limits, wait, system_clock())
    }

    pub fn open_with_clock(
        target: PostgresTarget,
        limits: LockLimits,
        wait: Duration,
        clock: Clock,
    ) -> Result<PostgresStore, StoreError> {
        let target = Arc::new(target.with_timeouts(wait));
        {
            let mut client = target.connect()?;
            schema::migrate(&mut client, &target)?;
        }
        let manager = r2d2_postgres::PostgresConnectionManager::new(
            target.config().clone(),
            target.tls().clone(),
        );
        let pool = r2d2::Pool::builder()
            .max_size(MAX_CONNECTIONS)
            .min_idle(Some(0))
            // A pooled connection broken by a server restart is found and replaced.
            .test_on_check_out(true)
            .connection_timeout(wait.max(Duration::from_millis(100)))
            .build_unchecked(manager);
        let writer_target = target.clone();
        let connect = move || writer_target.connect().map(PgSession::new);
        let writer = Writer::start(Box::new(connect), clock.clone())?;
        Ok(PostgresStore {
            pool: Arc::new(ConnectionPool(Some(pool))),
            writer: Arc::new(writer),
            stalled_after: stalled_after(wait),
            target,
            clock,
            limits,
        })
    }

    /// Where the database is (the URL, TLS settings).
    pub fn target(&self) -> &PostgresTarget {
        &self.target
    }

    /// The lock lifetimes this store enforces.
    pub fn limits(&self) -> LockLimits {
        self.limits
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    fn client(&self) -> Result<r2d2::PooledConnection<Manager>, StoreError> {
        let pool = self.pool.0.as_ref().ok_or_else(|| StoreError::Pool {
            database: self.target.describe(),
            message: "closed".to_string(),
        })?;
        pool.get().map_err(|e| StoreError::Pool {
            database: self.target.describe(),
            message: e.to_string(),
        })
    }

    /// Runs `write` (given the transaction and the time) in one transaction committed
    /// with `synchronous_commit = on` (flushed to the server's disk, and to its
    /// synchronous standbys if it has any): for key material and what a re-run relies
    /// on. Either all of it is stored or none.
    ///
    /// Two hosts activating two distribution keys at once both find none active; the
    /// unique index lets one commit and fails the other, which then runs once more and
    /// sees the winner, so it answers `DistributionExists` as on one host.
    fn write_durably<T>(
        &self,
        mut write: impl FnMut(&mut postgres::Transaction<'_>, i64) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self.write_durably_once(&mut write) {
            Err(StoreError::Postgres(e)) if violates(&e, "keys_one_active_distribution") => {
                self.write_durably_once(&mut write)
            }
            result => result,
        }
    }

    fn write_durably_once<T>(
        &self,
        write: &mut impl FnMut(&mut postgres::Transaction<'_>, i64) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let now = self.now();
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        tx.batch_execute("SET LOCAL synchronous_commit TO on")?;
        let value = write(&mut tx, now)?;
        // Fails if any statement of the transaction failed (had a write swallowed an
        // error, COMMIT would roll back without one).
        tx.batch_execute("SELECT 1")?;
        tx.commit()?;
        Ok(value)
    }
}

/// Whether `error` is the server refusing a row for the unique index `index`.
fn violates(error: &postgres::Error, index: &str) -> bool {
    error.as_db_error().is_some_and(|db| {
        *db.code() == postgres::error::SqlState::UNIQUE_VIOLATION && db.constraint() == Some(index)
    })
}

/// SQL on either the writer's session (statements prepared once per connection) or a
/// pooled connection's transaction, so each statement is written once for both.
pub(super) trait Sql {
    fn rows(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error>;

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error>;

    fn row(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        Ok(self.rows(sql, params)?.into_iter().next())
    }
}

impl Sql for postgres::Transaction<'_> {
    fn rows(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        self.query(sql, params)
    }

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        postgres::Transaction::execute(self, sql, params)
    }
}

/// The group-commit writer's connection, with its prepared statements.
pub struct PgSession {
    client: postgres::Client,
    statements: std::collections::HashMap<&'static str, Statement>,
}

impl PgSession {
    fn new(client: postgres::Client) -> PgSession {
        PgSession {
            client,
            statements: std::collections::HashMap::new(),
        }
    }

    fn prepared(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }
}

impl Sql for PgSession {
    fn rows(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.client.query(&statement, params)
    }

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.client.execute(&statement, params)
    }
}

impl Session for PgSession {
    /// A batch redone after a failed write gives each write a savepoint, which is a
    /// subtransaction; past 64 in one transaction every server backend's snapshot has to
    /// look them up on disk (the subtransaction cache overflows), which slows all of the
    /// database's sessions, not only this one.
    const MAX_BATCH: usize = 64;

    fn begin(&mut self) -> Result<(), String> {
        self.control("BEGIN")
    }

    fn control(&mut self, sql: &str) -> Result<(), String> {
        // PostgreSQL answers COMMIT of a transaction that hit an error with a silent
        // rollback; the SELECT fails first in that case, so a lost batch is an error.
        let sql = if sql == "COMMIT" {
            "SELECT 1; COMMIT"
        } else {
            sql
        };
        self.client
            .batch_execute(sql)
            .map_err(|e| format!("database error: {}", super::postgres_detail(&e)))
    }

    fn is_broken(&mut self) -> bool {
        self.client.is_closed()
    }
}

impl Store for PostgresStore {
    fn check(&self) -> Result<(), StoreError> {
        self.writer().health(self.stalled_after)?;
        let mut client = self.client()?;
        schema::check(&mut client)
    }

    fn describe(&self) -> String {
        format!("PostgreSQL {}", self.target.describe())
    }
}

/// A caller's uid as stored (PostgreSQL has no unsigned integers).
fn uid_column(uid: Option<u32>) -> Option<i64> {
    uid.map(i64::from)
}

#[cfg(test)]
mod tests;

//! Group commit for the hot writes (channel locks and audit rows), for every backend:
//! one thread owns a connection, takes every write that is waiting, runs them all in one
//! transaction, commits once, and only then answers each caller. So an answer never
//! leaves before its rows are committed (the audit stays fail-closed), a failed commit
//! fails them all, and the database still orders every lock change.
//!
//! A write that refuses (no idle account, a stale lock token) has changed nothing and
//! the batch commits without it. A write that fails otherwise may have left a change
//! (or on PostgreSQL an aborted transaction): the batch is rolled back and redone with a
//! savepoint around each write, so that write alone is undone and the others commit.
//! Failures are rare, so batches normally pay for no savepoints (which cost SQLite a
//! journal copy of each page a write touches, and PostgreSQL a round trip per write).

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use tracing::{error, warn};

use crate::store::{Clock, Pending, StoreError};

/// Writes waiting at most; a caller beyond it waits for room.
const QUEUE: usize = 4096;

/// The writer's connection, as each backend drives it. Transactions and savepoints are
/// plain SQL (`SAVEPOINT`, `RELEASE`, `ROLLBACK TO`), which both backends speak.
pub trait Session: Send + 'static {
    /// Writes taken into one transaction at most (each may need its own savepoint).
    const MAX_BATCH: usize = 512;
    /// Starts the batch's transaction (SQLite: `BEGIN IMMEDIATE`, the write lock first).
    fn begin(&mut self) -> Result<(), String>;
    /// Runs transaction-control SQL.
    fn control(&mut self, sql: &str) -> Result<(), String>;
    /// Whether the connection is gone (a database restart): then the writer opens a
    /// new one before its next batch.
    fn is_broken(&mut self) -> bool {
        false
    }
}

/// Opens the writer's connection (again, after it broke).
pub type Connect<C> = Box<dyn FnMut() -> Result<C, StoreError> + Send>;

/// One write of a batch, run in the batch's transaction (again, if the batch is redone)
/// and answered once the batch has committed or failed.
trait QueuedWrite<C>: Send {
    /// Runs the write, keeping its result for the answer.
    fn run(&mut self, conn: &mut C, now: i64) -> Ran;
    /// Forgets a result the batch will not commit: the write then takes the batch's error.
    fn forget(&mut self);
    /// Whether its result commits with the batch: a success, or never run (it then
    /// hears the batch's error). A write that failed keeps its own error.
    fn applied(&self) -> bool;
    /// Answers the caller: `committed` is the batch's verdict for an applied write.
    fn answer(self: Box<Self>, committed: Result<(), String>);
}

type Job<C> = Box<dyn QueuedWrite<C>>;

/// What one run of a write did to the transaction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ran {
    Done,
    /// Refused having changed nothing ([`StoreError::is_refusal`]).
    Refused,
    /// Failed, perhaps leaving a change or an aborted transaction behind.
    Failed,
}

struct Queued<F, T, R> {
    write: F,
    result: Option<Result<T, StoreError>>,
    reply: R,
}

impl<C, F, T, R> QueuedWrite<C> for Queued<F, T, R>
where
    F: FnMut(&mut C, i64) -> Result<T, StoreError> + Send,
    T: Send,
    R: FnOnce(Result<T, StoreError>) + Send,
{
    fn run(&mut self, conn: &mut C, now: i64) -> Ran {
        let result = (self.write)(conn, now);
        let ran = match &result {
            Ok(_) => Ran::Done,
            Err(refusal) if refusal.is_refusal() => Ran::Refused,
            Err(_) => Ran::Failed,
        };
        self.result = Some(result);
        ran
    }

    fn forget(&mut self) {
        self.result = None;
    }

    fn applied(&self) -> bool {
        self.result.as_ref().is_none_or(Result::is_ok)
    }

    fn answer(self: Box<Self>, committed: Result<(), String>) {
        let Queued { result, reply, .. } = *self;
        reply(match (committed, result) {
            (_, Some(Err(own))) => Err(own),
            (Ok(()), Some(Ok(value))) => Ok(value),
            (Err(message), _) => Err(StoreError::Writer(message)),
            (Ok(()), None) => Err(StoreError::Writer("the write did not run".into())),
        });
    }
}

/// The handle the store keeps; the thread ends when the last handle is dropped.
pub struct Writer<C> {
    jobs: SyncSender<Job<C>>,
}

impl<C: Session> Writer<C> {
    /// Opens the first connection here, so a database that cannot be reached stops
    /// start-up, then hands it to the writer thread.
    pub fn start(mut connect: Connect<C>, clock: Clock) -> Result<Writer<C>, StoreError> {
        let conn = connect()?;
        let (jobs, queue) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(Some(conn), connect, &queue, &clock))
            .map_err(|e| StoreError::Writer(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer { jobs })
    }

    /// Runs `write` in the next group commit and returns its result once committed.
    /// `write` may run more than once (its batch redone after another write failed), each
    /// time in a fresh transaction: only its last run's changes and result count.
    pub fn write<T: Send + 'static>(
        &self,
        write: impl FnMut(&mut C, i64) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = sync_channel::<Result<T, StoreError>>(1);
        self.jobs
            .send(job(write, move |result| {
                let _ = reply.send(result);
            }))
            .map_err(|_| StoreError::Writer("the writer thread has stopped".into()))?;
        answer
            .recv()
            .map_err(|_| StoreError::Writer("the writer thread stopped mid-write".into()))?
    }

    /// Queues `write` for the next group commit without blocking: an async caller
    /// awaits the answer instead of holding a thread. A full queue is waited on from
    /// the blocking pool; a stopped writer drops the job, and with it the answer.
    pub fn submit<T: Send + 'static>(
        &self,
        write: impl FnMut(&mut C, i64) -> Result<T, StoreError> + Send + 'static,
    ) -> Pending<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = job(write, move |result| {
            let _ = reply.send(result);
        });
        if let Err(TrySendError::Full(job)) = self.jobs.try_send(job) {
            let jobs = self.jobs.clone();
            let wait_for_room = move || {
                let _ = jobs.send(job);
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(wait_for_room)),
                Err(_) => wait_for_room(),
            }
        }
        answer
    }
}

/// Wraps a write and where its answer goes into a job for the writer thread.
fn job<C: 'static, T: Send + 'static>(
    write: impl FnMut(&mut C, i64) -> Result<T, StoreError> + Send + 'static,
    reply: impl FnOnce(Result<T, StoreError>) + Send + 'static,
) -> Job<C> {
    Box::new(Queued {
        write,
        result: None,
        reply,
    })
}

fn run<C: Session>(
    mut conn: Option<C>,
    mut connect: Connect<C>,
    queue: &Receiver<Job<C>>,
    clock: &Clock,
) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < C::MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if conn.as_mut().is_none_or(Session::is_broken) {
            conn = None;
            match connect() {
                Ok(fresh) => {
                    warn!("store writer reconnected to the database");
                    conn = Some(fresh);
                }
                Err(e) => error!(error = %e, "store writer cannot reconnect to the database"),
            }
        }
        let committed = match conn.as_mut() {
            Some(conn) => match run_batch(conn, &mut batch, clock, Savepoints::None) {
                Attempt::Finished(verdict) => verdict,
                Attempt::Redo => {
                    let _ = conn.control("ROLLBACK");
                    match run_batch(conn, &mut batch, clock, Savepoints::EachWrite) {
                        Attempt::Finished(verdict) => verdict,
                        Attempt::Redo => Err("a write failed inside its savepoint".to_string()),
                    }
                }
            },
            None => Err("the database cannot be reached".to_string()),
        };
        if let Err(message) = &committed {
            error!(writes = batch.len(), %message, "store group commit failed");
        }
        for write in batch {
            // A write that failed on its own already carries its error.
            let status = if write.applied() {
                committed.clone()
            } else {
                Ok(())
            };
            write.answer(status);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Savepoints {
    /// The usual run: one transaction, nothing to undo unless a write fails.
    None,
    /// The redo after a write failed: each write in a savepoint, so a failed one alone
    /// is rolled back.
    EachWrite,
}

enum Attempt {
    /// Committed (`Ok`) or failed as a whole (`Err`, nothing of it committed).
    Finished(Result<(), String>),
    /// A write failed without savepoints: roll back and run the batch again with them.
    Redo,
}

fn run_batch<C: Session>(
    conn: &mut C,
    batch: &mut [Job<C>],
    clock: &Clock,
    savepoints: Savepoints,
) -> Attempt {
    let began = match savepoints {
        Savepoints::None => conn.begin(),
        // One savepoint, kept across the batch: a write that succeeded is released and
        // the savepoint set again in one statement, a failed one rolls back to it (which
        // keeps it).
        Savepoints::EachWrite => conn.begin().and_then(|()| conn.control("SAVEPOINT write")),
    };
    if let Err(message) = began {
        return abandon(conn, batch, message);
    }
    for index in 0..batch.len() {
        let ran = batch[index].run(conn, clock());
        let kept = match (savepoints, ran) {
            (Savepoints::None, Ran::Failed) => return Attempt::Redo,
            (Savepoints::None, Ran::Done | Ran::Refused) => Ok(()),
            (Savepoints::EachWrite, Ran::Done) => {
                conn.control("RELEASE SAVEPOINT write; SAVEPOINT write")
            }
            (Savepoints::EachWrite, Ran::Refused | Ran::Failed) => {
                conn.control("ROLLBACK TO SAVEPOINT write")
            }
        };
        if let Err(message) = kept {
            // Nothing of this batch is committed: a half-kept savepoint is no state to
            // keep. This write keeps its own result if it failed; the rest take the error.
            if batch[index].applied() {
                batch[index].forget();
            }
            return abandon(conn, &mut batch[index + 1..], message);
        }
    }
    let committed = conn.control("COMMIT");
    if committed.is_err() {
        // A failed COMMIT (SQLite: busy) leaves the transaction open.
        let _ = conn.control("ROLLBACK");
    }
    Attempt::Finished(committed)
}

/// Rolls back and fails `unanswered` with `message`: none of it is committed.
fn abandon<C: Session>(conn: &mut C, unanswered: &mut [Job<C>], message: String) -> Attempt {
    let _ = conn.control("ROLLBACK");
    for write in unanswered {
        write.forget();
    }
    Attempt::Finished(Err(message))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, mpsc};

    use super::*;
    use crate::store::Pending;

    fn insert(conn: &mut rusqlite::Connection, x: i64) -> Result<(), StoreError> {
        conn.execute("INSERT INTO t (x) VALUES (?1)", [x])?;
        Ok(())
    }

    fn stored(path: &std::path::Path) -> Vec<i64> {
        let conn = rusqlite::Connection::open(path).unwrap();
        let mut rows = conn.prepare("SELECT x FROM t ORDER BY x").unwrap();
        rows.query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Writes queued while the writer is busy land in one batch. One of them fails after
    /// a change of its own: the batch is redone with savepoints, which undoes that write
    /// alone; a refusal (which changes nothing) is no reason to redo a batch.
    #[test]
    fn a_failed_write_is_undone_alone_and_a_refusal_costs_no_redo() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x INTEGER NOT NULL CHECK (x >= 0))")
            .unwrap();
        let connect_to = path.clone();
        let writer = Writer::start(
            Box::new(move || Ok(rusqlite::Connection::open(&connect_to)?)),
            crate::store::system_clock(),
        )
        .unwrap();
        let runs = Arc::new(AtomicU32::new(0));
        let counted = |x: i64| {
            let runs = runs.clone();
            move |conn: &mut rusqlite::Connection, _| {
                runs.fetch_add(1, Ordering::SeqCst);
                insert(conn, x)
            }
        };
        let refusal = || {
            Err::<(), _>(StoreError::NoIdleChannelAccount {
                total: 1,
                next_free_in_ms: 0,
            })
        };
        for poisoned in [false, true] {
            // Holds the writer, in a batch of its own, until every other write of the
            // round is queued behind it.
            let (started, writer_busy) = mpsc::channel::<()>();
            let (go, wait) = mpsc::channel::<()>();
            let mut hold = Some((started, wait));
            let holding = writer.submit(move |conn, _| {
                if let Some((started, wait)) = hold.take() {
                    started.send(()).unwrap();
                    wait.recv().unwrap();
                }
                insert(conn, 1)
            });
            writer_busy.recv().unwrap();
            runs.store(0, Ordering::SeqCst);
            let fine = writer.submit(counted(2));
            let refused = writer.submit(move |_: &mut rusqlite::Connection, _| refusal());
            let failing: Pending<()> = writer.submit(move |conn, _| {
                insert(conn, 3)?;
                // Breaks the CHECK after its first row went in, when poisoned.
                insert(conn, if poisoned { -1 } else { 4 })
            });
            let last = writer.submit(counted(5));
            go.send(()).unwrap();
            holding.blocking_recv().unwrap().unwrap();
            fine.blocking_recv().unwrap().unwrap();
            last.blocking_recv().unwrap().unwrap();
            assert!(matches!(
                refused.blocking_recv().unwrap(),
                Err(StoreError::NoIdleChannelAccount { .. })
            ));
            let failed = failing.blocking_recv().unwrap();
            if poisoned {
                assert!(matches!(failed, Err(StoreError::Sqlite(_))), "{failed:?}");
                assert_eq!(
                    stored(&path),
                    [1, 1, 2, 2, 3, 4, 5, 5],
                    "round 1's rows and round 2's, without the failed write's 3"
                );
                // `fine` before the failure and again in the redo, `last` in the redo only.
                assert_eq!(runs.load(Ordering::SeqCst), 3, "the batch was not redone");
            } else {
                failed.unwrap();
                assert_eq!(stored(&path), [1, 2, 3, 4, 5]);
                assert_eq!(runs.load(Ordering::SeqCst), 2, "a refusal redid the batch");
            }
        }
    }
}

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
    /// Rolls back the open transaction; whether the connection is now outside any
    /// transaction (if not, the writer drops it rather than run the next batch inside
    /// what is left of this one).
    fn rollback(&mut self) -> bool {
        self.control("ROLLBACK").is_ok()
    }
    /// Rows changed on this connection so far, where the backend counts them (SQLite):
    /// a refusal that changed rows is then treated as a failure and undone, so the rule
    /// that refusals change nothing does not rest on every write keeping it.
    fn rows_changed(&self) -> Option<u64> {
        None
    }
    /// Whether the connection is known to be outside any transaction (SQLite tells):
    /// then a write has ended the batch's transaction itself, by a stray `COMMIT` or
    /// `ROLLBACK` or by swallowing an error SQLite answers with a rollback, and the next
    /// write would run, and commit, on its own.
    fn outside_transaction(&self) -> bool {
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
    /// Forgets the result of an earlier run: unrun, the write takes the batch's error.
    fn forget(&mut self);
    /// Answers the caller, given the batch's verdict: a write that failed (and was
    /// undone) gets its own error; the others their result if the batch committed, else
    /// the batch's error (a refusal too, as it may rest on a write that was not kept).
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
    C: Session,
    F: FnMut(&mut C, i64) -> Result<T, StoreError> + Send,
    T: Send,
    R: FnOnce(Result<T, StoreError>) + Send,
{
    fn run(&mut self, conn: &mut C, now: i64) -> Ran {
        let changed_before = conn.rows_changed();
        let result = (self.write)(conn, now);
        let ran = match &result {
            Ok(_) => Ran::Done,
            Err(refusal) if refusal.is_refusal() && conn.rows_changed() == changed_before => {
                Ran::Refused
            }
            Err(_) => Ran::Failed,
        };
        self.result = Some(result);
        ran
    }

    fn forget(&mut self) {
        self.result = None;
    }

    fn answer(self: Box<Self>, committed: Result<(), String>) {
        let Queued { result, reply, .. } = *self;
        reply(match (committed, result) {
            (_, Some(Err(own))) if !own.is_refusal() => Err(own),
            (Ok(()), Some(result)) => result,
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
fn job<C: Session, T: Send + 'static>(
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
        let attempt = match conn.as_mut() {
            Some(conn) => match run_batch(conn, &mut batch, clock, Savepoints::None) {
                Attempt::Redo if !conn.rollback() => {
                    for write in &mut batch {
                        write.forget();
                    }
                    Attempt::Broken("cannot roll back a failed write".into())
                }
                Attempt::Redo => run_batch(conn, &mut batch, clock, Savepoints::EachWrite),
                finished => finished,
            },
            None => Attempt::Finished(Err("the database cannot be reached".to_string())),
        };
        let committed = match attempt {
            Attempt::Finished(verdict) => verdict,
            Attempt::Redo => Err("a write failed inside its savepoint".to_string()),
            Attempt::Broken(message) => {
                // Whatever is left of its transaction must not take the next batch in.
                conn = None;
                Err(message)
            }
        };
        if let Err(message) = &committed {
            error!(writes = batch.len(), %message, "store group commit failed");
        }
        for write in batch {
            write.answer(committed.clone());
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
    /// Failed as a whole, and the connection is unfit for another batch (its rollback
    /// did not leave it clean, or a write ended the transaction): it is replaced.
    Broken(String),
}

fn run_batch<C: Session>(
    conn: &mut C,
    batch: &mut [Job<C>],
    clock: &Clock,
    savepoints: Savepoints,
) -> Attempt {
    // Only this run's results count; a write it does not reach takes the batch's error.
    for write in batch.iter_mut() {
        write.forget();
    }
    let began = match savepoints {
        Savepoints::None => conn.begin(),
        // One savepoint, kept across the batch: a write that succeeded is released and
        // the savepoint set again in one statement, a failed one rolls back to it (which
        // keeps it).
        Savepoints::EachWrite => conn.begin().and_then(|()| conn.control("SAVEPOINT write")),
    };
    if let Err(message) = began {
        return abandon(conn, message);
    }
    for write in batch.iter_mut() {
        let ran = write.run(conn, clock());
        // A write that failed is undone below however it left the transaction (SQLite
        // rolls back on its own after some errors, and the redo handles that). One that
        // claims success or a refusal must have left it open: otherwise what ran before
        // may be committed or rolled back, no later write may run unguarded, and the
        // batch is answered as failed.
        if ran != Ran::Failed && conn.outside_transaction() {
            return Attempt::Broken("a write ended the batch's transaction".into());
        }
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
            // keep. A write that failed keeps its own error; the rest take the batch's.
            return abandon(conn, message);
        }
    }
    match conn.control("COMMIT") {
        Ok(()) => Attempt::Finished(Ok(())),
        // A failed COMMIT (SQLite: busy) leaves the transaction open.
        Err(message) => abandon(conn, message),
    }
}

/// Rolls back a batch that failed as a whole with `message`: nothing of it is committed.
fn abandon<C: Session>(conn: &mut C, message: String) -> Attempt {
    if conn.rollback() {
        Attempt::Finished(Err(message))
    } else {
        Attempt::Broken(message)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::{Arc, mpsc};

    use super::*;
    use crate::store::Pending;

    /// SQLite's session, with faults to switch on: a COMMIT that fails, and a rollback
    /// that leaves the transaction open.
    struct Faulty {
        conn: rusqlite::Connection,
        faults: Arc<Faults>,
    }

    #[derive(Default)]
    struct Faults {
        commit_fails: AtomicBool,
        rollback_leaves_transaction: AtomicBool,
        connections: AtomicU32,
    }

    impl Session for Faulty {
        fn begin(&mut self) -> Result<(), String> {
            self.conn.begin()
        }

        fn control(&mut self, sql: &str) -> Result<(), String> {
            if sql == "COMMIT" && self.faults.commit_fails.load(Ordering::SeqCst) {
                return Err("the test refuses this COMMIT".into());
            }
            self.conn.control(sql)
        }

        fn rollback(&mut self) -> bool {
            !self
                .faults
                .rollback_leaves_transaction
                .load(Ordering::SeqCst)
                && self.conn.rollback()
        }

        fn rows_changed(&self) -> Option<u64> {
            self.conn.rows_changed()
        }

        fn outside_transaction(&self) -> bool {
            self.conn.outside_transaction()
        }
    }

    struct Fixture {
        writer: Writer<Faulty>,
        faults: Arc<Faults>,
        path: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.db");
            rusqlite::Connection::open(&path)
                .unwrap()
                .execute_batch("CREATE TABLE t (x INTEGER NOT NULL CHECK (x >= 0))")
                .unwrap();
            let faults = Arc::new(Faults::default());
            let (connect_to, counted) = (path.clone(), faults.clone());
            let writer = Writer::start(
                Box::new(move || {
                    counted.connections.fetch_add(1, Ordering::SeqCst);
                    Ok(Faulty {
                        conn: rusqlite::Connection::open(&connect_to)?,
                        faults: counted.clone(),
                    })
                }),
                crate::store::system_clock(),
            )
            .unwrap();
            Fixture {
                writer,
                faults,
                path,
                _dir: dir,
            }
        }

        fn stored(&self) -> Vec<i64> {
            let conn = rusqlite::Connection::open(&self.path).unwrap();
            let mut rows = conn.prepare("SELECT x FROM t ORDER BY x").unwrap();
            rows.query_map([], |row| row.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        }

        /// Queues a write that inserts `x`.
        fn submit_insert(&self, x: i64) -> Pending<()> {
            self.writer
                .submit(move |session: &mut Faulty, _| insert(session, x))
        }

        /// Holds the writer in a batch of its own (which inserts 1) until the returned
        /// sender is used, so that the writes queued meanwhile make one batch.
        fn hold(&self) -> (Pending<()>, mpsc::Sender<()>) {
            let (started, writer_busy) = mpsc::channel::<()>();
            let (go, wait) = mpsc::channel::<()>();
            let mut hold = Some((started, wait));
            let holding = self.writer.submit(move |session, _| {
                if let Some((started, wait)) = hold.take() {
                    started.send(()).unwrap();
                    wait.recv().unwrap();
                }
                insert(session, 1)
            });
            writer_busy.recv().unwrap();
            (holding, go)
        }
    }

    fn insert(session: &mut Faulty, x: i64) -> Result<(), StoreError> {
        session.conn.execute("INSERT INTO t (x) VALUES (?1)", [x])?;
        Ok(())
    }

    fn refusal() -> Result<(), StoreError> {
        Err(StoreError::NoIdleChannelAccount {
            total: 1,
            next_free_in_ms: 0,
        })
    }

    /// Inserts 3, then (when poisoned) breaks the table's CHECK: a write failing after a
    /// change of its own.
    fn failing_midway(poisoned: bool) -> impl FnMut(&mut Faulty, i64) -> Result<(), StoreError> {
        move |session, _| {
            insert(session, 3)?;
            insert(session, if poisoned { -1 } else { 4 })
        }
    }

    /// Writes queued while the writer is busy land in one batch. One of them fails after
    /// a change of its own: the batch is redone with savepoints, which undoes that write
    /// alone; a refusal (which changes nothing) is no reason to redo a batch.
    #[test]
    fn a_failed_write_is_undone_alone_and_a_refusal_costs_no_redo() {
        let f = Fixture::new();
        let runs = Arc::new(AtomicU32::new(0));
        let counted = |x: i64| {
            let runs = runs.clone();
            move |session: &mut Faulty, _| {
                runs.fetch_add(1, Ordering::SeqCst);
                insert(session, x)
            }
        };
        for poisoned in [false, true] {
            let (holding, go) = f.hold();
            runs.store(0, Ordering::SeqCst);
            let fine = f.writer.submit(counted(2));
            let refused = f.writer.submit(|_: &mut Faulty, _| refusal());
            let failing = f.writer.submit(failing_midway(poisoned));
            let last = f.writer.submit(counted(5));
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
                    f.stored(),
                    [1, 1, 2, 2, 3, 4, 5, 5],
                    "round 1's rows and round 2's, without the failed write's 3"
                );
                // `fine` before the failure and again in the redo, `last` in the redo only.
                assert_eq!(runs.load(Ordering::SeqCst), 3, "the batch was not redone");
            } else {
                failed.unwrap();
                assert_eq!(f.stored(), [1, 2, 3, 4, 5]);
                assert_eq!(runs.load(Ordering::SeqCst), 2, "a refusal redid the batch");
            }
        }
    }

    /// A write that changes rows and then refuses breaks the rule that refusals change
    /// nothing; SQLite counts changed rows, so it is undone like a failed write.
    #[test]
    fn a_refusal_after_a_change_is_undone() {
        let f = Fixture::new();
        let (holding, go) = f.hold();
        let changed_then_refused = f.writer.submit(|session: &mut Faulty, _| {
            insert(session, 8)?;
            refusal()
        });
        let fine = f.submit_insert(2);
        go.send(()).unwrap();
        holding.blocking_recv().unwrap().unwrap();
        fine.blocking_recv().unwrap().unwrap();
        let refused = changed_then_refused.blocking_recv().unwrap();
        assert!(
            matches!(refused, Err(StoreError::NoIdleChannelAccount { .. })),
            "{refused:?}"
        );
        assert_eq!(f.stored(), [1, 2], "the refused write's row was committed");
    }

    /// A write that ends the batch's transaction itself (a stray ROLLBACK here) stops
    /// the batch: no later write runs, and commits, on its own; every write is answered
    /// with an error, and the next batch runs on a new connection.
    #[test]
    fn a_write_that_ends_the_transaction_stops_the_batch() {
        let f = Fixture::new();
        let (holding, go) = f.hold();
        let stray = f.writer.submit(|session: &mut Faulty, _| {
            session.conn.execute_batch("ROLLBACK")?;
            Ok(())
        });
        let after = f.submit_insert(2);
        go.send(()).unwrap();
        holding.blocking_recv().unwrap().unwrap();
        for answer in [stray, after] {
            let answer = answer.blocking_recv().unwrap();
            assert!(
                matches!(&answer, Err(StoreError::Writer(m)) if m.contains("ended the batch's transaction")),
                "{answer:?}"
            );
        }
        assert_eq!(
            f.stored(),
            [1],
            "a write ran outside the batch's transaction"
        );
        f.writer
            .write(|session: &mut Faulty, _| insert(session, 7))
            .unwrap();
        assert_eq!(f.faults.connections.load(Ordering::SeqCst), 2);
        assert_eq!(f.stored(), [1, 7]);
    }

    /// A write whose error ended the transaction (as SQLite does itself after a full
    /// disk or an I/O error) is undone alone like any failed write: the batch is redone,
    /// the others commit, and the connection is kept.
    #[test]
    fn a_failure_that_rolled_back_the_transaction_is_redone_not_fatal() {
        let f = Fixture::new();
        let (holding, go) = f.hold();
        let fine = f.submit_insert(2);
        let mut first_run = true;
        let failing = f.writer.submit(move |session: &mut Faulty, _| {
            if std::mem::take(&mut first_run) {
                session.conn.execute_batch("ROLLBACK")?;
            }
            Err::<(), _>(StoreError::Writer("the disk is full".into()))
        });
        let last = f.submit_insert(3);
        go.send(()).unwrap();
        holding.blocking_recv().unwrap().unwrap();
        fine.blocking_recv().unwrap().unwrap();
        last.blocking_recv().unwrap().unwrap();
        let failed = failing.blocking_recv().unwrap();
        assert!(
            matches!(&failed, Err(StoreError::Writer(m)) if m == "the disk is full"),
            "{failed:?}"
        );
        assert_eq!(f.stored(), [1, 2, 3]);
        assert_eq!(f.faults.connections.load(Ordering::SeqCst), 1);
    }

    /// A batch that does not commit answers every write with its error, a refusal too
    /// (it may rest on a write that was not kept); a connection whose rollback left the
    /// transaction open is dropped, and the next batch runs on a new one.
    #[test]
    fn a_failed_batch_fails_its_refusals_and_a_connection_left_in_a_transaction_is_replaced() {
        let f = Fixture::new();
        f.faults.commit_fails.store(true, Ordering::SeqCst);
        let (holding, go) = f.hold();
        let fine = f.submit_insert(2);
        let refused = f.writer.submit(|_: &mut Faulty, _| refusal());
        go.send(()).unwrap();
        for answer in [holding, fine, refused] {
            let answer = answer.blocking_recv().unwrap();
            assert!(
                matches!(&answer, Err(StoreError::Writer(m)) if m.contains("COMMIT")),
                "{answer:?}"
            );
        }
        assert!(f.stored().is_empty());
        f.faults.commit_fails.store(false, Ordering::SeqCst);

        f.faults
            .rollback_leaves_transaction
            .store(true, Ordering::SeqCst);
        let (holding, go) = f.hold();
        let failing = f.writer.submit(failing_midway(true));
        go.send(()).unwrap();
        holding.blocking_recv().unwrap().unwrap();
        let failed = failing.blocking_recv().unwrap();
        assert!(
            matches!(&failed, Err(StoreError::Writer(m)) if m.contains("roll back")),
            "{failed:?}"
        );
        f.faults
            .rollback_leaves_transaction
            .store(false, Ordering::SeqCst);
        assert_eq!(f.faults.connections.load(Ordering::SeqCst), 1);
        f.writer
            .write(|session: &mut Faulty, _| insert(session, 7))
            .unwrap();
        assert_eq!(
            f.faults.connections.load(Ordering::SeqCst),
            2,
            "the connection left in a transaction was used again"
        );
        assert_eq!(
            f.stored(),
            [1, 7],
            "the abandoned transaction was committed"
        );
    }
}

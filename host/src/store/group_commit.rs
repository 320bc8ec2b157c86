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
//!
//! An acquire matters only to its caller ([`Writer::submit_for_caller`]): one whose
//! caller has stopped awaiting it (hung up, timed out) before the writer reaches it is
//! not run, and a lease its caller never claims is released by a write queued at once,
//! so a caller that leaves does not keep an account locked until the lock expires.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{error, warn};

use crate::lock;

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
    /// Whether the write matters only to its caller and the caller has gone: then it
    /// is not run at all.
    fn caller_gone(&self) -> bool;
    /// Answers the caller, given the batch's verdict: a write that failed (and was
    /// undone) gets its own error; the others their result if the batch committed, else
    /// the batch's error (a refusal too, as it may rest on a write that was not kept).
    fn answer(self: Box<Self>, committed: Result<(), String>);
}

/// Where a write's answer goes.
trait Reply<T>: Send {
    /// See [`QueuedWrite::caller_gone`].
    fn caller_gone(&self) -> bool {
        false
    }
    fn deliver(self, result: Result<T, StoreError>);
}

/// A blocked thread's answer.
impl<T: Send> Reply<T> for SyncSender<Result<T, StoreError>> {
    fn deliver(self, result: Result<T, StoreError>) {
        let _ = self.send(result);
    }
}

/// An awaited answer. The write runs and stays whether or not anyone still awaits it
/// (an audit row, a release).
impl<T: Send> Reply<T> for tokio::sync::oneshot::Sender<Result<T, StoreError>> {
    fn deliver(self, result: Result<T, StoreError>) {
        let _ = self.send(result);
    }
}

/// A write nobody awaits (one that undoes another): a failure is logged, and what it
/// was to undo stays (a lock then lasts until it expires).
struct Unanswered;

impl<T: Send> Reply<T> for Unanswered {
    fn deliver(self, result: Result<T, StoreError>) {
        if let Err(e) = result {
            warn!(error = %e, "a write undoing another, for a caller who left, failed");
        }
    }
}

/// The answer to a write that matters only to its caller (an acquire). Until the caller
/// [claims](Unclaimed::claim) it, dropping it (the caller left: hung up, timed out, while
/// the answer was on its way or waiting to be read) queues the write that undoes it.
pub struct Unclaimed<T> {
    value: T,
    undo: Option<Undo<T>>,
}

/// Queues the write that undoes what an unclaimed answer says was done.
type Undo<T> = Box<dyn FnOnce(&T) + Send>;

impl<T: Clone> Unclaimed<T> {
    /// The answer, now the caller's own: nothing is undone any more.
    pub fn claim(mut self) -> T {
        self.undo = None;
        self.value.clone()
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Unclaimed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Unclaimed").field(&self.value).finish()
    }
}

impl<T> Drop for Unclaimed<T> {
    fn drop(&mut self) {
        if let Some(undo) = self.undo.take() {
            undo(&self.value);
        }
    }
}

/// An awaited answer to a write that matters only to its caller: skipped if the caller
/// has gone before it runs, and delivered [`Unclaimed`], undone by `undo` unless claimed.
struct ForCaller<C, T, U> {
    reply: tokio::sync::oneshot::Sender<Result<Unclaimed<T>, StoreError>>,
    undo: U,
    queue: UndoQueue<C>,
}

impl<C, T, U, W> Reply<T> for ForCaller<C, T, U>
where
    C: Session,
    T: Send + 'static,
    U: FnOnce(&T) -> Option<W> + Send + 'static,
    W: FnMut(&mut C, i64) -> Result<(), StoreError> + Send + 'static,
{
    fn caller_gone(&self) -> bool {
        self.reply.is_closed()
    }

    fn deliver(self, result: Result<T, StoreError>) {
        let ForCaller { reply, undo, queue } = self;
        let undo = Box::new(move |value: &T| {
            if let Some(undoing) = undo(value) {
                queue.push(job(undoing, Unanswered));
            }
        });
        // A failed send drops the answer here, which queues the undoing write.
        let _ = reply.send(result.map(|value| Unclaimed {
            value,
            undo: Some(undo),
        }));
    }
}

/// Where an undoing write goes, from any thread, the writer's own included: never
/// blocking (the writer must not wait on its own full queue), so past a full queue it
/// waits in a list the writer takes at its next batch.
struct UndoQueue<C> {
    jobs: SyncSender<Job<C>>,
    shared: Arc<Shared<C>>,
}

impl<C> UndoQueue<C> {
    fn push(&self, job: Job<C>) {
        if let Err(TrySendError::Full(job)) = self.jobs.try_send(job) {
            lock(&self.shared.overflow).push(job);
        }
    }
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
    R: Reply<T>,
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

    fn caller_gone(&self) -> bool {
        self.reply.caller_gone()
    }

    fn answer(self: Box<Self>, committed: Result<(), String>) {
        let Queued { result, reply, .. } = *self;
        reply.deliver(match (committed, result) {
            (_, Some(Err(own))) if !own.is_refusal() => Err(own),
            (Ok(()), Some(result)) => result,
            (Err(message), _) => Err(StoreError::Writer(message)),
            (Ok(()), None) => Err(StoreError::Writer("the write did not run".into())),
        });
    }
}

/// The handle the store keeps; the thread ends when the last handle is dropped and no
/// queued write or [`Unclaimed`] answer still holds the queue.
pub struct Writer<C> {
    jobs: SyncSender<Job<C>>,
    shared: Arc<Shared<C>>,
}

/// How long one batch may take before [`Writer::health`] calls the writer stalled, at
/// least: a batch is normally milliseconds, but each of its statements may wait the
/// store's busy timeout for a lock (and again in a redo), so a store passes
/// [`stalled_after`] of its own.
pub const STALLED_AFTER: Duration = Duration::from_secs(15);

/// The stall limit for a store whose statements wait up to `busy_timeout` for a lock:
/// [`STALLED_AFTER`], or four such waits if longer.
pub fn stalled_after(busy_timeout: Duration) -> Duration {
    STALLED_AFTER.max(busy_timeout.saturating_mul(4))
}

impl<C: Session> Writer<C> {
    /// Opens the first connection here, so a database that cannot be reached stops
    /// start-up, then hands it to the writer thread.
    pub fn start(mut connect: Connect<C>, clock: Clock) -> Result<Writer<C>, StoreError> {
        let conn = connect()?;
        let (jobs, queue) = sync_channel(QUEUE);
        let shared = Arc::new(Shared::new());
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(Some(conn), connect, &queue, &writer_shared, &clock))
            .map_err(|e| StoreError::Writer(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer { jobs, shared })
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
            .send(job(write, reply))
            .map_err(|_| StoreError::Writer("the writer thread has stopped".into()))?;
        answer
            .recv()
            .map_err(|_| StoreError::Writer("the writer thread stopped mid-write".into()))?
    }

    /// Queues `write` for the next group commit without blocking: an async caller
    /// awaits the answer instead of holding a thread. The write runs whether or not
    /// the answer is still awaited.
    pub fn submit<T: Send + 'static>(
        &self,
        write: impl FnMut(&mut C, i64) -> Result<T, StoreError> + Send + 'static,
    ) -> Pending<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queue(job(write, reply));
        answer
    }

    /// [`Writer::submit`] for a write that matters only to its caller (an acquire: a
    /// lock whose token nobody learns is held until it expires). If the caller has gone
    /// (stopped awaiting) before it runs, it does not run; its answer is [`Unclaimed`],
    /// and if the caller never claims it, the write `undo` makes from it is queued.
    pub fn submit_for_caller<T, W, U>(
        &self,
        write: impl FnMut(&mut C, i64) -> Result<T, StoreError> + Send + 'static,
        undo: U,
    ) -> Pending<Unclaimed<T>>
    where
        T: Send + 'static,
        U: FnOnce(&T) -> Option<W> + Send + 'static,
        W: FnMut(&mut C, i64) -> Result<(), StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queue = UndoQueue {
            jobs: self.jobs.clone(),
            shared: self.shared.clone(),
        };
        self.queue(job(write, ForCaller { reply, undo, queue }));
        answer
    }

    /// Whether the writer takes writes: its thread runs, and no batch has taken longer
    /// than `stalled_after` (a database that accepts connections and reads but not
    /// writes, or a commit waiting on a replica, holds every write behind it).
    pub fn health(&self, stalled_after: Duration) -> Result<(), StoreError> {
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(StoreError::Writer(
                "the store writer thread has stopped".into(),
            ));
        }
        match self.shared.batch_running_for() {
            Some(running) if running > stalled_after => Err(StoreError::Writer(format!(
                "the store writer has been on one batch of writes for {} s",
                running.as_secs()
            ))),
            _ => Ok(()),
        }
    }

    /// Queues `job` without blocking an async caller: a full queue is waited on from the
    /// blocking pool; a stopped writer drops the job, and with it the answer.
    fn queue(&self, job: Job<C>) {
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
    }
}

/// Wraps a write and where its answer goes into a job for the writer thread.
fn job<C: Session, T: Send + 'static>(
    write: impl FnMut(&mut C, i64) -> Result<T, StoreError> + Send + 'static,
    reply: impl Reply<T> + 'static,
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
    shared: &Shared<C>,
    clock: &Clock,
) {
    let _stopped = StoppedOnExit(&shared.stopped);
    while let Some(mut batch) = next_batch(queue, &shared.overflow) {
        batch.retain(|write| !write.caller_gone());
        if batch.is_empty() {
            continue;
        }
        if conn.as_mut().is_none_or(Session::is_broken) {
            conn = reconnect(&mut connect);
            if conn.is_none() {
                // Everything waiting now fails at once, not one batch per attempt.
                batch.extend(queue.try_iter());
            }
        }
        // A reconnection is bounded by its connect timeout, and readiness's own check
        // finds a database it cannot reach: only the batch's statements are timed.
        shared.batch_started();
        let committed = match conn.as_mut() {
            Some(fit) => {
                let (verdict, still_fit) = commit(fit, &mut batch, clock);
                if !still_fit {
                    // Whatever is left of its transaction must not take the next batch in.
                    conn = None;
                }
                verdict
            }
            None => Err("the database cannot be reached".to_string()),
        };
        // Answering never blocks: the batch's time ends here.
        shared.batch_finished();
        if let Err(message) = &committed {
            error!(writes = batch.len(), %message, "store group commit failed");
        }
        for write in batch {
            write.answer(committed.clone());
        }
    }
}

/// The next batch: undoing writes that found the queue full first, then what is
/// queued, waiting for the first; `None` once every handle is gone.
fn next_batch<C: Session>(
    queue: &Receiver<Job<C>>,
    overflow: &Mutex<Vec<Job<C>>>,
) -> Option<Vec<Job<C>>> {
    let mut batch: Vec<Job<C>> = {
        let mut spilled = lock(overflow);
        let taken = spilled.len().min(C::MAX_BATCH);
        spilled.drain(..taken).collect()
    };
    if batch.is_empty() {
        batch.push(queue.recv().ok()?);
    }
    let room = C::MAX_BATCH.saturating_sub(batch.len());
    batch.extend(queue.try_iter().take(room));
    Some(batch)
}

fn reconnect<C>(connect: &mut Connect<C>) -> Option<C> {
    match connect() {
        Ok(fresh) => {
            warn!("store writer reconnected to the database");
            Some(fresh)
        }
        Err(e) => {
            error!(error = %e, "store writer cannot reconnect to the database");
            None
        }
    }
}

/// Runs and commits `batch` (again with savepoints if a write failed): the verdict, and
/// whether the connection is fit for the next batch. A write that panics fails the batch
/// and the connection is replaced; the writer goes on.
fn commit<C: Session>(
    conn: &mut C,
    batch: &mut [Job<C>],
    clock: &Clock,
) -> (Result<(), String>, bool) {
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match run_batch(conn, batch, clock, Savepoints::None) {
            Attempt::Redo if !conn.rollback() => {
                for write in batch.iter_mut() {
                    write.forget();
                }
                Attempt::Broken("cannot roll back a failed write".into())
            }
            Attempt::Redo => run_batch(conn, batch, clock, Savepoints::EachWrite),
            finished => finished,
        }
    }))
    .unwrap_or_else(|_| Attempt::Broken("a write panicked".into()));
    match attempt {
        Attempt::Finished(verdict) => (verdict, true),
        Attempt::Redo => (Err("a write failed inside its savepoint".to_string()), true),
        Attempt::Broken(message) => (Err(message), false),
    }
}

/// What the writer thread shares with the store's handles.
struct Shared<C> {
    /// Undoing writes that found the queue full.
    overflow: Mutex<Vec<Job<C>>>,
    started: std::time::Instant,
    /// When the batch in hand began, in milliseconds after `started` plus one; 0 between
    /// batches.
    batch_since: AtomicU64,
    stopped: AtomicBool,
}

impl<C> Shared<C> {
    fn new() -> Shared<C> {
        Shared {
            overflow: Mutex::new(Vec::new()),
            started: std::time::Instant::now(),
            batch_since: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        }
    }

    fn batch_started(&self) {
        let since = self.started.elapsed().as_millis() as u64 + 1;
        self.batch_since.store(since, Ordering::Release);
    }

    fn batch_finished(&self) {
        self.batch_since.store(0, Ordering::Release);
    }

    /// How long the batch in hand has taken so far; `None` between batches.
    fn batch_running_for(&self) -> Option<Duration> {
        match self.batch_since.load(Ordering::Acquire) {
            0 => None,
            since => {
                let now = self.started.elapsed().as_millis() as u64 + 1;
                Some(Duration::from_millis(now.saturating_sub(since)))
            }
        }
    }
}

/// Marks the writer stopped when its thread ends, by a panic too.
struct StoppedOnExit<'a>(&'a AtomicBool);

impl Drop for StoppedOnExit<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
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
        /// The connection says it is gone, and no new one can be opened.
        database_down: AtomicBool,
        /// Connections opened, or tried.
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

        fn is_broken(&mut self) -> bool {
            self.faults.database_down.load(Ordering::SeqCst)
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
                    if counted.database_down.load(Ordering::SeqCst) {
                        return Err(StoreError::Writer("connection refused".into()));
                    }
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
            let (holding, writer_busy, go) = self.pausing_insert(1);
            writer_busy.recv().unwrap();
            (holding, go)
        }

        /// Queues a write that, the first time it runs, says so and waits for the
        /// returned sender before it inserts `x`.
        fn pausing_insert(&self, x: i64) -> (Pending<()>, mpsc::Receiver<()>, mpsc::Sender<()>) {
            let (started, running) = mpsc::channel::<()>();
            let (go, wait) = mpsc::channel::<()>();
            let mut pause = Some((started, wait));
            let pending = self.writer.submit(move |session, _| {
                if let Some((started, wait)) = pause.take() {
                    started.send(()).unwrap();
                    wait.recv().unwrap();
                }
                insert(session, x)
            });
            (pending, running, go)
        }
    }

    fn insert(session: &mut Faulty, x: i64) -> Result<(), StoreError> {
        session.conn.execute("INSERT INTO t (x) VALUES (?1)", [x])?;
        Ok(())
    }

    /// Asserts that `pending` was answered with the writer's error, naming `text`.
    fn writer_failed(pending: Pending<()>, text: &str) {
        let answer = pending.blocking_recv().unwrap();
        assert!(
            matches!(&answer, Err(StoreError::Writer(m)) if m.contains(text)),
            "{answer:?}"
        );
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
            writer_failed(answer, "ended the batch's transaction");
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

    /// A write that matters only to its caller (an acquire) does not run if the caller
    /// has gone before the writer reaches it. If the caller goes after it ran, or leaves
    /// its answer unclaimed, the write it names undoes it, queued at once; a caller that
    /// claims its answer keeps it.
    #[test]
    fn a_write_for_a_caller_who_left_is_skipped_or_undone() {
        let f = Fixture::new();
        let runs = Arc::new(AtomicU32::new(0));
        let for_caller = |x: i64| {
            let runs = runs.clone();
            f.writer.submit_for_caller(
                move |session: &mut Faulty, _| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    insert(session, x).map(|()| x)
                },
                |inserted: &i64| {
                    let inserted = *inserted;
                    Some(move |session: &mut Faulty, _| {
                        session
                            .conn
                            .execute("DELETE FROM t WHERE x = ?1", [inserted])?;
                        Ok(())
                    })
                },
            )
        };
        let insert_now = |x: i64| {
            f.writer
                .write(move |session: &mut Faulty, _| insert(session, x))
                .unwrap();
        };
        let (holding, go) = f.hold();
        drop(for_caller(2));
        go.send(()).unwrap();
        holding.blocking_recv().unwrap().unwrap();
        insert_now(7);
        assert_eq!(runs.load(Ordering::SeqCst), 0, "run for a caller who left");
        assert_eq!(f.stored(), [1, 7]);

        // Gone while its batch is still running: committed, then undone.
        let (holding, go) = f.hold();
        let leaving = for_caller(3);
        let (after_it, it_ran, go_on) = f.pausing_insert(5);
        go.send(()).unwrap();
        it_ran.recv().unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        drop(leaving);
        go_on.send(()).unwrap();
        for pending in [holding, after_it] {
            pending.blocking_recv().unwrap().unwrap();
        }
        // Queued after the undoing write.
        insert_now(8);
        assert_eq!(f.stored(), [1, 1, 5, 7, 8], "the undelivered 3 stayed");

        // Delivered, never claimed.
        let unclaimed = for_caller(4).blocking_recv().unwrap().unwrap();
        assert_eq!(f.stored(), [1, 1, 4, 5, 7, 8]);
        drop(unclaimed);
        insert_now(9);
        assert_eq!(f.stored(), [1, 1, 5, 7, 8, 9], "the unclaimed 4 stayed");

        let claimed = for_caller(6).blocking_recv().unwrap().unwrap().claim();
        assert_eq!(claimed, 6);
        insert_now(10);
        assert_eq!(f.stored(), [1, 1, 5, 6, 7, 8, 9, 10]);
    }

    /// A batch that takes too long (a database that takes no writes) fails the writer's
    /// health check, which readiness reports; it passes again once the batch is done.
    #[test]
    fn a_stalled_batch_fails_the_writer_health_check() {
        let f = Fixture::new();
        let limit = std::time::Duration::from_millis(100);
        f.writer.health(limit).unwrap();
        let (holding, go) = f.hold();
        std::thread::sleep(limit * 2);
        let stalled = f.writer.health(limit).unwrap_err().to_string();
        assert!(stalled.contains("one batch of writes"), "{stalled}");
        go.send(()).unwrap();
        holding.blocking_recv().unwrap().unwrap();
        f.writer
            .write(|session: &mut Faulty, _| insert(session, 2))
            .unwrap();
        f.writer.health(limit).unwrap();
    }

    /// A write that panics fails its batch, not the writer: the next batch runs on a new
    /// connection.
    #[test]
    fn a_panicking_write_fails_its_batch_and_the_writer_goes_on() {
        let f = Fixture::new();
        let (holding, go) = f.hold();
        let fine = f.submit_insert(2);
        let panicking = f
            .writer
            .submit(|_: &mut Faulty, _| -> Result<(), StoreError> { panic!("a bug in a write") });
        go.send(()).unwrap();
        holding.blocking_recv().unwrap().unwrap();
        for answer in [fine, panicking] {
            writer_failed(answer, "panicked");
        }
        f.writer
            .write(|session: &mut Faulty, _| insert(session, 7))
            .unwrap();
        assert_eq!(f.stored(), [1, 7], "the panicked batch's 2 was committed");
        assert_eq!(f.faults.connections.load(Ordering::SeqCst), 2);
        f.writer.health(STALLED_AFTER).unwrap();
    }

    /// With the database gone, one failed connection attempt fails every write queued,
    /// more than a batch holds, instead of one batch per attempt; the writer connects
    /// again once the database is back.
    #[test]
    fn when_the_database_is_gone_everything_queued_fails_at_once() {
        let f = Fixture::new();
        let (holding, go) = f.hold();
        let queued: Vec<_> = (0..Faulty::MAX_BATCH as i64 + 100)
            .map(|x| f.submit_insert(x + 10))
            .collect();
        f.faults.database_down.store(true, Ordering::SeqCst);
        go.send(()).unwrap();
        holding.blocking_recv().unwrap().unwrap();
        for answer in queued {
            writer_failed(answer, "cannot be reached");
        }
        assert_eq!(
            f.faults.connections.load(Ordering::SeqCst),
            2,
            "the first connection, and one attempt for everything queued"
        );
        f.faults.database_down.store(false, Ordering::SeqCst);
        f.writer
            .write(|session: &mut Faulty, _| insert(session, 7))
            .unwrap();
        assert_eq!(f.stored(), [1, 7]);
    }

    /// Undoing writes that spilled past a full queue start the next batches, at most a
    /// batch's worth at a time, before what is queued.
    #[test]
    fn a_batch_takes_at_most_its_size_from_the_spilled_writes_too() {
        let nothing = || job::<Faulty, ()>(|_: &mut Faulty, _| Ok(()), Unanswered);
        let (jobs, queue) = sync_channel(QUEUE);
        let spilled = Mutex::new((0..Faulty::MAX_BATCH + 10).map(|_| nothing()).collect());
        jobs.send(nothing()).unwrap();
        let first = next_batch(&queue, &spilled).unwrap();
        assert_eq!(first.len(), Faulty::MAX_BATCH);
        let second = next_batch(&queue, &spilled).unwrap();
        assert_eq!(
            second.len(),
            10 + 1,
            "the rest spilled, then the queued one"
        );
        assert!(lock(&spilled).is_empty());
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
            writer_failed(answer, "COMMIT");
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
        writer_failed(failing, "roll back");
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

//! Group commit for the hot writes (channel locks and audit rows), for every backend:
//! one thread owns a connection, takes every write that is waiting, runs each in a
//! savepoint of one transaction, commits once, and only then answers each caller. A
//! write that fails rolls back its own savepoint and leaves the others in; a failed
//! commit fails them all. So an answer never leaves before its rows are committed (the
//! audit stays fail-closed), and the database still orders every lock change.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use tracing::{error, warn};

use crate::store::{Clock, Pending, StoreError};

/// Writes waiting at most; a caller beyond it waits for room.
const QUEUE: usize = 4096;

/// The writer's connection, as each backend drives it. Transactions and savepoints are
/// plain SQL (`SAVEPOINT`, `RELEASE`, `ROLLBACK TO`), which both backends speak.
pub trait Session: Send + 'static {
    /// Writes taken into one transaction at most.
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

/// One write: given the transaction (a savepoint of it) and the time, runs and hands
/// back what to tell its caller once the transaction has committed or failed; given
/// `None` it never runs and its caller hears the batch's error.
type Job<C> = Box<dyn FnOnce(Option<(&mut C, i64)>) -> Outcome + Send>;

struct Outcome {
    applied: bool,
    answer: Box<dyn FnOnce(Result<(), String>) + Send>,
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
    pub fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&mut C, i64) -> Result<T, StoreError> + Send + 'static,
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
        write: impl FnOnce(&mut C, i64) -> Result<T, StoreError> + Send + 'static,
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
fn job<C, T: Send + 'static>(
    write: impl FnOnce(&mut C, i64) -> Result<T, StoreError> + Send + 'static,
    reply: impl FnOnce(Result<T, StoreError>) + Send + 'static,
) -> Job<C> {
    Box::new(move |slot| {
        let result = slot.map(|(conn, now)| write(conn, now));
        Outcome {
            // Unrun writes take the batch's verdict, which is then an error.
            applied: result.as_ref().is_none_or(Result::is_ok),
            answer: Box::new(move |committed| {
                reply(match (committed, result) {
                    (Ok(()), Some(result)) => result,
                    (Err(message), _) => Err(StoreError::Writer(message)),
                    (Ok(()), None) => Err(StoreError::Writer("the write did not run".into())),
                });
            }),
        }
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
        let (outcomes, committed) = match conn.as_mut() {
            Some(conn) => commit_batch(conn, batch, clock),
            None => (
                batch.into_iter().map(|job| job(None)).collect(),
                Err("the database cannot be reached".to_string()),
            ),
        };
        if let Err(message) = &committed {
            error!(writes = outcomes.len(), %message, "store group commit failed");
        }
        for outcome in outcomes {
            // A write that failed on its own already carries its error.
            let status = if outcome.applied {
                committed.clone()
            } else {
                Ok(())
            };
            (outcome.answer)(status);
        }
    }
}

fn commit_batch<C: Session>(
    conn: &mut C,
    batch: Vec<Job<C>>,
    clock: &Clock,
) -> (Vec<Outcome>, Result<(), String>) {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut jobs = batch.into_iter();
    // One savepoint, kept across the batch: a write that succeeded is released and the
    // savepoint set again in one statement, a failed one rolls back to it (which keeps
    // it). One round trip per write besides its own statements, which on PostgreSQL is
    // what a write costs.
    if let Err(message) = conn.begin().and_then(|()| conn.control("SAVEPOINT write")) {
        let _ = conn.control("ROLLBACK");
        outcomes.extend(jobs.map(|job| job(None)));
        return (outcomes, Err(message));
    }
    let mut broken = None;
    for job in jobs.by_ref() {
        let now = clock();
        let outcome = job(Some((&mut *conn, now)));
        let kept = if outcome.applied {
            conn.control("RELEASE SAVEPOINT write; SAVEPOINT write")
        } else {
            conn.control("ROLLBACK TO SAVEPOINT write")
        };
        outcomes.push(outcome);
        if let Err(message) = kept {
            broken = Some(message);
            break;
        }
    }
    if let Some(message) = broken {
        // Nothing of this batch is committed: a half-kept savepoint is no state to keep.
        let _ = conn.control("ROLLBACK");
        outcomes.extend(jobs.map(|job| job(None)));
        return (outcomes, Err(message));
    }
    let committed = conn.control("COMMIT");
    if committed.is_err() {
        // A failed COMMIT (SQLite: busy) leaves the transaction open.
        let _ = conn.control("ROLLBACK");
    }
    (outcomes, committed)
}

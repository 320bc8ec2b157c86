//! Group commit for the hot writes (channel locks and audit rows): one thread owns a
//! connection, takes every write that is waiting, runs each in a savepoint of one
//! `BEGIN IMMEDIATE` transaction, commits once, and only then answers each caller. A
//! write that fails rolls back its own savepoint and leaves the others in; a failed
//! commit fails them all. So an answer never leaves before its rows are committed (the
//! audit stays fail-closed), and SQLite's single writer still orders every lock change.

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use rusqlite::Connection;
use tracing::error;

use crate::store::{Clock, Pending, StoreError};

/// Writes taken into one transaction at most.
const MAX_BATCH: usize = 512;
/// Writes waiting at most; a caller beyond it waits for room.
const QUEUE: usize = 4096;

/// One write: given the transaction (a savepoint of it) and the time, runs and hands
/// back what to tell its caller once the transaction has committed or failed; given
/// `None` it never runs and its caller hears the batch's error.
type Job = Box<dyn FnOnce(Option<(&Connection, i64)>) -> Outcome + Send>;

struct Outcome {
    applied: bool,
    answer: Box<dyn FnOnce(Result<(), String>) + Send>,
}

/// The handle the store keeps; the thread ends when the last handle is dropped.
pub struct Writer {
    jobs: SyncSender<Job>,
}

impl Writer {
    pub fn start(path: &Path, busy_timeout: Duration, clock: Clock) -> Result<Writer, StoreError> {
        let conn = super::pool::open(path, busy_timeout).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let (jobs, queue) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(conn, &queue, &clock))
            .map_err(|e| StoreError::Writer(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer { jobs })
    }

    /// Runs `write` in the next group commit and returns its result once committed.
    pub fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&Connection, i64) -> Result<T, StoreError> + Send + 'static,
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
        write: impl FnOnce(&Connection, i64) -> Result<T, StoreError> + Send + 'static,
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
fn job<T: Send + 'static>(
    write: impl FnOnce(&Connection, i64) -> Result<T, StoreError> + Send + 'static,
    reply: impl FnOnce(Result<T, StoreError>) + Send + 'static,
) -> Job {
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

fn run(mut conn: Connection, queue: &Receiver<Job>, clock: &Clock) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (outcomes, committed) = commit_batch(&mut conn, batch, clock);
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

fn commit_batch(
    conn: &mut Connection,
    batch: Vec<Job>,
    clock: &Clock,
) -> (Vec<Outcome>, Result<(), String>) {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut jobs = batch.into_iter();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate);
    let mut tx = match tx {
        Ok(tx) => tx,
        Err(e) => {
            outcomes.extend(jobs.map(|job| job(None)));
            return (outcomes, Err(format!("database error: {e}")));
        }
    };
    let mut broken = None;
    for job in jobs.by_ref() {
        let now = clock();
        let mut savepoint = match tx.savepoint() {
            Ok(savepoint) => savepoint,
            Err(e) => {
                outcomes.push(job(None));
                broken = Some(format!("database error: {e}"));
                break;
            }
        };
        let outcome = job(Some((&savepoint, now)));
        if outcome.applied {
            savepoint.set_drop_behavior(rusqlite::DropBehavior::Commit);
        }
        let kept = savepoint.finish();
        outcomes.push(outcome);
        if let Err(e) = kept {
            broken = Some(format!("database error: {e}"));
            break;
        }
    }
    if let Some(message) = broken {
        // Nothing of this batch is committed: a half-kept savepoint is no state to keep.
        drop(tx);
        outcomes.extend(jobs.map(|job| job(None)));
        return (outcomes, Err(message));
    }
    let committed = tx.commit().map_err(|e| format!("database error: {e}"));
    (outcomes, committed)
}

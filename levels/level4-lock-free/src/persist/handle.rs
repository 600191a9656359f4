//! A running worker, seen from outside: its counts, and how to stop it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a worker has done so far.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub(super) persisted: AtomicU64,
    pub(super) redelivered: AtomicU64,
    pub(super) claimed: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) voided: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) batches: AtomicU64,
}

/// A copy of [`WorkerStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Orders this worker inserted.
    pub persisted: u64,
    /// Entries that were already in PostgreSQL (delivered twice).
    pub redelivered: u64,
    /// Entries taken over from other workers.
    pub claimed: u64,
    /// Entries moved to the dead letters.
    pub dead_lettered: u64,
    /// Entries of a sale a reset had closed (acknowledged, not inserted).
    pub voided: u64,
    /// Retries after a failed transaction.
    pub retries: u64,
    /// Committed transactions.
    pub batches: u64,
}

impl WorkerStats {
    /// The counts as of now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            persisted: get(&self.persisted),
            redelivered: get(&self.redelivered),
            claimed: get(&self.claimed),
            dead_lettered: get(&self.dead_lettered),
            voided: get(&self.voided),
            retries: get(&self.retries),
            batches: get(&self.batches),
        }
    }
}

/// A running worker. Dropping it asks the worker to stop after its current
/// batch; [`WorkerHandle::stop`] also waits for that, and
/// [`WorkerHandle::kill`] stops it at once, mid-transaction, as a crash
/// would.
pub struct WorkerHandle {
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) task: Option<JoinHandle<()>>,
    pub(super) stats: Arc<WorkerStats>,
}

impl WorkerHandle {
    /// What it has done so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Stops it after its current batch and waits until it has.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops it at once, wherever it is: an uncommitted transaction is
    /// rolled back and its entries stay pending, as when a process dies.
    pub async fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// A task handle that aborts its task when dropped, so that aborting the
/// supervisor also stops the work it supervises.
pub(super) struct AbortOnDrop<T>(pub(super) JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    pub(super) async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

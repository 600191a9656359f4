//! What every task of the engine shares (the handlers that append, and
//! each partition's decider): the level's settings and its connections.
//! Its own module so that the engine, which starts the deciders, and the
//! deciders, which use it, both depend on it and not on each other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::changelog;
use crate::log::{Answer, Keys, Request};
use crate::members::Members;
use crate::replies::Replies;
use crate::state::PartitionState;

/// How a new owner gets its state, and whether a changelog is kept: the
/// two strategies of this level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `partitioned`: start empty, load each ticket from PostgreSQL the
    /// first time a batch touches it.
    Partitioned,
    /// `state-store`: every committed change also goes to a compacted
    /// changelog stream; a new owner replays it, then checks each ticket
    /// against PostgreSQL as every batch does.
    StateStore,
}

/// The engine's settings.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Which strategy.
    pub mode: Mode,
    /// How many partitions the log has (every server must agree).
    pub partitions: u32,
    /// The most requests one batch decides.
    pub batch_size: usize,
    /// How long a handler waits for its answer before answering 202.
    pub reply_timeout: Duration,
    /// The lease of a partition: how long a dead decider blocks it.
    pub lease: Duration,
    /// The pause between deciding a batch and writing it.
    pub think: Duration,
    /// Whether this server gives partitions up above its fair share.
    pub rebalance: bool,
}

/// What every task of the engine shares.
pub struct Shared {
    pub(crate) pool: PgPool,
    pub(crate) keys: Keys,
    pub(crate) instance: String,
    pub(crate) replies: Replies,
    pub(crate) redis: redis::Client,
    pub(crate) commands: ConnectionManager,
    pub(crate) locks: level3::lock::LockClient,
    pub(crate) settings: EngineSettings,
    pub(crate) think: Duration,
    pub(crate) batch_size: usize,
    pub(crate) members: Arc<Members>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) fenced_batches: AtomicU64,
}

impl Shared {
    /// Counts a batch the fence refused.
    pub(crate) fn count_fenced(&self) {
        self.fenced_batches.fetch_add(1, Ordering::Relaxed);
    }

    /// The state a new owner of `p` starts from, and its changelog's
    /// index (empty for `partitioned`, which keeps none).
    pub(crate) async fn rebuild(
        &self,
        p: u32,
    ) -> anyhow::Result<(PartitionState, changelog::Changelog)> {
        match self.settings.mode {
            Mode::Partitioned => Ok(Default::default()),
            Mode::StateStore => changelog::rebuild(&self.commands, &self.keys, p).await,
        }
    }

    /// After a batch committed: the `state-store` strategy logs the new
    /// state of the batch's tickets.
    pub(crate) async fn after_commit(
        &self,
        p: u32,
        log: &mut changelog::Changelog,
        state: &PartitionState,
        requests: &[Request],
        answers: &[Answer],
    ) {
        if self.settings.mode == Mode::StateStore {
            let appended = log
                .append(&self.commands, &self.keys, p, state, requests, answers)
                .await;
            if let Err(err) = appended {
                // Only a later takeover pays for it: it reloads those
                // tickets from PostgreSQL.
                tracing::debug!(%err, "the changelog was not written");
            }
        }
    }
}

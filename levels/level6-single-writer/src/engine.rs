//! The engine a server runs: appends requests to the log and waits for
//! their answers, and runs one [`decider`](crate::decider) task per
//! partition. Dropping the last handle stops the deciders, which give
//! their leases back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use sqlx::PgPool;
use ticket_core::PurchaseError;
use tokio::sync::watch;

use crate::changelog;
use crate::log::{partition_of, Answer, Keys, Request};
use crate::members::Members;
use crate::replies::{self, Replies};
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
    fenced_batches: AtomicU64,
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

/// The settings of the engine's command connection (appends, the
/// changelog): every command must be answered within 5 s, which is why the
/// changelog is written in chunks ([`changelog::CHUNK`]).
pub fn redis_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_connection_timeout(Some(Duration::from_millis(500)))
        // Generous: on a loaded machine a thousand appends queue on one
        // connection, and an append that timed out may still have landed.
        .set_response_timeout(Some(Duration::from_secs(5)))
}

/// A server's engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
}

/// Tells every task to stop when the last [`Engine`] handle goes.
struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

impl Engine {
    /// Starts the engine: the reply listener and one contender per
    /// partition.
    pub fn start(
        pool: PgPool,
        redis_url: &str,
        namespace: &str,
        instance: String,
        settings: EngineSettings,
    ) -> anyhow::Result<Self> {
        let keys = Keys::new(namespace);
        let redis = redis::Client::open(redis_url)?;
        let commands = ConnectionManager::new_lazy_with_config(redis.clone(), redis_config())?;
        let lock_options = level3::lock::LockOptions {
            key_prefix: keys.lease_prefix(),
            watchdog_lease: settings.lease,
            ..level3::lock::LockOptions::default()
        };
        let locks = level3::lock::LockClient::new(redis_url, instance.clone(), lock_options)?;
        let (stop, shutdown) = watch::channel(false);
        let (partitions, rebalance, lease) =
            (settings.partitions, settings.rebalance, settings.lease);
        let shared = Arc::new(Shared {
            pool,
            keys: keys.clone(),
            instance: instance.clone(),
            replies: Replies::default(),
            redis: redis.clone(),
            commands,
            locks,
            think: settings.think,
            batch_size: settings.batch_size.max(1),
            settings,
            members: Arc::new(Members::new(partitions, rebalance)),
            shutdown: shutdown.clone(),
            fenced_batches: AtomicU64::new(0),
        });
        tokio::spawn(shared.members.clone().heartbeat(
            shared.commands.clone(),
            keys.members(),
            instance.clone(),
            lease,
            shutdown.clone(),
        ));
        tokio::spawn(replies::listen(
            redis,
            keys,
            instance,
            shared.replies.clone(),
            shutdown,
        ));
        for p in 0..shared.settings.partitions {
            tokio::spawn(crate::decider::contend(shared.clone(), p));
        }
        Ok(Self {
            shared,
            _stop: Arc::new(StopOnDrop(stop)),
        })
    }

    /// The pool the engine writes through.
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// This server's instance name (its consumer name, its reply channel).
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// The partitions this server decides right now.
    pub fn owned(&self) -> Vec<u32> {
        self.shared.members.owned()
    }

    /// Batches the fence refused in this server (a zombie's writes).
    pub fn fenced_batches(&self) -> u64 {
        self.shared.fenced_batches.load(Ordering::Relaxed)
    }

    /// Appends `request` to its partition and waits for the answer:
    /// `Ok(None)` when none came within the reply timeout (the request is
    /// on the log and will be decided; poll `/requests/{id}`).
    pub async fn submit(&self, request: Request) -> Result<Option<Answer>, PurchaseError> {
        let shared = &self.shared;
        let p = partition_of(request.command.ticket(), shared.settings.partitions);
        let answer = shared.replies.wait_for(&request.id);
        let mut append = redis::cmd("XADD");
        append.arg(shared.keys.stream(p)).arg("*");
        for (field, value) in request.fields() {
            append.arg(field).arg(value);
        }
        let appended: redis::RedisResult<String> =
            append.query_async(&mut shared.commands.clone()).await;
        match appended {
            Ok(_) => {}
            // No answer from Redis: the request may be in the log or not.
            // Not a guess either way: 202, and the poll will tell.
            Err(err) if err.is_timeout() => {
                shared.replies.forget(&request.id);
                return Ok(None);
            }
            Err(err) => {
                shared.replies.forget(&request.id);
                return Err(PurchaseError::Unavailable(anyhow::anyhow!(
                    "cannot append to the log: {err}"
                )));
            }
        }
        match tokio::time::timeout(shared.settings.reply_timeout, answer).await {
            Ok(Ok(answer)) => Ok(Some(answer)),
            Ok(Err(_)) | Err(_) => {
                shared.replies.forget(&request.id);
                Ok(None)
            }
        }
    }

    /// Checks Redis (for `/health`).
    pub async fn ping(&self) -> anyhow::Result<()> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.shared.commands.clone())
            .await?;
        Ok(())
    }
}

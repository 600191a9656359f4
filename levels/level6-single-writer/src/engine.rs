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

use crate::log::{partition_of, Answer, Keys, Request};
use crate::members::Members;
use crate::replies::{self, Replies};

pub use crate::context::{EngineSettings, Mode, Shared};

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

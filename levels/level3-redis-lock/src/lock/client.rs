//! [`LockClient`]: the connection to Redis that hands out locks, the scripts
//! it runs, and the check that a Redis can hold locks at all.

use std::fmt;
use std::sync::Arc;

use redis::aio::ConnectionManagerConfig;
use redis::{FromRedisValue, IntoConnectionInfo as _, ProtocolVersion, Script, ScriptInvocation};
use ticket_core::redis_conn::{cluster_seeds, RedisConnection, RedisOptions};

use super::redis_lock::Keys;
use super::{wakeups, LockError, LockOptions, RedisLock};

/// The client's scripts (the subscriber has a fifth, `pass.lua`), built once per client. `redis::Script` sends the
/// script's SHA1 (`EVALSHA`) and uploads the text only when Redis does not know
/// it yet, for instance after a restart.
pub(super) struct Scripts {
    pub(super) acquire: Script,
    pub(super) release: Script,
    pub(super) renew: Script,
    pub(super) abandon: Script,
    pub(super) floor: Script,
}

/// A connection to Redis that hands out locks. Cheap to clone; clones share
/// the connections and the per-process subscriptions.
///
/// Must be created inside a Tokio runtime. It connects lazily: creating it
/// never fails because Redis is down, the first lock attempt does.
#[derive(Clone)]
pub struct LockClient {
    pub(super) inner: Arc<ClientInner>,
}

pub(super) struct ClientInner {
    pub(super) instance: String,
    pub(super) options: LockOptions,
    /// Commands (scripts, PING): one multiplexed connection that reconnects
    /// by itself after Redis comes back, to a single Redis or to every
    /// master of a cluster ([`RedisConnection`]).
    pub(super) commands: RedisConnection,
    /// On a Redis Cluster: releases announce with `SPUBLISH` and waiters
    /// listen with `SSUBSCRIBE` (sharded pub/sub), see `wakeups.rs`.
    pub(super) sharded: bool,
    /// The subscriber connection and the local waiting lines.
    pub(super) wakeups: wakeups::WakeUps,
    pub(super) scripts: Scripts,
}

impl fmt::Debug for LockClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockClient")
            .field("instance", &self.inner.instance)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl LockClient {
    /// A client for the Redis at `url`, naming its holds after `instance`
    /// (which must be unique per process: two processes with one instance id
    /// would count as one owner).
    pub fn new(
        url: &str,
        instance: impl Into<String>,
        options: LockOptions,
    ) -> Result<Self, LockError> {
        // Fail fast while Redis is down: one connection attempt, short
        // timeouts. The lock's callers decide what to do about an outage
        // (answer 503); retrying inside the client would only make every
        // buyer wait longer for the same answer. (A cluster client retries
        // within the response timeout: that is how it follows a failover.)
        let timeouts = RedisOptions::new(options.connect_timeout, options.response_timeout);
        let commands = RedisConnection::open(url, timeouts).map_err(LockError::Redis)?;
        let instance: String = instance.into();
        let (wakeups, sharded) = match cluster_seeds(url) {
            // A cluster: one sharded subscriber, which keeps a connection to
            // each master that owns a channel it listens on.
            Some(seeds) => (
                wakeups::WakeUps::new_sharded(&seeds, timeouts, instance.clone())?,
                true,
            ),
            None => {
                let info = url.into_connection_info().map_err(LockError::Redis)?;
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(0)
                    .set_connection_timeout(Some(options.connect_timeout))
                    .set_response_timeout(Some(options.response_timeout));
                // The subscriber speaks RESP3, in which a connection can
                // receive pushed messages; the connection manager then
                // re-subscribes by itself after a reconnect.
                let resp3 = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let subscriber = redis::Client::open(info.set_redis_settings(resp3))
                    .map_err(LockError::Redis)?;
                (
                    wakeups::WakeUps::new(subscriber, config, instance.clone())?,
                    false,
                )
            }
        };
        Ok(Self {
            inner: Arc::new(ClientInner {
                instance,
                options,
                commands,
                sharded,
                wakeups,
                scripts: Scripts {
                    acquire: Script::new(include_str!("acquire.lua")),
                    release: Script::new(handing_on!("release.lua")),
                    renew: Script::new(include_str!("renew.lua")),
                    abandon: Script::new(handing_on!("abandon.lua")),
                    floor: Script::new(include_str!("floor.lua")),
                },
            }),
        })
    }

    /// Whether this client talks to a Redis Cluster (and so announces
    /// releases with sharded pub/sub).
    pub fn is_cluster(&self) -> bool {
        self.inner.sharded
    }

    /// The flag the scripts that free a lock take: `'1'` for `SPUBLISH`.
    pub(super) fn sharded_flag(&self) -> &'static str {
        if self.inner.sharded {
            "1"
        } else {
            "0"
        }
    }

    /// The lock called `name`. Nothing is sent to Redis until it is taken.
    pub fn lock(&self, name: &str) -> RedisLock {
        let base = format!("{}:{{{name}}}", self.inner.options.key_prefix);
        RedisLock {
            client: self.clone(),
            name: name.into(),
            keys: Arc::new(Keys {
                counter: format!("{base}:fence"),
                receipt: format!("{base}:receipt"),
                line: format!("{base}:line"),
                channel: format!("{base}:released"),
                lock: base,
            }),
        }
    }

    /// This client's instance id.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The options it was created with.
    pub fn options(&self) -> &LockOptions {
        &self.inner.options
    }

    /// Asks Redis for a PONG: what `/health` calls.
    pub async fn ping(&self) -> Result<(), LockError> {
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }

    /// Loads every script of the lock into Redis's script cache. Optional:
    /// a script Redis does not know yet is uploaded on first use anyway, at
    /// the cost of one more round trip. Done ahead, that round trip cannot
    /// land in a moment when Redis is slow, which matters for `abandon.lua`:
    /// it is sent precisely when Redis was too slow to answer.
    pub async fn load_scripts(&self) -> Result<(), LockError> {
        let mut conn = self.inner.commands.clone();
        let scripts = &self.inner.scripts;
        // `pass.lua` is the subscriber's (see `wakeups.rs`); same text, same
        // SHA1, so loading it from here serves it there.
        let pass = Script::new(handing_on!("pass.lua"));
        for script in [
            &scripts.acquire,
            &scripts.release,
            &scripts.renew,
            &scripts.abandon,
            &scripts.floor,
            &pass,
        ] {
            script
                .load_async(&mut conn)
                .await
                .map_err(LockError::from_redis)?;
        }
        Ok(())
    }

    /// Checks, once at start, that this Redis can hold locks: its
    /// `maxmemory-policy` must be `noeviction` ([`LockError::Evicting`]
    /// otherwise), so that a lock key never vanishes under memory pressure
    /// ([`ticket_core::redis_checks::require_noeviction`], which Level 4
    /// asks too). Then loads the scripts ([`LockClient::load_scripts`]).
    pub async fn check_redis(&self) -> Result<(), LockError> {
        use ticket_core::redis_checks::{require_noeviction, EvictionCheckError};
        let mut conn = self.inner.commands.clone();
        require_noeviction(&mut conn)
            .await
            .map_err(|err| match err {
                EvictionCheckError::Unavailable(err) => LockError::Unavailable(err),
                EvictionCheckError::Refused(err) => LockError::Redis(err),
                EvictionCheckError::Evicting { policy } => LockError::Evicting { policy },
            })?;
        self.load_scripts().await
    }

    /// `WAIT replicas timeout` on the connection that ran the lock's
    /// scripts (WAIT counts the writes of the connection it is sent on),
    /// sent to the master that holds `key`: how many replicas acknowledged
    /// every write made so far on that connection.
    pub(super) async fn wait_for_replicas(
        &self,
        key: &str,
        replicas: u32,
        timeout: std::time::Duration,
    ) -> Result<u32, LockError> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(super::millis(timeout));
        self.inner
            .commands
            .query_at_key(key, &wait)
            .await
            .map_err(LockError::from_redis)
    }

    /// Who the current task is, as an owner: `<instance>:<task id>`. Outside
    /// any task (a `block_on` in `main`) the thread stands in for the task.
    /// Always contains a ':', so it can never be the hash's `fence` field.
    pub fn current_owner(&self) -> String {
        match tokio::task::try_id() {
            Some(task) => format!("{}:task-{task}", self.inner.instance),
            None => format!("{}:{:?}", self.inner.instance, std::thread::current().id()),
        }
    }

    /// Runs a script. See [`LockClient::query`] for the one retry.
    pub(super) async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
    ) -> Result<T, LockError> {
        let mut conn = self.inner.commands.clone();
        match script.invoke_async(&mut conn).await {
            Err(err) if err.is_connection_refusal() => script
                .invoke_async(&mut conn)
                .await
                .map_err(LockError::from_redis),
            other => other.map_err(LockError::from_redis),
        }
    }

    /// Sends one plain command.
    ///
    /// After Redis comes back, the connection manager still holds the failed
    /// connection attempt from the outage; the first command to touch it gets
    /// that old error and makes the manager start a fresh connection. A
    /// *refused* connection never carried our command, so sending it once more
    /// is safe, and it means the first lock attempt after an outage succeeds.
    /// Any other error (a reply that never came) is not retried here: the
    /// command may have run.
    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, LockError> {
        let mut conn = self.inner.commands.clone();
        match cmd.query_async(&mut conn).await {
            Err(err) if err.is_connection_refusal() => cmd
                .query_async(&mut conn)
                .await
                .map_err(LockError::from_redis),
            other => other.map_err(LockError::from_redis),
        }
    }
}

//! A lock that lives in Redis, written to be read.
//!
//! Level 1's lock lived in one server's memory, so two servers each had their
//! own. This one lives in the one thing every server shares: a Redis server.
//! It follows the design of Redisson's `RLock` (the library the original Java
//! projects used) and fixes what users of Redisson, `rslock` and `redlock-rs`
//! keep running into: waiters that are never woken, a watchdog that renews a
//! lock it no longer holds, and holders that pause past their lease and write
//! anyway.
//!
//! # The pieces, and where each lives
//!
//! | piece | file | in one sentence |
//! | --- | --- | --- |
//! | take the lock | `acquire.lua` | one script: free → mine (count 1, a fencing token, a lease); mine → count + 1; someone else's (or handed to another process) → "look again in N ms", and this process joins the line |
//! | give it back | `release.lua` | one script: only the owner may, count − 1; on the last hold delete, hand the lock to the process first in line, and PUBLISH its name; a retried release gets the first answer again |
//! | keep it | `renew.lua`, [`watchdog`](self#the-watchdog) | while the guard lives, push the lease back every lease/3; a failed renewal marks the guard lost |
//! | hand it on | `hand_on.lua` | shared by the three scripts that free the lock (`release.lua`, `abandon.lua`, `pass.lua`): grant it to the process first in line and PUBLISH its name |
//! | wait for it | `pubsub.rs`, `pass.lua` | one subscription per lock per process; a release wakes one task of the process it names, in arrival order; nobody sleeps longer than the lease (or grant) left |
//! | wait for it, the usual way | `spin.rs` | try, sleep a growing random while, try again |
//! | hang up safely | `abandon.lua` | an attempt whose caller went away is undone if it took the lock |
//! | survive a pause | [`LockGuard::fencing_token`] | every hold gets a number from a counter; the database accepts a write only with a token above the row's last one |
//! | keep tokens growing | `floor.lua` | after Redis lost its newest writes and the counter went back, the holder the database refused raises the counter above the row's token |
//!
//! # Redis keys
//!
//! For a lock named `ticket:1` under the prefix `ticket-rush:lock`:
//!
//! | key | type | lifetime |
//! | --- | --- | --- |
//! | `ticket-rush:lock:{ticket:1}` | hash `{<owner>: count, fence: token, attempt-<id>: 1 per attempt that added a hold, released-<id>: 1 per release that left holds}`; while handed to a waiting process, `{grant: instance}` | the lease; a grant: 100 ms, or until claimed |
//! | `ticket-rush:lock:{ticket:1}:fence` | integer, the last fencing token | forever: tokens must never go back (and if Redis loses it, or loses its newest writes, see `acquire.lua` and `floor.lua`) |
//! | `ticket-rush:lock:{ticket:1}:receipt:<id>` | string: "release `<id>` freed the lock", for a repeat of that release whose first reply was lost | a few seconds (longer than the repeats) |
//! | `ticket-rush:lock:{ticket:1}:line` | list of waiting processes' instance ids | a minute after its last change |
//! | channel `ticket-rush:lock:{ticket:1}:released` | pub/sub: the instance the lock went to, or "" for anyone | |
//!
//! The braces are a Redis Cluster *hash tag*: every key of one lock lands on
//! the same node, which a script touching several keys needs.
//!
//! # Who owns a hold
//!
//! The owner is `<instance>:<task>`: the [`LockClient`]'s instance id (one per
//! server process) and the Tokio task that asked. Taking the lock again from
//! the same task is *reentrant*; any other task, here or in another process,
//! waits. Two futures joined inside one task (`join!`) are one owner: spawn a
//! task per independent piece of work, as a server does per request.
//!
//! # The watchdog
//!
//! With [`Lease::Watchdog`], the lock is taken with a short lease
//! ([`LockOptions::watchdog_lease`], 3 s by default) and a task renews it every
//! third of that while the guard lives. A holder that crashes stops renewing,
//! so the lock frees itself within one lease, while a holder that is merely
//! slow keeps it. See `watchdog.rs` for why a single failed renewal gives the
//! lock up.

/// The text of a script that may free the lock: `hand_on.lua`, which
/// defines the one way a freed lock is handed on, in front of `$file`.
macro_rules! handing_on {
    ($file:literal) => {
        concat!(include_str!("hand_on.lua"), include_str!($file))
    };
}

mod pubsub;
mod spin;
mod watchdog;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, IntoConnectionInfo as _, ProtocolVersion, Script, ScriptInvocation};

pub use spin::Backoff;

/// Why a lock operation failed. Each variant is a different decision for the
/// caller: wait budget spent (answer "busy"), Redis down (answer
/// "unavailable"), or a bug in how the lock was used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else held the lock for the whole wait budget.
    #[error("lock {name:?} was still held by someone else after waiting {waited:?}")]
    Timeout {
        /// The lock's name.
        name: String,
        /// How long the caller waited.
        waited: Duration,
    },
    /// A release was refused because the caller does not hold the lock.
    /// Nothing was deleted: releasing someone else's lock is exactly the bug
    /// a lock must never have.
    #[error("lock {name:?} is not held by {owner}, so it was not released")]
    NotOwner {
        /// The lock's name.
        name: String,
        /// Who tried to release it.
        owner: String,
    },
    /// The guard no longer holds the lock: its lease ran out (a pause longer
    /// than the lease, a renewal that failed), and the key is gone or belongs
    /// to someone else. Work done under the guard must not be committed.
    #[error("lock {name:?} was lost: its lease ran out before it was released")]
    Lost {
        /// The lock's name.
        name: String,
    },
    /// Redis did not answer: stopped, unreachable, too slow, or still loading
    /// its data. Trying again later may work; a server answers 503.
    #[error("Redis is unavailable: {0}")]
    Unavailable(#[source] redis::RedisError),
    /// Redis answered with an error that trying again will not fix (a key of
    /// the wrong type, a bad URL, a script error).
    #[error("Redis refused a lock command: {0}")]
    Redis(#[source] redis::RedisError),
    /// Redis is set up so that it may drop lock keys on its own: under
    /// memory pressure a `maxmemory-policy` other than `noeviction` evicts
    /// keys (`volatile-*` policies pick keys with a lease first, which is
    /// every held lock), and a lock that vanishes is granted twice.
    #[error(
        "Redis may evict lock keys: its maxmemory-policy is {policy:?}; \
         set `maxmemory-policy noeviction` (redis.conf, or CONFIG SET) to hold locks in it"
    )]
    Evicting {
        /// The policy Redis reported.
        policy: String,
    },
}

impl LockError {
    /// Sorts a Redis client error into "Redis is not there right now" and
    /// everything else.
    fn from_redis(err: redis::RedisError) -> Self {
        use redis::{ErrorKind, ServerErrorKind};
        let unavailable = err.is_io_error()
            || err.is_timeout()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || matches!(
                err.kind(),
                ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ClusterDown
                )
            );
        if unavailable {
            Self::Unavailable(err)
        } else {
            Self::Redis(err)
        }
    }
}

/// How long a hold lasts if its owner stops caring for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// A short lease that a watchdog task renews while the guard lives
    /// (Redisson's default). A crashed holder frees the lock within one
    /// [`LockOptions::watchdog_lease`]; a slow one keeps it.
    Watchdog,
    /// A fixed lease: the lock frees itself after this long, finished or not.
    /// No renewal; [`LockGuard::is_lost`] turns true when it runs out.
    Fixed(Duration),
}

impl Lease {
    /// `0` means [`Lease::Watchdog`], anything else a fixed lease of that many
    /// milliseconds, as the `--lease-ms` flag reads.
    pub fn from_millis(ms: u64) -> Self {
        if ms == 0 {
            Self::Watchdog
        } else {
            Self::Fixed(Duration::from_millis(ms))
        }
    }
}

/// How a caller waits while someone else holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Subscribe to the lock's channel and sleep until a release is published
    /// (or at most the holder's remaining lease). See `pubsub.rs`.
    PubSub,
    /// Try again and again, sleeping a growing, randomized while in between.
    /// See `spin.rs`.
    Spin(Backoff),
}

/// Settings of a [`LockClient`].
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// Prepended to every key and channel, so that several applications (or
    /// tests) can share one Redis without seeing each other's locks.
    pub key_prefix: String,
    /// How callers wait for a held lock.
    pub waiting: Waiting,
    /// The lease used with [`Lease::Watchdog`]: how long a crashed holder
    /// blocks everyone else. Renewed every third of it.
    pub watchdog_lease: Duration,
    /// How long to wait for a TCP connection to Redis.
    pub connect_timeout: Duration,
    /// How long to wait for Redis to answer a command before calling it
    /// unavailable.
    pub response_timeout: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            key_prefix: "ticket-rush:lock".to_owned(),
            waiting: Waiting::PubSub,
            watchdog_lease: Duration::from_secs(3),
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(1),
        }
    }
}

/// The client's scripts (the subscriber has a fifth, `pass.lua`), built once per client. `redis::Script` sends the
/// script's SHA1 (`EVALSHA`) and uploads the text only when Redis does not know
/// it yet, for instance after a restart.
struct Scripts {
    acquire: Script,
    release: Script,
    renew: Script,
    abandon: Script,
    floor: Script,
}

/// A connection to Redis that hands out locks. Cheap to clone; clones share
/// the connections and the per-process subscriptions.
///
/// Must be created inside a Tokio runtime. It connects lazily: creating it
/// never fails because Redis is down, the first lock attempt does.
#[derive(Clone)]
pub struct LockClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    instance: String,
    options: LockOptions,
    /// Commands (scripts, PING). A `ConnectionManager` is one multiplexed
    /// connection that reconnects by itself after Redis comes back.
    commands: ConnectionManager,
    /// The subscriber connection and the local waiting lines.
    wakeups: pubsub::WakeUps,
    scripts: Scripts,
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
        let info = url.into_connection_info().map_err(LockError::Redis)?;
        // Fail fast while Redis is down: one connection attempt, short
        // timeouts. The lock's callers decide what to do about an outage
        // (answer 503); retrying inside the client would only make every
        // buyer wait longer for the same answer.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout));
        let commands = ConnectionManager::new_lazy_with_config(
            redis::Client::open(info.clone()).map_err(LockError::Redis)?,
            config.clone(),
        )
        .map_err(LockError::Redis)?;
        // The subscriber speaks RESP3, in which a connection can receive
        // pushed messages; the connection manager then re-subscribes by
        // itself after a reconnect.
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let subscriber =
            redis::Client::open(info.set_redis_settings(resp3)).map_err(LockError::Redis)?;
        let instance: String = instance.into();
        let wakeups = pubsub::WakeUps::new(subscriber, config, instance.clone())?;
        Ok(Self {
            inner: Arc::new(ClientInner {
                instance,
                options,
                commands,
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
        // `pass.lua` is the subscriber's (see `pubsub.rs`); same text, same
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
    /// otherwise), so that a lock key never vanishes under memory pressure.
    /// Then loads the scripts ([`LockClient::load_scripts`]). Reads the
    /// policy from `INFO memory`, which managed Redis services that disable
    /// `CONFIG` still answer.
    pub async fn check_redis(&self) -> Result<(), LockError> {
        let info: String = self.query(redis::cmd("INFO").arg("memory")).await?;
        match eviction_policy(&info) {
            Some("noeviction") => {}
            Some(policy) => {
                return Err(LockError::Evicting {
                    policy: policy.to_owned(),
                })
            }
            // An INFO without the field (very old Redis, or a proxy): say
            // nothing rather than refuse to start.
            None => tracing::warn!(
                "Redis did not report its maxmemory-policy; make sure it is noeviction"
            ),
        }
        self.load_scripts().await
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
    async fn invoke<T: FromRedisValue>(
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
    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, LockError> {
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

/// The `maxmemory_policy` field of an `INFO memory` answer.
fn eviction_policy(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|line| line.trim_end().strip_prefix("maxmemory_policy:"))
}

/// What one run of `acquire.lua` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// The caller holds the lock, with this fencing token.
    Acquired(u64),
    /// Someone else does; their lease has this long left (`None`: the key has
    /// no expiry, which these scripts never leave behind).
    Held(Option<Duration>),
}

/// What a successful release left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// That was the last hold: the lock is free and waiters were told.
    Free,
    /// The same owner still holds it from an outer acquisition (reentrancy).
    StillHeld,
}

/// One named lock. Cheap to clone.
#[derive(Clone)]
pub struct RedisLock {
    client: LockClient,
    name: Arc<str>,
    keys: Arc<Keys>,
}

/// The Redis names of one lock (see the table at the top of this file).
pub(super) struct Keys {
    /// The prefix of a final release's receipt (`<prefix>:<release id>`).
    pub(super) receipt: String,
    /// The hash: `{owner: count, fence: token, attempt-<id>: 1, ...}`, or `{grant:
    /// instance}` while a release has handed the lock to a waiting process.
    pub(super) lock: String,
    /// The fencing counter.
    pub(super) counter: String,
    /// The line of waiting processes (instance ids, oldest first).
    pub(super) line: String,
    /// The pub/sub channel releases are announced on.
    pub(super) channel: String,
}

impl fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLock")
            .field("name", &self.name)
            .field("key", &self.keys.lock)
            .finish_non_exhaustive()
    }
}

impl RedisLock {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Redis key of the lock's hash (for tests and curious learners:
    /// `redis-cli HGETALL` it while a sale runs).
    pub fn key(&self) -> &str {
        &self.keys.lock
    }

    /// Takes the lock, waiting at most `wait` while someone else holds it.
    ///
    /// * `Ok(guard)`: held until [`LockGuard::release`] (or the lease ends).
    /// * [`LockError::Timeout`]: still held by someone else after `wait`.
    /// * [`LockError::Unavailable`]: Redis did not answer.
    ///
    /// Cancel-safe: dropping the future while it waits leaves the line
    /// without taking a wake-up meant for someone else.
    pub async fn try_lock(&self, wait: Duration, lease: Lease) -> Result<LockGuard, LockError> {
        let owner = self.client.current_owner();
        let lease_time = match lease {
            Lease::Watchdog => self.client.inner.options.watchdog_lease,
            Lease::Fixed(lease) => lease,
        };
        let started = Instant::now();
        let deadline = started + wait;
        // `sent` is when the winning attempt left: the lease started at the
        // latest then, so the guard's own idea of its expiry is never late.
        let acquired = match self.client.inner.options.waiting {
            Waiting::PubSub => pubsub::acquire(self, &owner, lease_time, deadline).await,
            Waiting::Spin(backoff) => {
                spin::acquire(self, &owner, lease_time, deadline, backoff).await
            }
        };
        let (token, sent) = acquired.map_err(|err| match err {
            LockError::Timeout { name, .. } => LockError::Timeout {
                name,
                waited: started.elapsed(),
            },
            other => other,
        })?;
        self.client
            .inner
            .wakeups
            .add_holder(&self.keys, &owner, sent + lease_time);
        let health = Arc::new(Health::new(believed_end(sent, lease_time)));
        let watchdog = match lease {
            Lease::Watchdog => Some(watchdog::spawn(
                self.clone(),
                owner.clone(),
                token,
                lease_time,
                health.clone(),
            )),
            Lease::Fixed(_) => None,
        };
        Ok(LockGuard {
            lock: self.clone(),
            owner,
            token,
            lease: lease_time,
            waited: started.elapsed(),
            health,
            watchdog,
            released: false,
        })
    }

    /// Releases one hold of the current task, Redisson's `unlock()`:
    /// [`LockError::NotOwner`] if this task does not hold the lock (nothing is
    /// deleted). Prefer [`LockGuard::release`], which also stops the watchdog.
    pub async fn unlock(&self) -> Result<Released, LockError> {
        let owner = self.client.current_owner();
        let answer = self.release_as(&owner, None).await;
        match answer? {
            Some(released) => {
                self.client
                    .inner
                    .wakeups
                    .forget_holder(&self.keys.channel, &owner);
                Ok(released)
            }
            None => Err(LockError::NotOwner {
                name: self.name.to_string(),
                owner,
            }),
        }
    }

    /// Whether anyone holds the lock right now.
    pub async fn is_locked(&self) -> Result<bool, LockError> {
        self.client
            .query(redis::cmd("EXISTS").arg(&self.keys.lock))
            .await
    }

    /// The error for a spent wait budget (the caller fills in how long).
    fn timeout(&self) -> LockError {
        LockError::Timeout {
            name: self.name.to_string(),
            waited: Duration::ZERO,
        }
    }

    /// One run of `acquire.lua`, safe to cancel.
    ///
    /// If the caller's future is dropped while the script is on its way (a
    /// buyer hung up), or the reply times out, Redis may run it anyway and
    /// hand the lock (or one more reentrant hold of it) to an owner that is
    /// no longer listening: everyone would wait out the lease, or the count
    /// would never reach zero. So such an attempt sends `abandon.lua` after
    /// itself, which undoes exactly the hold *this* attempt added (the hash
    /// marks the id of every attempt that added one). One connection keeps
    /// order, so it runs after the attempt.
    async fn attempt(
        &self,
        owner: &str,
        lease: Duration,
        line: Line,
    ) -> Result<Attempt, LockError> {
        let id = format!("{:016x}", rand::random::<u64>());
        let mut abandoned = AbandonOnDrop {
            lock: self,
            owner,
            attempt: &id,
            armed: true,
        };
        let answer = self.attempt_once(owner, lease, &id, line).await;
        // An answer settles it. An error does not: a reply that timed out
        // may have left after the script ran and took the lock (or one more
        // reentrant hold), so the attempt is undone as if it were cancelled.
        abandoned.armed = answer.is_err();
        answer
    }

    async fn attempt_once(
        &self,
        owner: &str,
        lease: Duration,
        id: &str,
        line: Line,
    ) -> Result<Attempt, LockError> {
        let flag = |set: bool| if set { "1" } else { "0" };
        let (acquired, value): (i64, i64) = self
            .client
            .invoke(
                self.client
                    .inner
                    .scripts
                    .acquire
                    .key(&self.keys.lock)
                    .key(&self.keys.counter)
                    .key(&self.keys.line)
                    .arg(owner)
                    .arg(millis(lease))
                    .arg(id)
                    .arg(&self.client.inner.instance)
                    .arg(flag(line.will_wait))
                    .arg(flag(line.more_waiting))
                    .arg(millis(LINE_KEEP))
                    .arg(flag(line.queued)),
            )
            .await?;
        Ok(if acquired == 1 {
            Attempt::Acquired(u64::try_from(value).unwrap_or_default())
        } else {
            Attempt::Held(u64::try_from(value).ok().map(Duration::from_millis))
        })
    }

    /// Runs `release.lua` for `owner`. `Ok(None)` means "not yours".
    ///
    /// With a `token`, only the hold with that fencing token is released (a
    /// guard's own); without, any hold of `owner` ([`RedisLock::unlock`]).
    ///
    /// The release is sent again (up to three sends) when Redis did not
    /// answer: the reply may have been lost *after* Redis released. Every
    /// send carries the same release id, and a repeat is marked as one, so it
    /// neither takes a second hold away from a reentrant owner (the script
    /// remembers the id) nor reports "not yours" for a lock the first send
    /// already freed (that send left a receipt). A repeat that finds the
    /// hold gone *without* a receipt reports it lost, as a first send would:
    /// the lease ran out before any send arrived.
    async fn release_as(
        &self,
        owner: &str,
        token: Option<u64>,
    ) -> Result<Option<Released>, LockError> {
        let id = format!("{:016x}", rand::random::<u64>());
        let mut pause = Duration::from_millis(20);
        let mut sends = 0;
        loop {
            sends += 1;
            match self.send_release(owner, token, &id, sends > 1).await {
                Err(LockError::Unavailable(_)) if sends < 3 => {
                    tokio::time::sleep(pause).await;
                    pause *= 4;
                }
                answer => return answer,
            }
        }
    }

    /// One send of `release.lua`.
    async fn send_release(
        &self,
        owner: &str,
        token: Option<u64>,
        id: &str,
        repeated: bool,
    ) -> Result<Option<Released>, LockError> {
        let token = token.map(|token| token.to_string()).unwrap_or_default();
        let inner = &self.client.inner;
        // Our own waiters for this lock queue behind everyone else's.
        let requeue = if inner.wakeups.has_waiters(&self.keys.channel) {
            inner.instance.as_str()
        } else {
            ""
        };
        let answer: i64 = self
            .client
            .invoke(
                inner
                    .scripts
                    .release
                    .key(&self.keys.lock)
                    .key(&self.keys.line)
                    .key(format!("{}:{id}", self.keys.receipt))
                    .arg(owner)
                    .arg(&token)
                    .arg(id)
                    .arg(if repeated { "1" } else { "0" })
                    .arg(millis(receipt_keep(&inner.options)))
                    .arg(&self.keys.channel)
                    .arg(millis(GRANT_TIME))
                    .arg(requeue),
            )
            .await?;
        Ok(match answer {
            1 => Some(Released::Free),
            0 => Some(Released::StillHeld),
            // The hold is gone and no send of this release freed it: its
            // lease ran out (or it never existed). Nothing was touched.
            _ => None,
        })
    }

    /// Tells the lock that the database has accepted fencing tokens up to
    /// `seen`: the next hold's token will be above it (`floor.lua`).
    ///
    /// Call it when the database refused a write because its row carries a
    /// token at least as large as this hold's. That only happens to a hold
    /// that is stale, or whose token was handed out twice because Redis lost
    /// its newest writes (a restart from an older snapshot, a failover to a
    /// lagging replica) and the counter went back. Either way the database
    /// refused it; this makes sure the next holder is not refused for the
    /// same reason.
    pub async fn raise_token_floor(&self, seen: u64) -> Result<(), LockError> {
        let _: i64 = self
            .client
            .invoke(
                self.client
                    .inner
                    .scripts
                    .floor
                    .key(&self.keys.counter)
                    .arg(seen),
            )
            .await?;
        Ok(())
    }

    /// One run of `renew.lua`: `Ok(false)` when the hold is gone.
    async fn renew(&self, owner: &str, token: u64, lease: Duration) -> Result<bool, LockError> {
        let renewed: i64 = self
            .client
            .invoke(
                self.client
                    .inner
                    .scripts
                    .renew
                    .key(&self.keys.lock)
                    .arg(owner)
                    .arg(millis(lease))
                    .arg(token),
            )
            .await?;
        Ok(renewed == 1)
    }
}

/// Sends `abandon.lua` for an attempt whose caller stopped waiting (see
/// [`RedisLock::attempt`]).
struct AbandonOnDrop<'a> {
    lock: &'a RedisLock,
    owner: &'a str,
    attempt: &'a str,
    armed: bool,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let lock = self.lock.clone();
        let (owner, attempt) = (self.owner.to_owned(), self.attempt.to_owned());
        runtime.spawn(async move {
            let inner = &lock.client.inner;
            // As in a release: if other tasks here wait for the lock, this
            // process goes back in line. The attempt may have taken it out
            // when it took the lock, and nobody else would wake them.
            let requeue = if inner.wakeups.has_waiters(&lock.keys.channel) {
                inner.instance.as_str()
            } else {
                ""
            };
            let scripts = &inner.scripts;
            let undone: Result<i64, LockError> = lock
                .client
                .invoke(
                    scripts
                        .abandon
                        .key(&lock.keys.lock)
                        .key(&lock.keys.line)
                        .arg(&owner)
                        .arg(&attempt)
                        .arg(&lock.keys.channel)
                        .arg(millis(GRANT_TIME))
                        .arg(requeue),
                )
                .await;
            if let Err(err) = undone {
                tracing::debug!(lock = %lock.name, %err, "could not undo an abandoned attempt; its lease will");
            }
        });
    }
}

/// How an attempt relates to the line of waiting processes.
#[derive(Debug, Clone, Copy, Default)]
struct Line {
    /// The caller will wait if refused: its process joins the line.
    will_wait: bool,
    /// More tasks of the caller's process wait behind it: once served, the
    /// process goes to the back of the line again.
    more_waiting: bool,
    /// The caller's process may be in the line: once served, it leaves it.
    queued: bool,
}

/// How long the process a release hands the lock to has to claim it before
/// anyone may take it. Normally it claims it within a round trip; this only
/// bounds what a crashed or stuck process costs the others.
const GRANT_TIME: Duration = Duration::from_millis(100);

/// How long the line of waiting processes outlives its last change: long
/// enough for any wait, short enough that a line left by crashed processes
/// goes away by itself.
const LINE_KEEP: Duration = Duration::from_secs(60);

/// How long a final release's receipt is kept: longer than every send of
/// one release can take (three sends, each waiting at most the response
/// timeout, and the pauses between them).
fn receipt_keep(options: &LockOptions) -> Duration {
    options.response_timeout * 4 + Duration::from_secs(1)
}

/// When a hold whose command was sent at `sent` with `lease` ends, as far as
/// the guard may believe: measured on this process's monotonic clock from
/// the *send* (Redis started the lease no earlier), minus a margin for the
/// two clocks running at different rates, Redlock's: 1% of the lease plus
/// 2 ms. Redis times the lease by its host's wall clock; if that clock runs
/// more than 1% fast, or is stepped forward, Redis ends the hold while the
/// guard still believes in it, and only fencing catches what follows.
fn believed_end(sent: Instant, lease: Duration) -> Instant {
    sent + lease.saturating_sub(lease / 100 + Duration::from_millis(2))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// What the guard knows about its own hold, shared with its watchdog.
struct Health {
    /// A fixed point to measure `valid_until` from, so it fits an atomic.
    base: Instant,
    /// Nanoseconds after `base` when the lease ends, as far as we know: set
    /// from the moment the acquiring (or renewing) command was *sent*, less
    /// a drift margin ([`believed_end`]), so that it is not later than
    /// Redis's own expiry while the two clocks agree to within 1%.
    valid_until: AtomicU64,
    /// A renewal failed: we can no longer prove we hold the lock.
    lost: AtomicBool,
}

impl Health {
    fn new(valid_until: Instant) -> Self {
        let health = Self {
            base: Instant::now(),
            valid_until: AtomicU64::new(0),
            lost: AtomicBool::new(false),
        };
        health.extend_to(valid_until);
        health
    }

    fn extend_to(&self, until: Instant) {
        let nanos = u64::try_from(until.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX);
        self.valid_until.fetch_max(nanos, Ordering::SeqCst);
    }

    fn mark_lost(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }

    fn is_lost(&self) -> bool {
        let elapsed = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.lost.load(Ordering::SeqCst) || elapsed >= self.valid_until.load(Ordering::SeqCst)
    }
}

/// One hold of a [`RedisLock`]. Release it with [`LockGuard::release`].
///
/// Dropping a guard without releasing it (an early return, a cancelled
/// request) still releases the hold, from a background task, so the lock does
/// not stay taken until its lease ends.
#[must_use = "a lock guard holds the lock until it is released"]
pub struct LockGuard {
    lock: RedisLock,
    owner: String,
    token: u64,
    lease: Duration,
    waited: Duration,
    health: Arc<Health>,
    watchdog: Option<watchdog::Watchdog>,
    released: bool,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.lock.name)
            .field("owner", &self.owner)
            .field("token", &self.token)
            .field("lease", &self.lease)
            .field("watchdog", &self.watchdog.is_some())
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl LockGuard {
    /// This hold's fencing token: larger than the token of every earlier hold
    /// of this lock, as long as Redis keeps its writes. Write it next to the
    /// data the lock protects, and refuse writes that do not carry a larger
    /// one: then a holder that stalled past its lease cannot overwrite what
    /// the next holder did. If Redis loses its newest writes, a token can be
    /// handed out twice; the strict "larger" check refuses the second, and
    /// [`RedisLock::raise_token_floor`] puts the counter back above it.
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    /// True when this guard can no longer prove it holds the lock: its lease
    /// has run out by our own clock, or the watchdog failed to renew it.
    /// Check it just before making the protected work permanent (before
    /// COMMIT). It is a hint, not a guarantee: the lease can end a moment after
    /// the check, which is why the fencing token exists.
    pub fn is_lost(&self) -> bool {
        self.health.is_lost()
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.lock.name
    }

    /// Who holds it: `<instance>:<task>`.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// How long [`RedisLock::try_lock`] waited for it.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Gives the hold back: stops the watchdog, then runs `release.lua`.
    ///
    /// * `Ok(Released::Free)`: the lock is free, waiters were told.
    /// * `Ok(Released::StillHeld)`: an outer hold of the same owner remains.
    /// * [`LockError::Lost`]: the lease had already run out, the lock was not
    ///   ours any more, and nothing was deleted.
    /// * [`LockError::Unavailable`]: Redis did not answer; the hold ends by
    ///   itself when its lease does (the watchdog is already stopped).
    pub async fn release(mut self) -> Result<Released, LockError> {
        self.released = true;
        // Stop renewing first. A renewal still in flight is harmless: it
        // only extends a hold that still exists, never recreates one.
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.stop();
        }
        let answer = self.lock.release_as(&self.owner, Some(self.token)).await;
        self.lock
            .client
            .inner
            .wakeups
            .forget_holder(&self.lock.keys.channel, &self.owner);
        match answer? {
            Some(released) => Ok(released),
            None => Err(LockError::Lost {
                name: self.lock.name.to_string(),
            }),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.stop();
        }
        self.lock
            .client
            .inner
            .wakeups
            .forget_holder(&self.lock.keys.channel, &self.owner);
        // Drop cannot wait for Redis, so the release runs on its own task.
        // Outside a runtime there is nobody to run it: the lease ends it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let lock = self.lock.clone();
            let owner = std::mem::take(&mut self.owner);
            let token = self.token;
            runtime.spawn(async move {
                // The token makes this safe even if the same task takes the
                // lock again before this runs: that new hold has a new token.
                if let Err(err) = lock.release_as(&owner, Some(token)).await {
                    tracing::warn!(lock = %lock.name, %err, "releasing a dropped lock guard failed; its lease will end it");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eviction_policy_is_read_from_info_memory() {
        let info = "# Memory\r\nused_memory:1000\r\nmaxmemory_policy:volatile-lru\r\nother:1\r\n";
        assert_eq!(eviction_policy(info), Some("volatile-lru"));
        assert_eq!(eviction_policy("# Memory\r\nused_memory:1\r\n"), None);
    }

    /// A release whose reply was lost and that is sent again (same id,
    /// marked as a repeat) gets the first answer back: it does not take a
    /// second hold away from a reentrant owner, and a repeat of the final
    /// release does not report "not yours".
    #[tokio::test]
    async fn a_repeated_release_is_harmless() {
        let redis = ticket_core::services::Redis::shared().expect("a Redis for the tests");
        let options = LockOptions {
            key_prefix: format!("unit-{:016x}", rand::random::<u64>()),
            ..LockOptions::default()
        };
        let client = LockClient::new(redis.url(), "unit", options).unwrap();
        let lock = client.lock("receipt");
        let outer = lock
            .try_lock(Duration::from_secs(1), Lease::Watchdog)
            .await
            .unwrap();
        let inner = lock
            .try_lock(Duration::from_secs(1), Lease::Watchdog)
            .await
            .unwrap();
        let owner = outer.owner().to_owned();
        let token = Some(outer.fencing_token());

        let first = lock.send_release(&owner, token, "r1", false).await.unwrap();
        let repeat = lock.send_release(&owner, token, "r1", true).await.unwrap();
        assert_eq!(first, Some(Released::StillHeld));
        assert_eq!(repeat, Some(Released::StillHeld));
        assert!(lock.is_locked().await.unwrap(), "one hold is left");

        let last = lock.send_release(&owner, token, "r2", false).await.unwrap();
        assert_eq!(last, Some(Released::Free));
        assert!(!lock.is_locked().await.unwrap());
        assert_eq!(
            lock.send_release(&owner, token, "r2", true).await.unwrap(),
            Some(Released::Free),
            "a repeat of the final release reports it released and deletes nothing"
        );
        assert_eq!(
            lock.send_release(&owner, token, "r3", false).await.unwrap(),
            None,
            "a first send for a hold that is gone is refused"
        );
        std::mem::forget((outer, inner)); // both holds were given back above
    }

    /// A repeat of a release whose hold is gone, and which no send of this
    /// release freed (the lease ran out first), reports the hold lost, not
    /// "released": only a release that left a receipt may say that.
    #[tokio::test]
    async fn a_repeated_release_that_finds_the_hold_expired_reports_it_lost() {
        let redis = ticket_core::services::Redis::shared().expect("a Redis for the tests");
        let options = LockOptions {
            key_prefix: format!("unit-{:016x}", rand::random::<u64>()),
            ..LockOptions::default()
        };
        let client = LockClient::new(redis.url(), "unit", options).unwrap();
        let lock = client.lock("expired");
        let guard = lock
            .try_lock(
                Duration::from_secs(1),
                Lease::Fixed(Duration::from_millis(50)),
            )
            .await
            .unwrap();
        let (owner, token) = (guard.owner().to_owned(), Some(guard.fencing_token()));
        while lock.is_locked().await.unwrap() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let repeat = lock.send_release(&owner, token, "r1", true).await.unwrap();
        assert_eq!(repeat, None, "the hold expired; no send of r1 freed it");
        std::mem::forget(guard); // its lease already ended it
    }
}

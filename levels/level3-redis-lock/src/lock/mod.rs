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
//! | wait for it | [`Wait`]; `wait_for_release.rs` ([`WaitForRelease`]), `wakeups.rs`, `pass.lua` | one subscription per lock per process; a release wakes one task of the process it names, in arrival order; nobody sleeps longer than the lease (or grant) left |
//! | wait for it, the usual way | the `spin` strategy (`src/spin.rs`), on [`RedisLock::try_once`] | try, sleep a growing random while, try again |
//! | hang up safely | `abandon.lua` | an attempt whose caller went away (or whose reply timed out) is undone if it added a hold |
//! | survive a pause | [`LockGuard::fencing_token`] | every hold gets a number from a counter; the database accepts a write only with a token above the row's last one |
//! | keep tokens growing | `floor.lua` | after Redis lost its newest writes and the counter went back, the holder the database refused raises the counter above the row's token |
//!
//! The Rust side, file by file: `client.rs` ([`LockClient`]: connections,
//! scripts, the start-up check), `redis_lock.rs` ([`RedisLock`]: one named
//! lock, and every script call), `guard.rs` ([`LockGuard`]: one hold, and
//! what it knows of its lease), `error.rs` ([`LockError`]), `watchdog.rs`.
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

mod client;
mod error;
mod guard;
mod redis_lock;
mod subscriber;
mod wait_for_release;
mod wakeups;
mod watchdog;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use client::LockClient;
pub use error::LockError;
pub use guard::LockGuard;
pub use redis_lock::{Attempt, RedisLock, Released};
pub use wait_for_release::WaitForRelease;

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

/// How a caller waits while someone else holds the lock: one implementation
/// per way of waiting, chosen by [`LockOptions::waiting`]. [`WaitForRelease`]
/// (pub/sub, Redisson's) lives here because it needs the client's
/// subscriber; a way of waiting that only tries again and again builds on
/// [`RedisLock::try_once`], as the `spin` strategy does.
#[async_trait::async_trait]
pub trait Wait: fmt::Debug + Send + Sync + 'static {
    /// Takes `lock` for `owner` with `lease`, waiting until `deadline` at
    /// most. Returns the fencing token and when the winning attempt was
    /// *sent* (the lease started no earlier). Past the deadline:
    /// [`LockError::Timeout`] (the caller fills in how long it waited).
    async fn acquire(
        &self,
        lock: &RedisLock,
        owner: &str,
        lease: Duration,
        deadline: Instant,
    ) -> Result<(u64, Instant), LockError>;
}

/// A way of waiting, shared by every lock of a client.
pub type Waiting = Arc<dyn Wait>;

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
    /// After each acquisition, wait until this many replicas have the hold
    /// (`WAIT`), and give it back if they do not. `None` (the default): the
    /// master's answer is enough. See [`ReplicaWait`].
    pub replicas: Option<ReplicaWait>,
}

/// `WAIT numreplicas timeout` after every acquisition, with Redisson's
/// answer to a short count: a hold that fewer replicas than asked
/// acknowledged within the timeout is given back, and the caller is told
/// [`LockError::NotReplicated`] (a server answers 503 busy, and the buyer
/// clicks again).
///
/// What it buys: a master that dies right after granting the lock is less
/// likely to be replaced by a replica that never saw it. What it does not:
/// replication stays asynchronous, the write is not rolled back when WAIT
/// times out, and the failover may still promote a replica that had not
/// acknowledged (WAIT is a count, not a vote). So the lock can still be
/// granted twice, more rarely; fencing at the database is still what keeps
/// the sale correct. What it costs: one more round trip per acquisition,
/// plus the replica's acknowledgement, and while Redis holds the `WAIT`
/// the connection it came on (shared by every task of the process) waits
/// behind it. `docs/08-cluster.md` has the measured price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    /// How many replicas must acknowledge the hold.
    pub replicas: u32,
    /// How long Redis may wait for them. Must stay below
    /// [`LockOptions::response_timeout`], or the client gives up first.
    pub timeout: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            key_prefix: "ticket-rush:lock".to_owned(),
            waiting: Arc::new(WaitForRelease),
            watchdog_lease: Duration::from_secs(3),
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(1),
            replicas: None,
        }
    }
}

/// How long the process a release hands the lock to has to claim it before
/// anyone may take it. Normally it claims it within a round trip; this only
/// bounds what a crashed or stuck process costs the others.
pub(super) const GRANT_TIME: Duration = Duration::from_millis(100);

/// How long the line of waiting processes outlives its last change: long
/// enough for any wait, short enough that a line left by crashed processes
/// goes away by itself.
pub(super) const LINE_KEEP: Duration = Duration::from_secs(60);

/// How long a final release's receipt is kept: longer than every send of
/// one release can take (three sends, each waiting at most the response
/// timeout, and the pauses between them).
pub(super) fn receipt_keep(options: &LockOptions) -> Duration {
    options.response_timeout * 4 + Duration::from_secs(1)
}

/// When a hold whose command was sent at `sent` with `lease` ends, as far as
/// the guard may believe: measured on this process's monotonic clock from
/// the *send* (Redis started the lease no earlier), minus a margin for the
/// two clocks running at different rates, Redlock's: 1% of the lease plus
/// 2 ms. Redis times the lease by its host's wall clock; if that clock runs
/// more than 1% fast, or is stepped forward, Redis ends the hold while the
/// guard still believes in it, and only fencing catches what follows.
pub(super) fn believed_end(sent: Instant, lease: Duration) -> Instant {
    sent + lease.saturating_sub(lease / 100 + Duration::from_millis(2))
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

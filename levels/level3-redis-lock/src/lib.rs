//! # Level 3: a lock in Redis
//!
//! **The problem.** Level 1's lock lived in one server's memory, so two
//! servers oversold. Level 2 moved the control into PostgreSQL, which works,
//! but every buyer waiting for a row lock holds a database connection inside
//! PostgreSQL's queue, and the database does the queueing for every server.
//! The Java projects this one retells took the lock out of the database and
//! into Redis, with the Redisson library. Here the lock itself is the lesson:
//! [`lock`] is a Redis lock written from scratch, to be read.
//!
//! **The mechanism.** One lock per ticket, a Redis hash taken and released by
//! Lua scripts (Redis runs a script with nothing in between, so "is it free?
//! then it is mine" cannot be split):
//!
//! - *acquire* ([`lock`]'s `acquire.lua`): free → mine, with a reentrancy
//!   count, a lease (`PEXPIRE`) and a fencing token; held by someone else →
//!   "try again in PTTL ms";
//! - *release* (`release.lua`): only the owner may; the last release deletes
//!   the key and PUBLISHes on the lock's channel; a retried release is
//!   harmless;
//! - *waiting*, the difference between the two strategies:
//!   [`pubsub`] subscribes and sleeps until a release is published (at most
//!   the PTTL), one subscription per server; Redis keeps a line of waiting
//!   servers and each release hands the lock to the one that waited longest,
//!   which wakes its buyers one at a time, in arrival order;
//!   [`spin`] retries with exponential backoff and jitter;
//! - *lease*: a watchdog renews a short lease while the sale runs
//!   (`--lease-ms 0`, the default), or a fixed lease ends it (`--lease-ms N`);
//! - *fencing*: every hold carries a token that only grows; the sale's UPDATE
//!   only applies when the ticket row has seen no newer token and has not
//!   changed since it was read (`--fencing on`).
//!
//! The sale runs in this order ([`sale`]): take the lock, BEGIN, read, check,
//! write, COMMIT, release. Waiting buyers hold no database connection.
//!
//! **What it guarantees.** On any number of servers sharing one database and
//! one Redis: exactly `tickets` orders, stock 0, one order per buyer, however
//! wide the race window. If Redis stops, purchases are answered 503
//! (`unavailable`) at once, `/health` says so, and sales resume when Redis is
//! back. A buyer who waits longer than `--wait-ms` is answered 503 `busy`.
//!
//! **What still breaks.** A lock in Redis is a *lease*, not a fact: a server
//! that stalls longer than its lease (a stopped VM, a long pause) comes back
//! believing it holds a lock that Redis already gave to someone else. Without
//! fencing, that oversells; the fencing token is what makes the database
//! refuse the stale holder, so correctness rests on the database after all,
//! and the lock is what keeps buyers from wasting their work. And the order
//! matters: `--release-before-commit` lets the next buyer read the stock
//! before our sale is committed (one of the original projects shipped this);
//! with `--fencing off` it oversells, with fencing on the stale writes are
//! refused and retried. One Redis is also one more thing to run, and one more
//! thing that can be down. And the features cost Redis work: uncontended,
//! this lock is slower than the `rslock` crate, while under contention it is
//! the only contender that is fair and never keeps a task waiting long (the
//! measured figures, and the command that produces them, are in
//! `docs/03-redis-lock.md`).
//!
//! ```text
//! cargo run --release -p load -- run --level 3 --strategy pubsub --servers 2 --buyers 1000 --tickets 100
//! cargo run --release -p load -- run --level 3 --strategy spin --servers 2 --think-time-ms 20
//! ```
//!
//! or by hand, in two terminals (same `DATABASE_URL` and `REDIS_URL`):
//!
//! ```text
//! cargo run --release -p level3 -- --port 8080 --strategy pubsub --think-time-ms 20
//! cargo run --release -p level3 -- --port 8081 --strategy pubsub --think-time-ms 20
//! cargo run --release -p load -- run --level 3 --target http://127.0.0.1:8080 --target http://127.0.0.1:8081
//! ```
//!
//! The lock's own benchmark, against the `rslock` crate on the same Redis:
//!
//! ```text
//! cargo bench -p level3 --bench lock
//! ```
//!
//! **What the next level fixes.** Every sale still takes a lock, talks to
//! Redis and PostgreSQL, and waits for both. Level 4 drops the lock: the
//! stock lives in Redis and one Lua script checks and decrements it
//! atomically, and orders reach PostgreSQL afterwards through a Redis stream.

pub mod lock;
pub mod pubsub;
pub mod sale;
pub mod spin;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ticket_core::server::{strategy_parser, ServerArgs};
use ticket_core::services::Redis;
use ticket_core::strategy::{Expected, StrategyEntry};
use ticket_core::RunningServer;

use crate::lock::{Lease, LockClient, LockError, LockOptions, ReplicaWait};

/// Level 3's strategies: both correct on any number of servers; they differ
/// in how a buyer waits for the lock. This table is the only list: a new
/// strategy is one file (its way of waiting, a [`lock::Wait`], and its
/// `build`; `spin.rs` is the example) and one line here.
pub const STRATEGIES: &[StrategyEntry<Level3Config>] = &[
    StrategyEntry {
        name: "pubsub",
        about: "Redis lock (Lua scripts, watchdog, fencing); waiters sleep until the release is PUBLISHed",
        expected: Expected::CORRECT,
        build: pubsub::build,
    },
    StrategyEntry {
        name: "spin",
        about: "the same Redis lock; waiters retry with exponential backoff and jitter",
        expected: Expected::CORRECT,
        build: spin::build,
    },
];

/// The race window the tour and the tests use: the same 20 ms that makes
/// Levels 0 and 1 oversell, so that Level 3 is shown correct despite it.
pub const RACE_THINK_TIME_MS: u64 = 20;

/// Default for `--wait-ms`: long enough for a 1000-buyer rush with a 20 ms
/// race window to sell out without a single "busy".
pub const DEFAULT_WAIT_MS: u64 = 5_000;

/// Default for `--watchdog-lease-ms`.
pub const DEFAULT_WATCHDOG_LEASE_MS: u64 = 3_000;

/// Whether sales carry the lock's fencing token into the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fencing {
    /// The UPDATE applies only if no newer hold wrote the row and the row
    /// did not change since it was read.
    On,
    /// Trust the lock alone (to show what a stale holder does).
    Off,
}

/// Level 3's own settings, shared by both strategies.
#[derive(Debug, Clone)]
pub struct Level3Config {
    /// The Redis every server of the sale shares.
    pub redis_url: String,
    /// How long a buyer waits for the ticket's lock before 503 busy.
    pub wait: Duration,
    /// The lease of each hold: the watchdog's, or a fixed one.
    pub lease: Lease,
    /// The lease the watchdog keeps renewing (every third of it).
    pub watchdog_lease: Duration,
    /// Whether writes carry the fencing token.
    pub fencing: Fencing,
    /// The broken order: release the lock before COMMIT.
    pub release_before_commit: bool,
    /// A simulated stop-the-world pause between the last "is the lock still
    /// mine?" check and COMMIT (zero: none).
    pub pause_before_commit: Duration,
    /// `WAIT` for this many replicas after each acquisition (`None`: no).
    pub replicas: Option<ReplicaWait>,
    /// A throwaway Redis started because no URL was given; kept running for
    /// as long as the server (which holds this config) lives.
    throwaway_redis: Option<Arc<Redis>>,
}

impl Level3Config {
    /// The defaults, with the Redis at `redis_url`.
    pub fn new(redis_url: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            wait: Duration::from_millis(DEFAULT_WAIT_MS),
            lease: Lease::Watchdog,
            watchdog_lease: Duration::from_millis(DEFAULT_WATCHDOG_LEASE_MS),
            fencing: Fencing::On,
            release_before_commit: false,
            pause_before_commit: Duration::ZERO,
            replicas: None,
            throwaway_redis: None,
        }
    }
}

/// `level3`: a ticket server guarded by a lock held in Redis.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "level3",
    version,
    about = "Level 3 of ticket-rush: a Redis lock (Redisson-style, written from scratch), correct on any number of servers",
    long_about = "Level 3 of ticket-rush: sells tickets under a lock held in Redis, one lock per ticket.\n\n\
        The lock is taken and released by Lua scripts, kept alive by a watchdog, and every hold \
        carries a fencing token that the database checks. Waiting buyers sleep until the holder's \
        release is published (pubsub) or poll (spin). Run two servers on one database and one \
        Redis: still exactly 100 tickets sold."
)]
pub struct Cli {
    /// Where to listen and which database to use.
    #[command(flatten)]
    pub server: ServerArgs,

    /// How a buyer waits while another holds the ticket's lock.
    #[arg(long, default_value = "pubsub", value_parser = strategy_parser(STRATEGIES))]
    pub strategy: String,

    /// Redis to hold the locks, for example redis://127.0.0.1:6379. Every
    /// server of one sale must use the same Redis. Without it, the server
    /// starts a private throwaway Redis (fine for trying one server, useless
    /// for two).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// How long a buyer waits for the ticket's lock before being answered
    /// 503 busy (and clicking again).
    #[arg(long, default_value_t = DEFAULT_WAIT_MS, value_name = "MS")]
    pub wait_ms: u64,

    /// How long a hold lasts if its holder stops caring: 0 (the default)
    /// means a short lease that a watchdog renews while the sale runs, so a
    /// crashed server frees the lock quickly and a slow one keeps it; any
    /// other value is a fixed lease that ends the hold, finished or not (try
    /// it below --think-time-ms to watch fencing catch the stale holder).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub lease_ms: u64,

    /// With --lease-ms 0: the lease the watchdog renews every third of; how
    /// long a crashed server blocks the ticket.
    #[arg(long, default_value_t = DEFAULT_WATCHDOG_LEASE_MS, value_name = "MS")]
    pub watchdog_lease_ms: u64,

    /// on: each sale writes the lock's fencing token into the ticket row, and
    /// the database refuses a sale whose lock expired and was taken over.
    /// off: trust the lock alone.
    #[arg(long, value_enum, default_value_t = Fencing::On)]
    pub fencing: Fencing,

    /// The broken order, kept on purpose: release the lock *before* COMMIT,
    /// so the next buyer reads the stock from before our sale. Oversells with
    /// --fencing off. The think time also pauses between release and commit.
    #[arg(long)]
    pub release_before_commit: bool,

    /// Simulates a stop-the-world pause (a long GC, a frozen VM) of this many
    /// milliseconds after the sale's last "is the lock still mine?" check and
    /// before COMMIT: the moment fencing exists for. Use it with a --lease-ms
    /// shorter than the pause but longer than half of it, say 400 and 600 (a
    /// watchdog would keep renewing through a mere sleep, as it would not
    /// through a real pause): with --fencing off the next holder's sale and
    /// ours both land, and the ticket is oversold. With a pause of two
    /// leases or more, the next holder's lease also runs out while its
    /// UPDATE waits for our row lock, and its own check rolls it back.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub pause_before_commit_ms: u64,

    /// After taking a lock, send `WAIT N` and give the lock back (503 busy,
    /// the buyer clicks again) unless N replicas acknowledged it within
    /// --wait-timeout-ms. Narrows the window in which a master that dies
    /// right after granting the lock leaves a replica that never saw it; it
    /// does not close it (replication stays asynchronous, and WAIT is not a
    /// vote), so fencing is still what keeps the sale correct. 0: don't wait.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub wait_replicas: u32,

    /// With --wait-replicas: how long Redis may wait for the replicas. Kept
    /// below the lock client's 1 s response timeout.
    #[arg(long, default_value_t = 100, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=900))]
    pub wait_timeout_ms: u64,
}

impl Cli {
    /// Starts the server this command line describes.
    pub async fn start(self) -> anyhow::Result<RunningServer> {
        let (redis_url, throwaway_redis) =
            ticket_core::server::redis_or_throwaway(self.redis_url).await?;
        check_redis(&redis_url).await?;
        let config = Level3Config {
            wait: Duration::from_millis(self.wait_ms),
            lease: Lease::from_millis(self.lease_ms),
            watchdog_lease: Duration::from_millis(self.watchdog_lease_ms.max(3)),
            fencing: self.fencing,
            release_before_commit: self.release_before_commit,
            pause_before_commit: Duration::from_millis(self.pause_before_commit_ms),
            replicas: (self.wait_replicas > 0).then(|| ReplicaWait {
                replicas: self.wait_replicas,
                timeout: Duration::from_millis(self.wait_timeout_ms),
            }),
            throwaway_redis,
            ..Level3Config::new(redis_url)
        };
        ticket_core::server::start(self.server, "level3", STRATEGIES, &self.strategy, config).await
    }
}

/// Refuses to start on a Redis that may evict lock keys (see
/// [`LockClient::check_redis`]). A Redis that does not answer yet is only
/// reported: the server starts, answers 503 and says so on `/health` until
/// Redis is there, as it does when Redis stops later.
async fn check_redis(redis_url: &str) -> anyhow::Result<()> {
    let client = LockClient::new(redis_url, "startup-check", LockOptions::default())
        .context("the --redis-url is not usable")?;
    match client.check_redis().await {
        Ok(()) => Ok(()),
        Err(LockError::Unavailable(err)) => {
            tracing::warn!(%err, "Redis does not answer yet; purchases are answered 503 until it does");
            Ok(())
        }
        Err(err) => {
            Err(anyhow::Error::new(err)
                .context("the Redis given to hold the locks cannot hold them"))
        }
    }
}

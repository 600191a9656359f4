//! # Level 5: the box office
//!
//! **The problem.** Levels 0-4 sell one counter of identical tickets. A real
//! box office sells *seats*: a buyer picks seats 3 and 4 on a seat map, holds
//! them for a few minutes while they pay, and loses them if they do not.
//! Every step has its own race. Two buyers grab the same seat. One buyer
//! grabs [1, 2] while another grabs [2, 1]. A payment arrives just as the
//! hold runs out. Two payments spend the same balance. A hold nobody comes
//! back to must still give its seats back.
//!
//! **The mechanism.** Seats are rows; a hold points them at itself
//! (`seats.hold_id`), all of them or none, in one transaction:
//!
//! | step | how it stays correct | file |
//! | --- | --- | --- |
//! | hold (`pessimistic`) | `FOR UPDATE` on each seat, in ascending seat order | [`holds::pessimistic`] |
//! | hold (`optimistic`) | write each seat `WHERE version = $read`; fail fast or retry | [`holds::optimistic`] |
//! | hold (`redis-lua`) | one Lua script checks and takes every seat in Redis; PostgreSQL records the hold | [`holds::redis_lua`] |
//! | one user's limit | a per-user advisory lock, always taken first | [`holds::lock_user`] |
//! | charge | one relative upsert, `balance = balance + $amount` | [`wallet`] |
//! | pay | lock the hold, check, deduct, record, mark paid: one transaction | [`settle`] |
//! | expire | every server sweeps with `FOR UPDATE SKIP LOCKED` | [`sweeper`] |
//! | wait in line | one Redis line per show; Lua admits the lowest numbers, at most `--active-limit` | [`queue`] |
//!
//! The hold row's lock is the referee between a payment and an expiry:
//! both take it before they look, so exactly one of them decides.
//!
//! **What it guarantees.** On any number of servers sharing the database:
//! no seat belongs to two holds that are `held` or `paid`; for every user,
//! the charges add up to the balance plus the payments; a paid hold has
//! exactly one payment of its amount; a hold nobody pays expires and its
//! seats go back on sale.
//!
//! **What still breaks, on purpose.** Each broken version is one flag,
//! reproduced by a test with `--think-time-ms` widening its window:
//!
//! | flag | what goes wrong |
//! | --- | --- |
//! | `--lock-order request` | [1, 2] and [2, 1] deadlock; PostgreSQL breaks it after a second and one buyer gets 503 `busy` |
//! | `--lock-scope before-commit` | the seat locks are let go before the hold is written: two buyers hold one seat |
//! | `--payment-check outside` | the balance is checked outside the transaction: two payments spend it twice |
//! | `--sweeper unlocked` | the sweeper expires a hold whose payment is committing: paid *and* expired |
//!
//! **The waiting room** (`--queue on`, the default). 10,000 users for
//! 1,000 seats should not all reach the seat map at once. A user joins the
//! show's line (`POST /queue`), gets an arrival number and a token, and
//! polls (`GET /queue/{token}`) as `retry_after_ms` says; holds and
//! payments need the token of an admitted user (`Queue-Token`). Admission
//! is done by a Lua script that any server runs, strictly in number order,
//! never more than `--active-limit` at once; a payment or
//! `--admitted-ttl-ms` of idling ends a user's turn. `--queue off` is the
//! box office without it, for the lessons above.
//!
//! **Run it** (two terminals, one database, one Redis):
//!
//! ```text
//! cargo run --release -p level5 -- --port 8080 --strategy pessimistic --admin-token secret
//! cargo run --release -p level5 -- --port 8081 --strategy pessimistic --admin-token secret
//! ```
//!
//! (with `DATABASE_URL` and `REDIS_URL` set; add `--queue off` to hold
//! seats without queueing.) The lessons, with measured figures, are
//! `docs/06-box-office.md` (the three strategies: `cargo bench -p level5
//! --bench holds`) and `docs/07-waiting-room.md` (the line and the cache).

pub mod api;
pub mod cache;
pub mod error;
pub mod holds;
pub mod input;
pub mod keys;
pub mod queue;
pub mod queue_routes;
pub mod redis_conn;
pub mod reservations;
pub mod server;
pub mod settle;
pub mod shows;
pub mod state;
pub mod sweeper;
pub mod wallet;

use std::time::Duration;

use clap::{Parser, ValueEnum};
use ticket_core::ServerArgs;

pub use server::{start, BoxOffice};

/// In which order the pessimistic strategy locks the seats of a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LockOrder {
    /// Ascending seat number, for every buyer: no deadlock.
    Global,
    /// The order the buyer listed them (BROKEN: [1, 2] and [2, 1] deadlock).
    Request,
}

/// How long the pessimistic strategy keeps its seat locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LockScope {
    /// Until the hold is committed.
    Commit,
    /// Released before the hold is written (BROKEN: double-sells).
    BeforeCommit,
}

/// Where a payment checks the hold and the balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PaymentCheck {
    /// Under the hold's row lock, in the payment's transaction.
    InTransaction,
    /// Before the transaction, unlocked (BROKEN: double spend).
    Outside,
}

/// How the sweeper picks the holds it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SweeperMode {
    /// `FOR UPDATE SKIP LOCKED`: never a hold another transaction works on.
    Locked,
    /// A plain read, then a blind write (BROKEN: expires paid holds).
    Unlocked,
}

/// Whether the waiting room guards holds and payments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueMode {
    /// Holds and payments need an admitted `Queue-Token` (see [`queue`]).
    On,
    /// No waiting room: anyone may hold and pay.
    Off,
}

/// Whether reads of shows and seat maps go through the Redis cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    /// From Redis, loaded from the database on a miss.
    On,
    /// Every read from the database (the baseline the cache is measured against).
    Off,
}

/// What protects a cache miss from the stampede.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheGuard {
    /// One load per key per process, and one across servers (a Redis lock).
    SingleFlight,
    /// None (BROKEN: 1,000 readers of an expired entry make 1,000 queries).
    Off,
}

/// The settings every part of the box office reads.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a hold lasts unpaid.
    pub hold_ttl: Duration,
    /// Most seats one hold (and one user at once) may have.
    pub max_seats: usize,
    /// The widened race window (`--think-time-ms`).
    pub think_time: Duration,
    /// `pessimistic`: the lock order.
    pub lock_order: LockOrder,
    /// `pessimistic`: when the seat locks end.
    pub lock_scope: LockScope,
    /// `optimistic`: fresh attempts after a lost race (0 fails fast).
    pub max_retries: u32,
    /// The longest wait for a row lock, in ms (0: forever).
    pub lock_timeout_ms: u64,
    /// Where payments check.
    pub payment_check: PaymentCheck,
    /// How the sweeper picks holds.
    pub sweeper: SweeperMode,
    /// How often each server's sweeper runs.
    pub sweep_interval: Duration,
    /// The largest single charge.
    pub max_charge: i64,
    /// Redis, for `redis-lua`.
    pub redis_url: Option<String>,
}

/// `level5`'s command line.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "level5",
    about = "Level 5 of ticket-rush: the box office (seats, holds, wallet, payment, expiry)"
)]
pub struct Cli {
    /// The flags every level shares (port, database, think time, pool).
    #[command(flatten)]
    pub server: ServerArgs,

    /// How seats are held: `pessimistic` (row locks in one global order),
    /// `optimistic` (version check at write time) or `redis-lua` (one Lua
    /// script in Redis decides, PostgreSQL records; needs --redis-url).
    #[arg(long, default_value = "pessimistic", value_parser = clap::builder::PossibleValuesParser::new(holds::STRATEGIES))]
    pub strategy: String,

    /// Redis, for `redis-lua`, the waiting room and the cache. Without it
    /// (and with `--queue on` or `redis-lua`) the server starts a private
    /// throwaway Redis, which no second server can share.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// How long a hold lasts before it expires unpaid, in milliseconds.
    #[arg(long, default_value_t = 300_000, value_name = "MS")]
    pub hold_ttl_ms: u64,

    /// Most seats in one hold, and held by one user at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub max_seats: u16,

    /// The waiting room: `on` (holds and payments need an admitted
    /// `Queue-Token`) or `off` (anyone may hold and pay: the earlier lessons).
    #[arg(long, value_enum, default_value_t = QueueMode::On)]
    pub queue: QueueMode,

    /// Most users admitted and not yet finished at once, per show. Every
    /// server sharing a Redis must be given the same value.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub active_limit: u32,

    /// An admitted user who does nothing (no hold, no payment) this long
    /// loses the place to the next in line.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    pub admitted_ttl_ms: u64,

    /// `GET /shows` and seat maps' grades and prices from Redis (`on`),
    /// or always from the database (`off`).
    #[arg(long, value_enum, default_value_t = CacheMode::On)]
    pub cache: CacheMode,

    /// How long `GET /shows` is served from the cache (its seat counts are
    /// at most this old).
    #[arg(long, default_value_t = 1_000, value_name = "MS")]
    pub cache_ttl_ms: u64,

    /// How long a seat map's grades and prices are cached (an admin's
    /// change invalidates them at once).
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    pub seat_map_cache_ttl_ms: u64,

    /// What protects an expired entry from the stampede: `single-flight`
    /// (one load) or `off` (BROKEN: every reader that misses loads).
    #[arg(long, value_enum, default_value_t = CacheGuard::SingleFlight)]
    pub cache_guard: CacheGuard,

    /// The admin token for `POST /admin/shows` and `PATCH /admin/shows/{id}`.
    /// Without it there is no admin API.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// The largest single wallet charge, in won.
    #[arg(long, default_value_t = 10_000_000)]
    pub max_charge: i64,

    /// `optimistic`: fresh attempts after losing a race; 0 fails fast.
    #[arg(long, default_value_t = 5)]
    pub max_retries: u32,

    /// The longest wait for a seat's or hold's row lock (then 503 busy).
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    pub lock_timeout_ms: u64,

    /// `pessimistic`: lock seats in one global order (`global`) or in the
    /// order asked (`request`, BROKEN: deadlocks).
    #[arg(long, value_enum, default_value_t = LockOrder::Global)]
    pub lock_order: LockOrder,

    /// `pessimistic`: keep the seat locks until the commit (`commit`) or
    /// let go before writing (`before-commit`, BROKEN: double-sells).
    #[arg(long, value_enum, default_value_t = LockScope::Commit)]
    pub lock_scope: LockScope,

    /// Check the balance and hold inside the payment's transaction, or
    /// outside (BROKEN: double spend).
    #[arg(long, value_enum, default_value_t = PaymentCheck::InTransaction)]
    pub payment_check: PaymentCheck,

    /// The sweeper locks what it expires (`locked`) or not (`unlocked`,
    /// BROKEN: expires holds being paid).
    #[arg(long, value_enum, default_value_t = SweeperMode::Locked)]
    pub sweeper: SweeperMode,

    /// How often each server looks for expired holds.
    #[arg(long, default_value_t = 1_000, value_name = "MS")]
    pub sweep_interval_ms: u64,
}

impl Cli {
    /// The settings the parts read.
    pub fn settings(&self) -> Settings {
        Settings {
            hold_ttl: Duration::from_millis(self.hold_ttl_ms),
            max_seats: usize::from(self.max_seats),
            think_time: Duration::from_millis(self.server.think_time_ms),
            lock_order: self.lock_order,
            lock_scope: self.lock_scope,
            max_retries: self.max_retries,
            lock_timeout_ms: self.lock_timeout_ms,
            payment_check: self.payment_check,
            sweeper: self.sweeper,
            sweep_interval: Duration::from_millis(self.sweep_interval_ms.max(1)),
            max_charge: self.max_charge.max(1),
            redis_url: self.redis_url.clone(),
        }
    }

    /// The cache's settings.
    pub fn cache_settings(&self) -> cache::CacheSettings {
        cache::CacheSettings {
            shows_ttl: Duration::from_millis(self.cache_ttl_ms.max(1)),
            seat_map_ttl: Duration::from_millis(self.seat_map_cache_ttl_ms.max(1)),
            guard: self.cache_guard == CacheGuard::SingleFlight,
        }
    }

    /// The waiting room's settings.
    pub fn queue_settings(&self) -> queue::QueueSettings {
        queue::QueueSettings {
            active_limit: self.active_limit,
            admitted_ttl: Duration::from_millis(self.admitted_ttl_ms.max(1)),
        }
    }

    /// Starts the server these flags describe.
    pub async fn start(self) -> anyhow::Result<BoxOffice> {
        start(self).await
    }
}

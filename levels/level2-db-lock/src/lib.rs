//! # Level 2: locks in the database
//!
//! **The problem.** Level 1's lock lives in one server's memory. Run two
//! servers on one database and each lets its own buyer in: two buyers at
//! once, and the Level 0 race is back. The one thing both servers share is
//! PostgreSQL, so that is where the control has to go. Which kind of
//! control, why, and is a lock needed at all?
//!
//! **The mechanism.** Six answers, one file each, all correct on any
//! number of servers:
//!
//! | strategy | how | a second buyer of the same ticket... | failure answer |
//! | --- | --- | --- | --- |
//! | [`optimistic`] | read `stock, version`; write `WHERE version = $v`; retry on 0 rows | never waits while we think; finds the version changed and retries | retries exhausted: 503 |
//! | [`pessimistic`] | `SELECT ... FOR NO KEY UPDATE`, then read-check-write, in one transaction | waits in PostgreSQL's queue, at most `--lock-timeout-ms` | lock timeout: 503 |
//! | [`nowait`] | `SELECT ... FOR NO KEY UPDATE NOWAIT` | is refused at once | row held: 503 at once |
//! | [`atomic`] | `UPDATE ... SET stock = stock - 1 WHERE id = $1 AND stock > 0` + the order insert | waits only from our UPDATE to our COMMIT | none (sold out or sold) |
//! | [`serializable`] | Level 0's read-check-write under SERIALIZABLE; retry on SQLSTATE 40001 | is rolled back by PostgreSQL and retries | retries exhausted: 503 |
//! | [`advisory`] | `pg_advisory_xact_lock(ticket id)`, then read-check-write | waits for the ticket's named lock, at most `--lock-timeout-ms` | lock timeout: 503 |
//!
//! Is a lock needed at all? Not one you take yourself: `atomic` asks the
//! database to check and decrement in one statement, and that is enough. But
//! a lock is still there. Every UPDATE takes the row's exclusive lock until
//! COMMIT; `atomic` is fast because it holds it for the shortest time, not
//! because it holds none. Each strategy's file explains its locks where they
//! are taken: what kind, what they protect, and why that scope.
//!
//! **Module map.** One file per strategy (the table above); every one runs
//! its attempt through [`transaction::in_transaction`] (open the
//! transaction, sell, commit or roll back; the opening also bounds a
//! stalled holder with `idle_in_transaction_session_timeout`), and sorts
//! what went wrong with [`retry`] (busy, lost race, final answer; bounded
//! jittered retries for `optimistic` and `serializable`).
//!
//! Every strategy keeps the sale and the order in **one transaction**: a
//! refused order (UNIQUE (ticket_id, user_id): this buyer already has one)
//! rolls the decrement back, and a crash between the two cannot lose stock.
//! A retried attempt is always a **fresh transaction**: an aborted one can
//! run nothing more, and an old snapshot would only re-read the stale stock
//! (see [`retry`]).
//!
//! **Busy is an answer, not an error.** A lock wait that timed out, a NOWAIT
//! refusal, retries that ran out, no free connection: each is a 503 `busy`
//! with `Retry-After`, nothing is written, and the buyer clicks again.
//!
//! **Pool sizing.** Each server opens at most `--max-connections`
//! connections (default 10). A purchase holds one for its whole transaction,
//! think time included, with every strategy: so the pool also caps how many
//! buyers per server race at once (see [`optimistic`] for what happens
//! without that cap). When 1000 buyers meet two pools of 10, 20 are inside
//! PostgreSQL and 980 wait in line *inside the servers*, for at most
//! `--acquire-timeout-ms` (then 503, counted as `pool_timeout`). A bigger
//! pool does not sell one ticket faster: all sales of one ticket pass
//! through one row lock, one at a time. It only moves the queue from the
//! servers into PostgreSQL, where each waiter is a backend process, where
//! `pessimistic` waiters run into their timeout, and where `optimistic` and
//! `serializable` waste more work (more buyers read the same version, and
//! all but one must retry). `docs/02-db-locks.md` measures pools of 2, 10
//! and 50. Size the pool for the database, not for the crowd.
//!
//! **What the servers count** (`GET /metrics`,
//! `ticket_rush_strategy_events_total{event=...}`; the load tool adds them
//! up): `conflict` (optimistic version check failed), `serialization_failure`
//! (40001), `deadlock` (40P01), `retry` (a fresh attempt started),
//! `retries_exhausted`, `lock_timeout` (pessimistic gave up waiting),
//! `lock_refused` (NOWAIT found the row held), `pool_timeout`,
//! `statement_timeout`. The `ticket_rush_lock_wait_seconds` histogram times
//! each strategy's row-locking statement.
//!
//! **What it guarantees.** On any number of servers sharing the database:
//! exactly `tickets` orders, stock 0, one order per buyer, and a 201 for
//! every order row, however wide the race window (`--think-time-ms`).
//!
//! **What still breaks.** Nothing is oversold; the cost is elsewhere. Every
//! purchase of one ticket passes through one row of one database, one at a
//! time: throughput is bounded by how long each holds that row, and every
//! buyer, even one who will be told "sold out", spends a database connection.
//! The measured comparison (two servers, 1000 buyers, 100 tickets) is in
//! `docs/02-db-locks.md`. Run it:
//!
//! ```text
//! cargo run --release -p load -- run --level 2 --strategy atomic --servers 2 --buyers 1000 --tickets 100
//! cargo run --release -p load -- run --level 2 --strategy optimistic --servers 2 --think-time-ms 0 --json
//! ```
//!
//! or by hand, in two terminals (same `DATABASE_URL`):
//!
//! ```text
//! cargo run --release -p level2 -- --port 8080 --strategy pessimistic --lock-timeout-ms 500
//! cargo run --release -p level2 -- --port 8081 --strategy pessimistic --lock-timeout-ms 500
//! cargo run --release -p load -- run --level 2 --target http://127.0.0.1:8080 --target http://127.0.0.1:8081
//! ```
//!
//! **What the next level fixes.** Level 3 moves the waiting out of
//! PostgreSQL: buyers queue on a lock in Redis, holding no database
//! connection until it is their turn, at the price of a second service and a
//! lock that can expire under a slow holder.

pub mod advisory;
pub mod atomic;
pub mod nowait;
pub mod optimistic;
pub mod pessimistic;
pub mod retry;
pub mod serializable;
pub mod transaction;

use std::time::Duration;

use clap::Parser;
use ticket_core::server::{strategy_parser, ServerArgs};
use ticket_core::strategy::{Expected, StrategyEntry};
use ticket_core::RunningServer;

use crate::retry::{Backoff, RetryPolicy};

/// Level 2's own settings, shared by all its strategies (each uses the ones
/// that concern it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level2Config {
    /// `optimistic` and `serializable`: fresh attempts after a lost race
    /// before answering 503 busy. Zero fails fast.
    pub max_retries: u32,
    /// `pessimistic`: the longest wait for the ticket's row lock, in
    /// milliseconds, set as PostgreSQL's `lock_timeout` and
    /// `statement_timeout`; `advisory`: the same for its named lock, as
    /// `lock_timeout`. Zero waits forever.
    pub lock_timeout_ms: u64,
    /// The ceiling of the first retry's random pause, in milliseconds.
    pub backoff_base_ms: u64,
    /// The longest pause between two retries, in milliseconds.
    pub backoff_max_ms: u64,
    /// Every strategy: how long a transaction may sit idle between two
    /// statements before PostgreSQL ends it and frees its locks
    /// (`idle_in_transaction_session_timeout`), in milliseconds. Zero is
    /// no limit.
    pub idle_in_transaction_timeout_ms: u64,
}

/// Default for `--max-retries`.
pub const DEFAULT_MAX_RETRIES: u32 = 10;
/// Default for `--lock-timeout-ms`.
pub const DEFAULT_LOCK_TIMEOUT_MS: u64 = 1_000;
/// Default for `--backoff-base-ms`.
pub const DEFAULT_BACKOFF_BASE_MS: u64 = 2;
/// Default for `--backoff-max-ms`.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 50;
/// Default for `--idle-in-transaction-timeout-ms`: far above any pause a
/// sale makes on purpose (the lessons' think times are 20 ms to 3 s).
pub const DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 5_000;

impl Default for Level2Config {
    fn default() -> Self {
        Self {
            max_retries: DEFAULT_MAX_RETRIES,
            lock_timeout_ms: DEFAULT_LOCK_TIMEOUT_MS,
            backoff_base_ms: DEFAULT_BACKOFF_BASE_MS,
            backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
            idle_in_transaction_timeout_ms: DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS,
        }
    }
}

impl Level2Config {
    /// How the retrying strategies retry.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            backoff: Backoff::full_jitter(
                Duration::from_millis(self.backoff_base_ms),
                Duration::from_millis(self.backoff_max_ms),
            ),
        }
    }
}

/// Level 2's strategies: every one correct, on one server or many.
pub const STRATEGIES: &[StrategyEntry<Level2Config>] = &[
    StrategyEntry {
        name: "optimistic",
        about: "read stock and version, write WHERE version = the one read, retry when it changed",
        expected: Expected::CORRECT,
        build: optimistic::build,
    },
    StrategyEntry {
        name: "pessimistic",
        about: "SELECT ... FOR NO KEY UPDATE: lock the ticket row, then read-check-write; wait at most --lock-timeout-ms",
        expected: Expected::CORRECT,
        build: pessimistic::build,
    },
    StrategyEntry {
        name: "nowait",
        about: "SELECT ... FOR NO KEY UPDATE NOWAIT: lock the row if free, else 503 busy at once",
        expected: Expected::CORRECT,
        build: nowait::build,
    },
    StrategyEntry {
        name: "atomic",
        about: "one UPDATE ... SET stock = stock - 1 WHERE stock > 0, with the order in the same transaction",
        expected: Expected::CORRECT,
        build: atomic::build,
    },
    StrategyEntry {
        name: "serializable",
        about: "the naive read-check-write under SERIALIZABLE isolation, retried on SQLSTATE 40001",
        expected: Expected::CORRECT,
        build: serializable::build,
    },
    StrategyEntry {
        name: "advisory",
        about: "pg_advisory_xact_lock(ticket id): a named lock (MySQL's GET_LOCK) held until COMMIT",
        expected: Expected::CORRECT,
        build: advisory::build,
    },
];

/// The race window the tour and the tests use: the same 20 ms that makes
/// Levels 0 and 1 oversell every time, so that Level 2's strategies are shown
/// correct *despite* it, and what each pays for it shows up in the timings.
pub const RACE_THINK_TIME_MS: u64 = 20;

/// `level2`: a ticket server whose concurrency control lives in PostgreSQL.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "level2",
    version,
    about = "Level 2 of ticket-rush: concurrency control in PostgreSQL, correct on any number of servers",
    long_about = "Level 2 of ticket-rush: sells tickets with the concurrency control inside PostgreSQL, \
        the one thing every server shares.\n\n\
        Pick a strategy: an optimistic version check, a row lock that waits (pessimistic) or \
        refuses at once (nowait), one conditional UPDATE (atomic), SERIALIZABLE isolation, or a named advisory lock. \
        Run two servers on one database: still exactly 100 tickets sold."
)]
pub struct Cli {
    /// Where to listen and which database to use.
    #[command(flatten)]
    pub server: ServerArgs,

    /// How PostgreSQL keeps buyers from selling the same ticket twice.
    #[arg(long, default_value = "atomic", value_parser = strategy_parser(STRATEGIES))]
    pub strategy: String,

    /// optimistic and serializable: how many times a buyer who lost a race
    /// (someone else changed the ticket first) starts over before being
    /// answered 503 busy. 0 fails fast: the first lost race is a 503, and
    /// the buyer clicks again.
    #[arg(long, default_value_t = DEFAULT_MAX_RETRIES, value_name = "N")]
    pub max_retries: u32,

    /// pessimistic and advisory: how long a buyer waits in PostgreSQL's
    /// queue for the ticket's lock before being answered 503 busy (set as
    /// PostgreSQL's lock_timeout; pessimistic also sets statement_timeout,
    /// which bounds a wait that re-queues each time the row changes). 0
    /// waits forever.
    #[arg(long, default_value_t = DEFAULT_LOCK_TIMEOUT_MS, value_name = "MS")]
    pub lock_timeout_ms: u64,

    /// optimistic and serializable: the longest random pause before the
    /// first retry. Each further retry may wait up to twice as long.
    #[arg(long, default_value_t = DEFAULT_BACKOFF_BASE_MS, value_name = "MS")]
    pub backoff_base_ms: u64,

    /// optimistic and serializable: the longest pause between two retries,
    /// however many there were.
    #[arg(long, default_value_t = DEFAULT_BACKOFF_MAX_MS, value_name = "MS")]
    pub backoff_max_ms: u64,

    /// Every strategy: how long a sale's transaction may sit idle between
    /// two statements, holding its locks, before PostgreSQL ends it and the
    /// next buyer gets the lock (idle_in_transaction_session_timeout). A
    /// stalled holder is bounded by nothing else. Must be longer than
    /// --think-time-ms. 0 is no limit.
    #[arg(long, default_value_t = DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS, value_name = "MS")]
    pub idle_in_transaction_timeout_ms: u64,
}

impl Cli {
    /// The Level 2 settings this command line describes.
    pub fn config(&self) -> Level2Config {
        Level2Config {
            max_retries: self.max_retries,
            lock_timeout_ms: self.lock_timeout_ms,
            backoff_base_ms: self.backoff_base_ms,
            backoff_max_ms: self.backoff_max_ms,
            idle_in_transaction_timeout_ms: self.idle_in_transaction_timeout_ms,
        }
    }

    /// Starts the server this command line describes.
    pub async fn start(self) -> anyhow::Result<RunningServer> {
        let config = self.config();
        ticket_core::server::start(self.server, "level2", STRATEGIES, &self.strategy, config).await
    }
}

//! # Level 1: process-local locks
//!
//! **The problem.** Level 0 oversells because two buyers run
//! read-check-write at the same time. The obvious fix: let only one buyer at
//! a time run it.
//!
//! **The mechanism.** A lock in the server's memory around the *whole* sale:
//! read, check, write **and commit**. Three flavours, one file each:
//!
//! - [`mutex`]: one `tokio::sync::Mutex` for the whole server. Simple and
//!   correct on one server; every purchase of every ticket waits in one line.
//! - [`rwlock`]: a `tokio::sync::RwLock`. Buyers who only need to *look*
//!   (is anything left?) share the read lock; a buyer who writes takes the
//!   write lock. In a rush almost everyone writes, so it behaves like the
//!   mutex until the ticket sells out; after that, the "sold out" answers run
//!   in parallel.
//! - [`per_ticket`]: one mutex per ticket, so a rush on one concert does not
//!   queue buyers of another.
//!
//! Two rules the code follows, and why:
//!
//! 1. **The lock must cover the commit.** Release it after writing but before
//!    `COMMIT` and the next buyer reads the old stock: the race is back.
//! 2. **No `std::sync::Mutex` across `.await`.** Holding a std guard across
//!    `.await` does not block the holder's own thread: the holder yields at
//!    its `.await` like any task. The harm lands on the *other* tasks: each
//!    one that calls `lock()` meanwhile blocks the runtime thread it runs on,
//!    and once every worker thread is blocked that way (two here), no thread
//!    is left to resume the holder, which would release the guard: deadlock.
//!    Before it comes to that, the compiler usually refuses: a
//!    `std::sync::MutexGuard` is `!Send`, and `tokio::spawn` and axum
//!    handlers need `Send` futures, so most such code does not compile
//!    (shown below). Where it does (a future that need not be `Send`, or a
//!    `parking_lot` guard with its `send_guard` feature), the workspace's
//!    `clippy::await_holding_lock = "deny"` catches it. Tokio's locks are
//!    built to be held across `.await`: waiting for one parks the task and
//!    frees the thread.
//!
//! The `!Send` guard at work: this does not compile, because the spawned
//! future holds a `std::sync::MutexGuard` across an `.await`.
//!
//! ```compile_fail
//! let stock = std::sync::Arc::new(std::sync::Mutex::new(100));
//! tokio::spawn(async move {
//!     let mut guard = stock.lock().unwrap();
//!     tokio::task::yield_now().await; // the guard is held across this await
//!     *guard -= 1;
//! });
//! ```
//!
//! The same sale with Tokio's mutex compiles and is fine:
//!
//! ```no_run
//! # async fn sell() {
//! let stock = std::sync::Arc::new(tokio::sync::Mutex::new(100));
//! tokio::spawn(async move {
//!     let mut guard = stock.lock().await;
//!     tokio::task::yield_now().await;
//!     *guard -= 1;
//! });
//! # }
//! ```
//!
//! **What it guarantees.** On one server: exactly `tickets` orders, stock 0,
//! no lost update, however wide the race window (`--think-time-ms`).
//!
//! **What still breaks.** The lock lives in one process's memory. Start a
//! second server on another port, sharing the same database, and each server
//! happily lets one buyer in at a time: *two* buyers at once, one per server,
//! and the Level 0 race returns between them. The load tool shows it:
//!
//! ```text
//! cargo run --release -p load -- run --level 1 --strategy mutex --servers 1 --think-time-ms 20   # correct
//! cargo run --release -p load -- run --level 1 --strategy mutex --servers 2 --think-time-ms 20 --expect oversold
//! ```
//!
//! or by hand, in two terminals (same `DATABASE_URL`):
//!
//! ```text
//! cargo run --release -p level1 -- --port 8080 --strategy mutex --think-time-ms 20
//! cargo run --release -p level1 -- --port 8081 --strategy mutex --think-time-ms 20
//! cargo run --release -p load -- run --level 1 --target http://127.0.0.1:8080 --target http://127.0.0.1:8081 --expect oversold
//! ```
//!
//! **What the next level fixes.** Level 2 moves the lock into the one thing
//! every server shares: the database.

pub mod mutex;
pub mod per_ticket;
pub mod rwlock;

use clap::Parser;
use ticket_core::server::{strategy_parser, ServerArgs};
use ticket_core::strategy::{Expected, StrategyEntry};
use ticket_core::{RunningServer, Verdict};

/// Correct on one server, oversold on two: the point of this level.
const ONE_PROCESS_ONLY: Expected = Expected {
    one_server: Verdict::Correct,
    two_servers: Verdict::Oversold,
};

/// Level 1's strategies.
pub const STRATEGIES: &[StrategyEntry<()>] = &[
    StrategyEntry {
        name: "mutex",
        about: "one tokio Mutex around the whole sale, for every ticket",
        expected: ONE_PROCESS_ONLY,
        build: mutex::build,
    },
    StrategyEntry {
        name: "rwlock",
        about: "a tokio RwLock: shared to look at the stock, exclusive to sell",
        expected: ONE_PROCESS_ONLY,
        build: rwlock::build,
    },
    StrategyEntry {
        name: "per-ticket",
        about: "one tokio Mutex per ticket, found in a map",
        expected: ONE_PROCESS_ONLY,
        build: per_ticket::build,
    },
];

/// The race window the tour and the tests use, so that two servers oversell
/// every time.
pub const RACE_THINK_TIME_MS: u64 = 20;

/// `level1`: a ticket server guarded by a lock in its own memory.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "level1",
    version,
    about = "Level 1 of ticket-rush: process-local locks, correct on one server, oversold on two",
    long_about = "Level 1 of ticket-rush: sells tickets under a lock held in this server's memory.\n\n\
        One server: correct. Two servers on one database: each has its own lock, and they \
        oversell between them. Run two (ports 8080 and 8081) to see it."
)]
pub struct Cli {
    /// Where to listen and which database to use.
    #[command(flatten)]
    pub server: ServerArgs,

    /// Which lock guards the sale.
    #[arg(long, default_value = "mutex", value_parser = strategy_parser(STRATEGIES))]
    pub strategy: String,
}

impl Cli {
    /// Starts the server this command line describes.
    pub async fn start(self) -> anyhow::Result<RunningServer> {
        ticket_core::server::start(self.server, "level1", STRATEGIES, &self.strategy, ()).await
    }
}

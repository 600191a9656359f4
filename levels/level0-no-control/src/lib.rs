//! # Level 0: no concurrency control
//!
//! **The problem.** A sale is three steps: read the stock, check that some is
//! left, write `stock - 1` and record the order. Nothing stops two buyers from
//! running those steps at the same time. Both read `stock = 65`, both see a
//! ticket left, both write `64`, both get an order. One ticket was sold twice
//! and the stock only went down once: a *lost update*. With 1000 buyers and
//! 100 tickets you end with far more than 100 orders while the stock column
//! still reads a comfortable number.
//!
//! **The mechanism.** None, on purpose: see [`naive::read_check_write`].
//! `--think-time-ms` pauses between the read and the write. That pause is the
//! race window; widening it turns "oversells now and then" into "oversells
//! every time", which is what a lesson (and a test) needs.
//!
//! **What it guarantees.** Only what the schema guarantees: one order per
//! (ticket, buyer), because of `UNIQUE (ticket_id, user_id)`; a second
//! purchase by the same buyer is answered 409 `already_purchased`. And the
//! stock never goes negative (a CHECK), which does not help: lost updates
//! never push it below zero, they just leave it too high.
//!
//! **What still breaks.** Everything else. Run it:
//!
//! ```text
//! cargo run --release -p level0 -- --port 8080 --think-time-ms 20
//! cargo run --release -p load -- run --level 0 --servers 1 --buyers 1000 --tickets 100 --think-time-ms 20 --expect oversold
//! ```
//!
//! **What the next level fixes.** Level 1 puts a lock around the three steps,
//! so only one buyer at a time runs them, on one server.

pub mod naive;

use clap::Parser;
use ticket_core::server::{strategy_parser, ServerArgs};
use ticket_core::strategy::{Expected, StrategyEntry};
use ticket_core::{RunningServer, Verdict};

/// Level 0's strategies: just one, and it is wrong.
pub const STRATEGIES: &[StrategyEntry<()>] = &[StrategyEntry {
    name: "naive",
    about: "read stock, then write stock-1: no control at all (oversells)",
    expected: Expected {
        one_server: Verdict::Oversold,
        two_servers: Verdict::Oversold,
    },
    build: naive::build,
}];

/// The race window the tour and the tests use to make Level 0 fail on demand.
pub const RACE_THINK_TIME_MS: u64 = 20;

/// `level0`: a ticket server with no concurrency control.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "level0",
    version,
    about = "Level 0 of ticket-rush: sells tickets with no concurrency control, so it oversells",
    long_about = "Level 0 of ticket-rush: sells tickets with no concurrency control.\n\n\
        Every purchase reads the stock, checks it, and writes stock-1 with nothing in \
        between to stop another buyer doing the same. Point the load tool at it to see \
        1000 buyers get far more than 100 tickets."
)]
pub struct Cli {
    /// Where to listen and which database to use.
    #[command(flatten)]
    pub server: ServerArgs,

    /// How to sell.
    #[arg(long, default_value = "naive", value_parser = strategy_parser(STRATEGIES))]
    pub strategy: String,
}

impl Cli {
    /// Starts the server this command line describes.
    pub async fn start(self) -> anyhow::Result<RunningServer> {
        ticket_core::server::start(self.server, "level0", STRATEGIES, &self.strategy, ()).await
    }
}

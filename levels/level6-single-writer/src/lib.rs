//! # Level 6: the single writer
//!
//! TODO lesson

pub mod batch;
pub mod changelog;
pub mod cli;
pub mod decider;
pub mod engine;
pub mod http;
pub mod log;
pub mod partitioned;
pub mod replies;
pub mod schema;
pub mod sell;
pub mod state;
pub mod state_store;

use std::time::Duration;

use ticket_core::strategy::{Expected, StrategyEntry};
use ticket_core::StrategyContext;

pub use crate::cli::Cli;
use crate::engine::{Engine, EngineSettings, Mode};

/// Level 6's strategies: both correct on any number of servers.
pub const STRATEGIES: &[StrategyEntry<Level6Config>] = &[
    StrategyEntry {
        name: "partitioned",
        about: "one decider per partition of a Redis stream log, fenced lease, decides from memory in order; a new owner loads tickets from PostgreSQL",
        expected: Expected::CORRECT,
        build: partitioned::build,
    },
    StrategyEntry {
        name: "state-store",
        about: "the same, and the decider's state is a compacted changelog stream a new owner replays",
        expected: Expected::CORRECT,
        build: state_store::build,
    },
];

/// The think time the tour uses: none. Here `--think-time-ms` is a pause
/// between deciding a batch and writing it, and there is no race for it
/// to widen (nobody else decides these tickets); it would only slow the
/// one decider of the partition, batch after batch. The fault tests use
/// it as the window to kill or stop a decider in.
pub const RACE_THINK_TIME_MS: u64 = 0;

/// Level 6's own settings.
#[derive(Debug, Clone)]
pub struct Level6Config {
    /// The Redis every server shares.
    pub redis_url: String,
    /// The database's Redis namespace ([`schema::namespace`]).
    pub namespace: String,
    /// How many partitions.
    pub partitions: u32,
    /// The most requests per batch.
    pub batch_size: usize,
    /// How long a handler waits before 202.
    pub reply_timeout: Duration,
    /// A partition's lease.
    pub lease: Duration,
}

/// Starts the engine for `mode` and names it as a strategy.
pub fn strategy(
    context: &StrategyContext,
    config: &Level6Config,
    mode: Mode,
) -> anyhow::Result<sell::Strategy> {
    let settings = EngineSettings {
        mode,
        partitions: config.partitions,
        batch_size: config.batch_size,
        reply_timeout: config.reply_timeout,
        lease: config.lease,
        think: context.think_time,
    };
    let engine = Engine::start(
        context.pool.clone(),
        &config.redis_url,
        &config.namespace,
        context.instance.clone(),
        settings,
    )?;
    Ok(sell::Strategy { engine, mode })
}

//! # Level 6: the single writer
//!
//! **The problem.** Every level so far lets a thousand buyers *compete*
//! for one ticket and then referees the fight: a lock (Levels 1 to 3) makes
//! them take turns, a conditional UPDATE or a Lua script (Levels 2 and 4)
//! lets one win each round. Refereeing costs: lock waits, retries, busy
//! answers, a round trip per buyer to whoever holds the truth. What if
//! nobody competed at all?
//!
//! **The mechanism.** Put the buyers in a line first, then let one worker
//! serve the line. Every purchase is appended to a log, and the log is split
//! into partitions by ticket (`hash(ticket) mod --partitions`), so every
//! request for one ticket lands in one Redis stream, in arrival order. Each
//! partition has exactly one *decider* at a time, across all servers: the
//! holder of the partition's lease ([`decider`], Level 3's lock). The
//! decider keeps each ticket's stock and buyers in memory and decides
//! request after request ([`state::decide`]): no lock, no retry, no
//! conflict, because nobody else decides these tickets. It writes each
//! batch of decisions to PostgreSQL in one transaction ([`batch`]), and
//! only after COMMIT acknowledges the entries and answers the waiting
//! servers ([`replies`]). A buyer whose answer takes too long gets 202 with
//! `Location: /requests/{id}` to poll ([`http`]): never a guess.
//!
//! | piece | file | Kafka's name for it |
//! | --- | --- | --- |
//! | partition streams, `hash(ticket) mod P` | [`log`] | a topic's partitions, the record key |
//! | the consumer group `deciders` | [`decider`] | the consumer group |
//! | the partition's lease (Level 3's lock, watchdog) | [`decider`] | the group coordinator's assignment |
//! | the members set; a server above `ceil(P / servers)` gives leases back | [`members`] | a consumer-group rebalance |
//! | the fencing token, checked in the batch's transaction | [`batch`] | the producer epoch, zombie fencing |
//! | XACK after COMMIT; XAUTOCLAIM on takeover | [`decider`] | committing offsets after processing |
//! | `level6_requests` (request id, answer) | [`batch`] | exactly-once: idempotent processing |
//! | the compacted changelog (`state-store`) | [`changelog`] | a state store's compacted changelog topic |
//!
//! The two strategies differ in how a new owner gets its state:
//! `partitioned` ([`partitioned`]) loads each ticket from PostgreSQL the
//! first time it sees it; `state-store` ([`state_store`]) replays a
//! changelog stream the decider writes after every COMMIT, compacted to one
//! record per ticket and per buyer. `level6 takeover` ([`takeover`])
//! measures both against the size of the state.
//!
//! **What it guarantees.** On any number of servers sharing one Redis and
//! one database: never more buyers than units, one unit per buyer, and a
//! 201 only for an order committed in PostgreSQL. A decider that dies is
//! replaced within one lease; the entries it had read are claimed by the
//! next owner, and a request already decided (the dead one committed, then
//! died before XACK) finds its answer in `level6_requests` and is answered
//! again, not decided again. A decider that *stalls* past its lease (a
//! frozen process) is a zombie: it wakes up believing it owns the
//! partition, and its batch is refused by PostgreSQL, because the new
//! owner's fencing token is in `level6_partitions` and the batch's first
//! statement checks it. The memory is a cache: every batch checks each
//! ticket's (version, stock) against its row and reloads what changed
//! (a reset, for instance).
//!
//! **What it does not guarantee.** A partition is one line with one
//! server behind it: a hot ticket is one partition is one core, however
//! many servers you add (more partitions spread *tickets*, never one
//! ticket). A takeover costs a lease of silence on that partition. A
//! request lost with Redis (restarted without persistence after it was
//! appended, before it was read) is never decided: its buyer's poll says
//! pending until they try again (with the same Idempotency-Key, safely).
//! An Idempotency-Key reused for another ticket is refused when the first
//! use is already recorded; two such uses at the same instant both count.
//!
//! Run it:
//!
//! ```text
//! cargo run --release -p load -- run --level 6 --strategy partitioned --servers 2 --buyers 1000 --tickets 100
//! cargo run --release -p load -- tour --levels 2,4,6
//! cargo run --release -p level6 -- takeover --buyers 1000,10000,100000
//! ```
//!
//! or by hand, in three terminals (same `DATABASE_URL` and `REDIS_URL`):
//!
//! ```text
//! cargo run --release -p level6 -- --port 8080
//! cargo run --release -p level6 -- --port 8081
//! curl -s localhost:8081/partitions   # who decides what
//! ```
//!
//! The lesson, with the measured comparison, is docs/09-single-writer.md.
//!
//! **What comes next.** Splitting one hot ticket needs a different idea:
//! sell it in slices (several sub-tickets, each its own partition), or
//! accept that one line, served in batches, is already faster than any
//! amount of refereeing.

pub mod batch;
pub mod changelog;
pub mod cli;
pub mod context;
pub mod decider;
pub mod engine;
pub mod http;
pub mod log;
pub mod members;
pub mod partitioned;
pub mod replies;
pub mod schema;
pub mod sell;
pub mod state;
pub mod state_store;
pub mod takeover;

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
    /// Whether a server above its fair share of the partitions gives some
    /// up when another server joins ([`members`]).
    pub rebalance: bool,
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
        rebalance: config.rebalance,
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

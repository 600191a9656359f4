//! # Level 4: no lock at all
//!
//! **The problem.** Levels 2 and 3 are correct, and every sale of one ticket
//! still passes through one PostgreSQL row, one buyer at a time: Level 2
//! queues buyers on the row lock, Level 3 queues them on a Redis lock and
//! then takes the row anyway. The queue is the throughput. And a buyer told
//! "sold out" has cost a database round trip like everyone else. One of the
//! original projects compared five strategies and shipped this one: decide
//! the sale in Redis, answer at once, and write the order to the database
//! *afterwards*. What does "sold" mean when Redis has it and PostgreSQL does
//! not yet?
//!
//! **The mechanism.** Three parts:
//!
//! | part | file | in one sentence |
//! | --- | --- | --- |
//! | decide | [`redis_lua`], `lua/purchase.lua` | one script per purchase: refuse a buyer already in the ticket's buyers (before touching stock), refuse when stock is 0, else decrement, record the buyer, take an order id and `XADD` the order to a stream, atomically |
//! | load | [`load`], `lua/load.lua` | a sale's stock goes from PostgreSQL into Redis exactly once per sale (an *epoch* decided under the ticket's row lock); [`reset`] fences Redis before PostgreSQL commits a reset, so the old sale sells nothing after it; a reset made in PostgreSQL alone is announced (`NOTIFY`, [`listen`]) |
//! | persist | [`persist`] | a Redis Streams consumer group: batches of `INSERT ... ON CONFLICT DO NOTHING` plus the matching stock decrement, `XACK` only after COMMIT, `XAUTOCLAIM` for a dead worker's entries, exponential backoff, dead letters with the reason |
//!
//! Cancelling an order ([`cancel`]) puts its unit back in both stores,
//! PostgreSQL first, whether or not the worker has written the order yet.
//!
//! And two tools: [`reconcile`] (`level4 reconcile`) compares the two stores
//! and repairs drift, and [`drain`] tells the load tool when PostgreSQL has
//! caught up, so that the run is judged from the database as at every
//! level.
//!
//! **Where the worker runs.** In every server by default, and as
//! `level4 persist` on its own (with the servers started `--no-persist`).
//! In the servers, persistence needs nothing more to deploy and grows with
//! the number of servers; the consumer group spreads entries over them and
//! a stopped server's entries are claimed by the others. On its own, it
//! keeps PostgreSQL work off the machines that answer buyers and can be
//! scaled, restarted or paused (during a database outage) independently:
//! the original project's Kafka consumers were separate services. The code
//! is the same; only where it is started differs. `--persist-max-rate`
//! caps a worker's writes per second (peak shaving: Redis absorbs the
//! rush, PostgreSQL sees a steady rate, the lag grows until it is over).
//!
//! **Order ids.** The script hands them out: the clock in microseconds, or
//! the last id + 1 when the clock has not moved past it. Ids stay new even
//! if Redis forgets its last second (the clock has moved on when it comes
//! back), and they sit far above the ids PostgreSQL's BIGSERIAL gives the
//! other levels in the same table (which would need 10^15 inserts to reach
//! them). The row is inserted with that id, the one the buyer was answered
//! with; the sequence is never touched.
//!
//! **What it guarantees.** On any number of servers sharing one Redis and one
//! database: never more buyers than units (Redis decides alone, one script at
//! a time), one unit per buyer, and every 201 is a buyer Redis recorded and
//! an order on the stream.
//! Once the stream is drained: exactly that many order rows, none twice
//! (the insert is idempotent, so redelivery is harmless), and PostgreSQL's
//! stock equal to total minus orders. PostgreSQL may be down during the
//! sale of a ticket already loaded into Redis: buyers without an
//! Idempotency-Key are answered as usual and the orders land when it
//! returns (a keyed request is claimed in PostgreSQL first, and loading a
//! sale needs it: those get 503). A sold-out ticket never touches
//! PostgreSQL.
//!
//! **What it does not guarantee.** A 201 means *decided*, not *recorded*:
//! until the worker has committed it, the order exists only in Redis's
//! memory. If Redis loses that memory, the sale is gone from both stores.
//! How much can be lost is Redis's `appendfsync`: `always` loses nothing
//! answered (each write reaches the disk before the answer), `everysec` up
//! to a second of sales on a machine crash, no persistence everything not
//! yet persisted. With RDB snapshots only, Redis does not even come back
//! empty: it restarts from an older snapshot that still holds the current
//! epoch, with its stock too high and its buyers missing; a replica promoted
//! after a failover (replication is asynchronous) is in the same state. Left
//! alone, it would re-sell units the worker had already persisted. So every
//! sale in Redis is signed with the `run_id` of the Redis process that
//! loaded it, the script sells only from a sale signed by the process it
//! runs in, and an unsigned one is first checked against PostgreSQL: its
//! orders are put back among the buyers and the stock is recomputed
//! ([`load`]). Redis must run with `maxmemory-policy noeviction` (an evicted
//! key is a sale forgotten); the server refuses to start otherwise.
//! `reconcile` finds and repairs the rest of the drift that *is* visible;
//! sales lost from both stores (answered, never persisted) are visible only
//! to the buyers who hold their 201. PostgreSQL lags Redis by the persistence lag; reading
//! stock from PostgreSQL (`GET /tickets/{id}`) shows the recorded sale, not
//! the decided one. Redis is now the one place every sale depends on: when
//! it is down, nothing sells (503). The measured durability window and
//! throughput are in `docs/05-lock-free.md`.
//!
//! Run it:
//!
//! ```text
//! cargo run --release -p load -- run --level 4 --servers 2 --buyers 1000 --tickets 100
//! cargo run --release -p load -- run --level 4 --servers 2 --duration 10 --concurrency 64
//! ```
//!
//! or by hand, in three terminals (same `DATABASE_URL` and `REDIS_URL`):
//!
//! ```text
//! cargo run --release -p level4 -- --port 8080 --no-persist
//! cargo run --release -p level4 -- --port 8081 --no-persist
//! cargo run --release -p level4 -- persist
//! cargo run --release -p load -- run --level 4 --target http://127.0.0.1:8080 --target http://127.0.0.1:8081
//! cargo run --release -p level4 -- reconcile
//! ```
//!
//! **Keys and cancels.** An idempotency key is written with the sale, in
//! the same script, so that a buyer whose 201 got lost (with its server, or
//! in a Redis reply that timed out) asks again and gets the same order, not
//! `already_purchased`. A cancel puts the unit back in both stores
//! ([`cancel`]).
//!
//! **What comes next.** A waiting room in front of the rush, and seat holds
//! that expire.

pub mod cancel;
pub mod cli;
pub mod drain;
pub mod keys;
pub mod listen;
pub mod load;
pub mod persist;
pub mod reconcile;
pub mod redis_lua;
pub mod reset;
pub mod store;

use std::sync::Arc;

use ticket_core::services::Redis;
use ticket_core::strategy::{Expected, StrategyEntry};

pub use crate::cli::{Cli, Command, PersistCommand, ReconcileCommand, StoreArgs};
use crate::persist::PersistArgs;

/// Level 4's strategies: one, and it is correct once drained.
pub const STRATEGIES: &[StrategyEntry<Level4Config>] = &[StrategyEntry {
    name: "redis-lua",
    about: "one Lua script decides each sale in Redis and queues the order on a stream; a consumer group persists it",
    expected: Expected::CORRECT,
    build: redis_lua::build,
}];

/// The think time the tour uses: the 20 ms window that makes Levels 0 and 1
/// oversell. Here it only delays each buyer before the script, in parallel;
/// it cannot open a race, because the decision has no gap.
pub const RACE_THINK_TIME_MS: u64 = 20;

/// Level 4's own settings.
#[derive(Debug, Clone)]
pub struct Level4Config {
    /// The Redis every server of the sale shares.
    pub redis_url: String,
    /// Whether this server runs a persistence worker.
    pub run_worker: bool,
    /// How the worker works.
    pub persist: PersistArgs,
    /// A throwaway Redis started because no URL was given; kept running for
    /// as long as the server (which holds this config) lives.
    pub(crate) throwaway_redis: Option<Arc<Redis>>,
}

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
//! **The mechanism.** Three parts, one file each:
//!
//! | part | file | in one sentence |
//! | --- | --- | --- |
//! | decide | [`redis_lua`], `lua/purchase.lua` | one script per purchase: refuse a buyer already in the ticket's buyers (before touching stock), refuse when stock is 0, else decrement, record the buyer, take an order id and `XADD` the order to a stream, atomically |
//! | load | [`load`], `lua/load.lua` | a sale's stock goes from PostgreSQL into Redis exactly once per sale (an *epoch* decided under the ticket's row lock); a reset is announced by PostgreSQL (`NOTIFY`, [`listen`]) |
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
//! sale: buyers are answered as usual and the orders land when it returns.
//! A sold-out ticket never touches PostgreSQL.
//!
//! **What it does not guarantee.** A 201 means *decided*, not *recorded*:
//! until the worker has committed it, the order exists only in Redis's
//! memory. If Redis loses that memory, the sale is gone from both stores.
//! How much can be lost is Redis's `appendfsync`: `always` loses nothing
//! answered (each write reaches the disk before the answer), `everysec` up
//! to a second of sales on a machine crash, no persistence everything not
//! yet persisted. `reconcile` finds and repairs the drift that *is* visible
//! (orders PostgreSQL has and Redis forgot, which would otherwise be sold
//! again); sales lost from both stores are visible only to the buyers who
//! hold their 201. PostgreSQL lags Redis by the persistence lag; reading
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
pub mod drain;
pub mod keys;
pub mod listen;
pub mod load;
pub mod persist;
pub mod reconcile;
pub mod redis_lua;
pub mod reset;
pub mod store;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use ticket_core::server::{strategy_parser, ServerArgs};
use ticket_core::services::Redis;
use ticket_core::strategy::{Expected, StrategyEntry};
use ticket_core::{RunningServer, TicketId};

use crate::persist::{PersistArgs, Worker};
use crate::store::{RedisConn, SaleStore, RESPONSE_TIMEOUT};

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
    throwaway_redis: Option<Arc<Redis>>,
}

/// `level4`: a ticket server that decides every sale in Redis.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "level4",
    version,
    args_conflicts_with_subcommands = true,
    about = "Level 4 of ticket-rush: sales decided by one Lua script in Redis, persisted to PostgreSQL through a Redis stream",
    long_about = "Level 4 of ticket-rush: no lock at all. One Lua script in Redis decides each sale \
        (a buyer already holding the ticket is refused first, then a sold-out ticket, else one unit \
        is taken) and queues the order on a Redis stream; the buyer is answered at once. A consumer \
        group writes the orders to PostgreSQL afterwards, in batches, idempotently.\n\n\
        Without a subcommand it serves the ticket API (and runs a persistence worker unless \
        --no-persist). `level4 persist` runs only a worker; `level4 reconcile` compares Redis with \
        PostgreSQL and reports or repairs drift."
)]
pub struct Cli {
    /// Run a persistence worker or a reconciliation instead of a server.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Where to listen and which database to use.
    #[command(flatten)]
    pub server: ServerArgs,

    /// How to sell (there is one way here).
    #[arg(long, default_value = "redis-lua", value_parser = strategy_parser(STRATEGIES))]
    pub strategy: String,

    /// Redis, which holds the stock and decides every sale, for example
    /// redis://127.0.0.1:6379. Every server of one sale must use the same
    /// Redis. Without it, the server starts a private throwaway Redis (fine
    /// for trying one server, useless for two).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Do not run a persistence worker in this server: orders wait on the
    /// stream until some `level4 persist` (or another server) writes them.
    #[arg(long)]
    pub no_persist: bool,

    /// How this server's persistence worker works.
    #[command(flatten)]
    pub persist: PersistArgs,
}

/// What `level4` can do besides serving.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Run only a persistence worker: read sales from the Redis stream and
    /// write them to PostgreSQL, until Ctrl-C.
    Persist(PersistCommand),
    /// Compare Redis (stock, buyers, stream) with PostgreSQL (orders,
    /// stock), report what disagrees, and with --repair fix what can be
    /// fixed. Exits 1 when drift remains.
    Reconcile(ReconcileCommand),
}

/// Where the two stores are, for the subcommands.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// The PostgreSQL the servers use.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// The Redis the servers use.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: String,
}

/// `level4 persist`.
#[derive(Args, Debug, Clone)]
pub struct PersistCommand {
    /// The stores.
    #[command(flatten)]
    pub stores: StoreArgs,

    /// This worker's name in the consumer group. Default: unique per
    /// process. Restarting with the same name picks up what it held.
    #[arg(long)]
    pub consumer: Option<String>,

    /// How the worker works.
    #[command(flatten)]
    pub persist: PersistArgs,
}

/// `level4 reconcile`.
#[derive(Args, Debug, Clone)]
pub struct ReconcileCommand {
    /// The stores.
    #[command(flatten)]
    pub stores: StoreArgs,

    /// Only this ticket (repeatable). Default: every ticket Level 4 loaded.
    #[arg(long = "ticket", value_name = "ID")]
    pub tickets: Vec<i64>,

    /// Fix what can be fixed: put forgotten orders back into Redis and
    /// recompute its stock, queue sales nobody will persist, recompute
    /// PostgreSQL's stock, reload a stale sale.
    #[arg(long)]
    pub repair: bool,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl Cli {
    /// Starts the server this command line describes (without a
    /// subcommand).
    pub async fn start(self) -> anyhow::Result<RunningServer> {
        anyhow::ensure!(
            self.command.is_none(),
            "`level4 persist` and `level4 reconcile` do not start a server"
        );
        let (redis_url, throwaway_redis) = match self.redis_url {
            Some(url) => (url, None),
            None => {
                tracing::warn!(
                    "no --redis-url or REDIS_URL: starting a private throwaway Redis; \
                     a second server would not share it"
                );
                let redis = tokio::task::spawn_blocking(Redis::throwaway)
                    .await
                    .context("starting a throwaway Redis")??;
                (redis.url().to_owned(), Some(Arc::new(redis)))
            }
        };
        let config = Level4Config {
            redis_url,
            run_worker: !self.no_persist,
            persist: self.persist,
            throwaway_redis,
        };
        ticket_core::server::start(self.server, "level4", STRATEGIES, &self.strategy, config).await
    }

    /// Does what the command line says: serve until Ctrl-C, persist until
    /// Ctrl-C, or reconcile once.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command.clone() {
            None => {
                self.start().await?.run_until_signal().await?;
                Ok(ExitCode::SUCCESS)
            }
            Some(Command::Persist(command)) => command.run().await,
            Some(Command::Reconcile(command)) => command.run().await,
        }
    }
}

impl StoreArgs {
    /// Connects to both (applying the migrations, which the namespace needs).
    pub async fn open(&self) -> anyhow::Result<SaleStore> {
        let pool =
            ticket_core::db::connect(&self.database_url, 4, std::time::Duration::from_secs(10))
                .await?;
        ticket_core::db::migrate(&pool).await?;
        let redis = RedisConn::new(&self.redis_url, RESPONSE_TIMEOUT)?;
        SaleStore::open(pool, redis).await
    }
}

impl PersistCommand {
    /// Runs a worker until Ctrl-C or SIGTERM, then finishes its batch.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let store = self.stores.open().await?;
        let consumer = self.consumer.unwrap_or_else(|| {
            format!(
                "persist-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            )
        });
        let options = self.persist.options(consumer.clone());
        let worker = Worker::new(store, options, ticket_core::metrics::Metrics::new())?;
        let handle = worker.spawn();
        tracing::info!(%consumer, "persisting until Ctrl-C");
        let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
        let mut last = handle.stats();
        let signal = ticket_core::server::shutdown_signal();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                () = &mut signal => break,
                _ = every.tick() => {
                    let now = handle.stats();
                    if now != last {
                        tracing::info!(?now, "persistence");
                        last = now;
                    }
                }
            }
        }
        let stats = handle.stats();
        handle.stop().await;
        tracing::info!(?stats, "persistence worker stopped");
        Ok(ExitCode::SUCCESS)
    }
}

impl ReconcileCommand {
    /// Reconciles once and prints the result.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let store = self.stores.open().await?;
        let tickets = self
            .tickets
            .iter()
            .map(|&id| TicketId::parse(i128::from(id)))
            .collect::<Result<Vec<_>, _>>()?;
        let reports = reconcile::reconcile(&store, &tickets, self.repair).await?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&reports)?);
        } else if reports.is_empty() {
            println!("no Level 4 sale found in either store");
        } else {
            for report in &reports {
                print!("{report}");
            }
        }
        store.pool().close().await;
        Ok(if reports.iter().any(reconcile::TicketReport::has_drift) {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    }
}

//! The `level4` command line: the server, `level4 persist` and `level4
//! reconcile`.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ticket_core::server::{strategy_parser, ServerArgs};
use ticket_core::{RunningServer, TicketId};

use crate::persist::{PersistArgs, Worker};
use crate::store::{RedisConn, SaleStore, RESPONSE_TIMEOUT};
use crate::{reconcile, Level4Config, STRATEGIES};

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
        let (redis_url, throwaway_redis) =
            ticket_core::server::redis_or_throwaway(self.redis_url).await?;
        check_redis(&RedisConn::new(&redis_url, RESPONSE_TIMEOUT)?).await?;
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

/// Refuses to start on a Redis that may evict keys (see
/// [`RedisConn::require_noeviction`]), as Level 3 does. A Redis that does
/// not answer yet is only reported: a server starts, answers 503 and says
/// so on `/health` until Redis is there, as it does when Redis stops later.
async fn check_redis(redis: &RedisConn) -> anyhow::Result<()> {
    use ticket_core::redis_checks::EvictionCheckError;
    match redis.require_noeviction().await {
        Ok(()) => Ok(()),
        Err(EvictionCheckError::Unavailable(err)) => {
            tracing::warn!(%err, "Redis does not answer yet; purchases are answered 503 until it does");
            Ok(())
        }
        Err(err) => Err(anyhow::Error::new(err)
            .context("the Redis given to decide the sales cannot be trusted with them")),
    }
}

impl PersistCommand {
    /// Runs a worker until Ctrl-C or SIGTERM, then finishes its batch.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let store = self.stores.open().await?;
        check_redis(store.redis()).await?;
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

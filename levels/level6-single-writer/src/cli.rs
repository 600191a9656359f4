//! The `level6` command line, and starting a server.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ticket_core::api::AppState;
use ticket_core::metrics::Metrics;
use ticket_core::server::{strategy_parser, ServerArgs};
use ticket_core::{db, RunningServer, StrategyContext};
use tokio::net::TcpListener;

use crate::engine::Mode;
use crate::{schema, Level6Config, STRATEGIES};

/// `level6`: a ticket server where one decider per partition sells.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "level6",
    version,
    args_conflicts_with_subcommands = true,
    about = "Level 6 of ticket-rush: requests go to partitioned Redis streams; one decider per partition sells from memory, in arrival order, with no lock",
    long_about = "Level 6 of ticket-rush: the single writer. Every purchase is appended to the \
        Redis stream of its ticket's partition (hash(ticket) mod --partitions). Exactly one \
        decider per partition, across all servers, holds the partition's lease (Level 3's lock, \
        with a fencing token); it decides in arrival order from memory, writes each batch to \
        PostgreSQL in one transaction that first checks its token, and only then answers. \
        No lock is taken on the sale itself: ordering does the work."
)]
pub struct Cli {
    /// Measure instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Where to listen and which database to use.
    #[command(flatten)]
    pub server: ServerArgs,

    /// How a new owner of a partition gets its state.
    #[arg(long, default_value = "partitioned", value_parser = strategy_parser(STRATEGIES))]
    pub strategy: String,

    /// Redis, which holds the partition streams and the leases. Every
    /// server of one sale must use the same Redis.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// How many partitions tickets are spread over (hash of the ticket id
    /// modulo this). Every server of one database must use the same number.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,

    /// The most requests a decider decides and writes in one transaction.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,

    /// How long a purchase waits for its decider before it is answered
    /// 202 Accepted with a URL to poll.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub reply_timeout_ms: u64,

    /// A partition's lease: a decider that dies or stalls blocks its
    /// partition this long before another server takes it over. Renewed
    /// every third of it while the decider's process runs.
    #[arg(long, default_value_t = 2_000, value_name = "MS")]
    pub lease_ms: u64,

    /// Give partitions back when another server joins, so that every
    /// server decides about ceil(partitions / servers) of them. With
    /// `false`, a server keeps what it took until it stops or loses it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub rebalance: bool,
}

/// What `level6` can do besides serving.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Measure how long a new owner of a partition needs before it can
    /// decide, for each strategy, as the state grows.
    Takeover(crate::takeover::TakeoverCommand),
}

/// What keeps throwaway services alive for as long as the server runs.
struct Keep {
    _postgres: Option<ticket_core::services::Postgres>,
    _redis: Option<Arc<ticket_core::services::Redis>>,
}

impl Cli {
    /// Starts the server this command line describes.
    pub async fn start(self) -> anyhow::Result<RunningServer> {
        anyhow::ensure!(self.command.is_none(), "`level6 takeover` starts no server");
        let name = ticket_core::strategy::find(STRATEGIES, &self.strategy)?.name;
        let args = &self.server;
        let listener = TcpListener::bind((args.host, args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let port = listener.local_addr()?.port();
        let (url, postgres) =
            ticket_core::server::postgres_or_throwaway(args.database_url.clone()).await?;
        let (redis_url, redis) = ticket_core::server::redis_or_throwaway(self.redis_url).await?;
        let acquire = Duration::from_millis(args.acquire_timeout_ms);
        let pool = db::connect(&url, args.max_connections, acquire).await?;
        db::migrate(&pool).await?;
        schema::prepare(&pool, self.partitions).await?;
        let config = Level6Config {
            redis_url,
            namespace: schema::namespace(&pool).await?,
            partitions: self.partitions,
            batch_size: self.batch_size,
            reply_timeout: Duration::from_millis(self.reply_timeout_ms),
            lease: Duration::from_millis(self.lease_ms),
            rebalance: self.rebalance,
        };
        let metrics = Metrics::new();
        let context = StrategyContext {
            pool: pool.clone(),
            think_time: Duration::from_millis(args.think_time_ms),
            metrics: metrics.clone(),
            instance: format!("level6-{port}-{:08x}", rand::random::<u32>()),
        };
        let mode = match name {
            "state-store" => Mode::StateStore,
            _ => Mode::Partitioned,
        };
        let strategy = Arc::new(crate::strategy(&context, &config, mode)?);
        let engine = strategy.engine.clone();
        let shared = AppState {
            strategy,
            pool,
            metrics,
            idempotency: args.idempotency_settings(),
        };
        let keep = Arc::new(Keep {
            _postgres: postgres,
            _redis: redis,
        });
        let router = crate::http::app(engine, shared).layer(axum::Extension(keep));
        tracing::info!(strategy = name, partitions = self.partitions, database = %db::redact(&url), "listening on port {port}");
        let drain = Duration::from_millis(args.shutdown_timeout_ms);
        Ok(RunningServer::serve(
            listener,
            router,
            ("level6", name),
            drain,
        )?)
    }

    /// Serves until Ctrl-C or SIGTERM.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        if let Some(Command::Takeover(command)) = self.command {
            command.run().await?;
            return Ok(ExitCode::SUCCESS);
        }
        self.start().await?.run_until_signal().await?;
        Ok(ExitCode::SUCCESS)
    }
}

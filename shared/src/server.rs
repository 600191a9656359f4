//! Starting a level's server: the one function every level binary calls.
//!
//! It binds the port first (so `--port 0` works and a port in use fails
//! before anything else happens), connects to PostgreSQL (or starts a
//! throwaway one), applies migrations, builds the chosen strategy, and serves
//! the API until Ctrl-C or SIGTERM, finishing the requests in flight.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::{PossibleValue, PossibleValuesParser};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{app, AppState};
use crate::metrics::Metrics;
use crate::services::Postgres;
use crate::strategy::{find, StrategyContext, StrategyEntry};
use crate::{db, idempotency};

/// The flags every level's server accepts.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Port to listen on. Use 8080 and 8081 to run two servers side by side;
    /// 0 picks a free port and prints it.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Address to listen on. The default keeps the server private to this
    /// machine.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub host: IpAddr,

    /// PostgreSQL to use, for example postgres://postgres@127.0.0.1:5432/postgres.
    /// Two servers must share one database for the multi-server lessons.
    /// Without it, the server starts a private throwaway PostgreSQL (fine
    /// for trying one server, useless for two).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Milliseconds to pause between reading the stock and writing it back.
    /// This widens the race window so that unsafe strategies fail every
    /// time instead of once in a while; safe strategies stay correct, only
    /// slower.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub think_time_ms: u64,

    /// Most database connections this server opens. Buyers beyond it wait in
    /// line inside the server for a free connection.
    #[arg(long, default_value_t = 10)]
    pub max_connections: u32,

    /// How long a request waits for a free connection before it is answered
    /// 503 busy.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub acquire_timeout_ms: u64,

    /// How Idempotency-Key headers are handled: `atomic` (claim the key
    /// first, record the answer in the order's own transaction) or
    /// `check-then-insert` (the broken design: look up, buy, then save the
    /// key, which fails when duplicates arrive together).
    #[arg(long, value_enum, default_value_t = idempotency::Mode::Atomic)]
    pub idempotency: idempotency::Mode,

    /// Seconds an idempotency key is remembered; after that the same key is
    /// a new request.
    #[arg(long, default_value_t = 86_400, value_name = "SECS")]
    pub idempotency_ttl_secs: u64,

    /// How long a duplicate request waits for the first one with its key to
    /// finish before it is answered 409 request_in_progress.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub idempotency_wait_ms: u64,

    /// At shutdown (Ctrl-C, SIGTERM), how long requests in flight may take
    /// to finish before the server stops anyway.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub shutdown_timeout_ms: u64,

    /// Log lines as text for people, or as one JSON object per line for a
    /// log collector. Read before anything is logged (see [`init_tracing`]).
    #[arg(long, value_enum, env = "LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written (`--log-format`, `LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, fields, span with the
    /// request id).
    Json,
}

impl LogFormat {
    /// The format asked for by `--log-format` on `args` (either spelling),
    /// else by `LOG_FORMAT`, else text.
    pub fn requested(args: &[String]) -> Self {
        let flag = args.iter().enumerate().find_map(|(i, arg)| {
            arg.strip_prefix("--log-format=").or_else(|| {
                (arg == "--log-format")
                    .then(|| args.get(i + 1).map(String::as_str))
                    .flatten()
            })
        });
        let named = flag
            .map(str::to_owned)
            .or_else(|| std::env::var("LOG_FORMAT").ok());
        match named.as_deref().map(str::trim) {
            Some(name) if name.eq_ignore_ascii_case("json") => Self::Json,
            _ => Self::Text,
        }
    }
}

impl Default for ServerArgs {
    /// The `default_value_t`s above, written once: what an empty command
    /// line parses to, with the environment ignored (`DATABASE_URL` set in
    /// the shell does not leak into a default).
    fn default() -> Self {
        use clap::{Args as _, FromArgMatches as _};
        let command = ServerArgs::augment_args(clap::Command::new("server"))
            .mut_arg("database_url", |arg| arg.env(None::<&str>));
        let matches = command.get_matches_from(["server"]);
        ServerArgs::from_arg_matches(&matches).expect("the defaults parse")
    }
}

impl ServerArgs {
    /// How this server handles `Idempotency-Key`.
    pub fn idempotency_settings(&self) -> idempotency::Settings {
        idempotency::Settings {
            mode: self.idempotency,
            ttl: Duration::from_secs(self.idempotency_ttl_secs),
            wait: Duration::from_millis(self.idempotency_wait_ms),
            ..idempotency::Settings::default()
        }
    }
}

/// The PostgreSQL a server uses: `url` when one was given, otherwise a
/// private throwaway one (kept alive by the returned handle).
pub async fn postgres_or_throwaway(
    url: Option<String>,
) -> anyhow::Result<(String, Option<Postgres>)> {
    if let Some(url) = url {
        return Ok((url, None));
    }
    tracing::warn!(
        "no --database-url or DATABASE_URL: starting a private throwaway PostgreSQL; \
         a second server would not share it"
    );
    let pg = tokio::task::spawn_blocking(Postgres::throwaway).await??;
    Ok((pg.url().to_owned(), Some(pg)))
}

/// The Redis a Level 3 or 4 server uses: `url` when one was given
/// (`--redis-url` or `REDIS_URL`), otherwise a private throwaway Redis
/// started from the local `redis-server`, returned with its URL. Keep the
/// returned handle as long as the server runs: dropping it stops that Redis.
///
/// A throwaway Redis is fine for trying one server and useless for two
/// (they would not share it), and the warning says so.
pub async fn redis_or_throwaway(
    url: Option<String>,
) -> anyhow::Result<(String, Option<std::sync::Arc<crate::services::Redis>>)> {
    if let Some(url) = url {
        return Ok((url, None));
    }
    tracing::warn!(
        "no --redis-url or REDIS_URL: starting a private throwaway Redis; \
         a second server would not share it"
    );
    let redis = tokio::task::spawn_blocking(crate::services::Redis::throwaway)
        .await
        .context("starting a throwaway Redis")??;
    Ok((redis.url().to_owned(), Some(std::sync::Arc::new(redis))))
}

/// A clap value parser that accepts exactly the names in a strategy table,
/// with each strategy's one-liner shown by `--help`.
pub fn strategy_parser<C>(table: &'static [StrategyEntry<C>]) -> PossibleValuesParser {
    PossibleValuesParser::new(
        table
            .iter()
            .map(|entry| PossibleValue::new(entry.name).help(entry.about)),
    )
}

/// A server that is up and answering.
pub struct RunningServer {
    addr: SocketAddr,
    level: &'static str,
    strategy: &'static str,
    shutdown: Option<oneshot::Sender<()>>,
    /// How long [`RunningServer::stop`] lets requests in flight finish.
    shutdown_timeout: Duration,
    task: JoinHandle<std::io::Result<()>>,
    // Keeps a throwaway PostgreSQL alive for as long as the server runs.
    _postgres: Option<Postgres>,
}

impl RunningServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets requests in flight finish for at most the
    /// shutdown timeout (`--shutdown-timeout-ms`), and returns. Requests
    /// still running then are dropped (their connections close), with a
    /// warning: a stuck request never keeps a stopping server alive.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match tokio::time::timeout(self.shutdown_timeout, &mut self.task).await {
            Ok(served) => served.context("the server task panicked")??,
            Err(_) => {
                self.task.abort();
                tracing::warn!(
                    timeout_ms = self.shutdown_timeout.as_millis() as u64,
                    "requests still in flight at the shutdown deadline were dropped"
                );
            }
        }
        Ok(())
    }

    /// Serves until Ctrl-C or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        shutdown_signal().await;
        tracing::info!(
            level = self.level,
            strategy = self.strategy,
            "shutting down"
        );
        self.stop().await
    }
}

impl RunningServer {
    /// Serves `router` on `listener` until stopped: for a level that builds
    /// its own router around [`crate::api::app`] (Level 6 adds
    /// `GET /requests/{id}`) and so cannot use [`start`]. The level keeps
    /// whatever throwaway services it started alive in the router's state;
    /// `shutdown_timeout` bounds the drain as `--shutdown-timeout-ms` does.
    pub fn serve(
        listener: TcpListener,
        router: axum::Router,
        (level, strategy): (&'static str, &'static str),
        shutdown_timeout: Duration,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            addr,
            level,
            strategy,
            shutdown: Some(shutdown),
            shutdown_timeout,
            task,
            _postgres: None,
        })
    }
}

/// Starts a level's server with the strategy called `strategy` from `table`.
/// `config` holds the level's own settings (retries, lock timeouts...).
pub async fn start<C: Send + Sync + 'static>(
    args: ServerArgs,
    level: &'static str,
    table: &'static [StrategyEntry<C>],
    strategy: &str,
    config: C,
) -> anyhow::Result<RunningServer> {
    let entry = find(table, strategy)?;
    let listener = listen(SocketAddr::new(args.host, args.port)).with_context(|| {
        format!(
            "cannot listen on {}:{} (is another server already using that port?)",
            args.host, args.port
        )
    })?;
    let addr = listener.local_addr()?;

    let (url, postgres) = postgres_or_throwaway(args.database_url.clone()).await?;
    let pool = db::connect(
        &url,
        args.max_connections,
        Duration::from_millis(args.acquire_timeout_ms),
    )
    .await?;
    db::migrate(&pool).await?;

    let metrics = Metrics::new();
    let context = StrategyContext {
        pool: pool.clone(),
        think_time: Duration::from_millis(args.think_time_ms),
        metrics: metrics.clone(),
        instance: format!("{level}-{}-{:08x}", addr.port(), rand::random::<u32>()),
    };
    let sell = (entry.build)(&context, &config)
        .with_context(|| format!("cannot set up strategy {}", entry.name))?;
    let router = app(AppState {
        strategy: sell,
        pool,
        metrics,
        idempotency: args.idempotency_settings(),
    });

    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!(
        level,
        strategy = entry.name,
        think_time_ms = args.think_time_ms,
        database = %db::redact(&url),
        "listening on http://{addr}"
    );
    Ok(RunningServer {
        addr,
        level,
        strategy: entry.name,
        shutdown: Some(shutdown),
        shutdown_timeout: Duration::from_millis(args.shutdown_timeout_ms),
        task,
        _postgres: postgres,
    })
}

/// How many connections the kernel may hold for the server before it
/// accepts them (the kernel caps it at `net.core.somaxconn`). A rush opens
/// a connection per buyer, all at once: when this queue is full, the kernel
/// drops the buyer's SYN, and the buyer's kernel sends it again only after
/// a second. Tokio's own `TcpListener::bind` asks for 1024.
pub const LISTEN_BACKLOG: u32 = 8192;

/// Binds `addr` and listens with [`LISTEN_BACKLOG`], as `TcpListener::bind`
/// does otherwise (`SO_REUSEADDR` on, so a restarted server gets its port
/// back at once).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// Start-up for a server binary, before its flags are parsed: reads `.env`
/// (see [`load_dotenv`]), then sets up logging: `RUST_LOG` if set, else
/// `info` for our crates and warnings for the noisy ones, as text or JSON
/// ([`LogFormat::requested`]). Calling it twice is harmless.
pub fn init_tracing() {
    init_tracing_with_default("info,sqlx=warn,hyper=warn,tower=warn");
}

/// [`init_tracing`] with `default` (an `EnvFilter` directive such as `warn`)
/// when `RUST_LOG` is not set.
pub fn init_tracing_with_default(default: &str) {
    use tracing_subscriber::EnvFilter;
    load_dotenv();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let args: Vec<String> = std::env::args().collect();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match LogFormat::requested(&args) {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}

/// Reads `.env` from the current directory (or a parent), if there is one,
/// into the environment; variables already set win. This is how
/// `DATABASE_URL` and `REDIS_URL` reach every terminal of a two-server demo
/// without `export` in each (`load services --env-file .env` writes the
/// file). Called before flags are parsed, because flags read the
/// environment.
pub fn load_dotenv() {
    let _ = dotenvy::dotenv();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_server_args_are_the_flags_defaults() {
        let args = ServerArgs::default();
        assert_eq!(args.port, 8080);
        assert_eq!(args.host, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(args.database_url, None);
        assert_eq!(args.max_connections, 10);
        assert_eq!(args.acquire_timeout_ms, 10_000);
        assert_eq!(args.idempotency, idempotency::Mode::Atomic);
        assert_eq!(args.idempotency_ttl_secs, 86_400);
        assert_eq!(args.idempotency_wait_ms, 10_000);
        assert_eq!(args.shutdown_timeout_ms, 10_000);
        assert_eq!(args.log_format, LogFormat::Text);
    }

    #[test]
    fn the_log_format_comes_from_the_flag_in_either_spelling() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let json = LogFormat::Json;
        assert_eq!(
            LogFormat::requested(&args(&["level1", "--log-format", "json"])),
            json
        );
        assert_eq!(
            LogFormat::requested(&args(&["level1", "--log-format=JSON"])),
            json
        );
        assert_eq!(
            LogFormat::requested(&args(&["level1", "--log-format", "text"])),
            LogFormat::Text
        );
    }
}

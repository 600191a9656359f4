//! Starting the box office: bind, connect, migrate, start the sweeper,
//! serve, and on shutdown stop the sweeper after the last request.
//!
//! It reuses ticket-core's pieces (pool, migrations, throwaway PostgreSQL,
//! signal handling) but builds its own router: the box office does not
//! serve the ticket API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ticket_core::services::{Postgres, Redis};
use ticket_core::{db, idempotency};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{app, AppState};
use crate::cache::Cache;
use crate::queue::{spawn_ticker, Queue};
use crate::{holds, sweeper, CacheMode, Cli, QueueMode};

/// A box-office server that is up and answering.
pub struct BoxOffice {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    serving: JoinHandle<std::io::Result<()>>,
    sweeping: JoinHandle<()>,
    ticking: Option<JoinHandle<()>>,
    // Keep throwaway servers alive for as long as the server runs.
    _postgres: Option<Postgres>,
    _redis: Option<Redis>,
}

impl BoxOffice {
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, finishes requests in flight, stops the sweeper.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.serving.await.context("the server task panicked")??;
        self.sweeping.await.context("the sweeper panicked")?;
        if let Some(ticking) = self.ticking {
            ticking.await.context("the queue ticker panicked")?;
        }
        Ok(())
    }

    /// Serves until Ctrl-C or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        ticket_core::server::shutdown_signal().await;
        tracing::info!("shutting down");
        self.stop().await
    }
}

/// `--database-url`, or a private throwaway PostgreSQL.
async fn database(cli: &Cli) -> anyhow::Result<(Option<Postgres>, String)> {
    if let Some(url) = &cli.server.database_url {
        return Ok((None, url.clone()));
    }
    tracing::warn!("no --database-url: starting a private throwaway PostgreSQL");
    let pg = tokio::task::spawn_blocking(Postgres::throwaway).await??;
    let url = pg.url().to_owned();
    Ok((Some(pg), url))
}

/// `--redis-url`, or, when something needs Redis (the waiting room,
/// `redis-lua`), a private throwaway Redis.
async fn redis(cli: &Cli) -> anyhow::Result<(Option<Redis>, Option<String>)> {
    if let Some(url) = &cli.redis_url {
        return Ok((None, Some(url.clone())));
    }
    if cli.queue == QueueMode::Off && cli.strategy != "redis-lua" {
        return Ok((None, None));
    }
    tracing::warn!("no --redis-url: starting a private throwaway Redis");
    let redis = tokio::task::spawn_blocking(Redis::throwaway).await??;
    let url = redis.url().to_owned();
    Ok((Some(redis), Some(url)))
}

/// Connects to and migrates the database, and names the Redis key prefix
/// after it: servers of two databases (tests) can then share one Redis
/// without sharing lines or cached shows.
async fn connect_database(
    args: &ticket_core::server::ServerArgs,
    url: &str,
) -> anyhow::Result<(sqlx::PgPool, String)> {
    let pool = db::connect(
        url,
        args.max_connections,
        Duration::from_millis(args.acquire_timeout_ms),
    )
    .await?;
    db::migrate(&pool).await?;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await?;
    Ok((pool, format!("level5:{database}")))
}

/// Starts a box-office server with the settings in `cli`.
pub async fn start(cli: Cli) -> anyhow::Result<BoxOffice> {
    let args = &cli.server;
    let listener = TcpListener::bind((args.host, args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    let (postgres, url) = database(&cli).await?;
    let (redis, redis_url) = redis(&cli).await?;
    let mut settings = cli.settings();
    settings.redis_url = redis_url.clone();
    let (pool, prefix) = connect_database(args, &url).await?;
    let queue = match (cli.queue, &redis_url) {
        (QueueMode::On, Some(redis)) => {
            Some(Arc::new(Queue::new(redis, &prefix, cli.queue_settings())?))
        }
        _ => None,
    };
    let cache_redis = redis_url.as_deref().filter(|_| cli.cache == CacheMode::On);
    let cache = Arc::new(Cache::new(cache_redis, &prefix, cli.cache_settings())?);
    let strategy = holds::build(&cli.strategy, &pool, &settings)?;
    let (stop, stopped) = watch::channel(false);
    let sweeping = sweeper::spawn(
        pool.clone(),
        strategy.clone(),
        settings.clone(),
        stopped.clone(),
    );
    let ticking = queue
        .clone()
        .map(|q| spawn_ticker(q, settings.sweep_interval, stopped.clone()));
    let router = app(AppState {
        holds: strategy,
        pool,
        settings,
        queue,
        cache,
        admin_token: cli.admin_token.as_deref().map(Arc::from),
        idempotency: idempotency::Settings {
            ttl: Duration::from_secs(args.idempotency_ttl_secs),
            wait: Duration::from_millis(args.idempotency_wait_ms),
            ..idempotency::Settings::default()
        },
        metrics: ticket_core::metrics::Metrics::new(),
    });
    let mut stopped_serving = stopped;
    let serving = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped_serving.changed().await;
            })
            .await
    });
    tracing::info!(
        strategy = cli.strategy,
        queue = ?cli.queue,
        admin_api = cli.admin_token.is_some(),
        database = %db::redact(&url),
        "box office listening on http://{addr}"
    );
    Ok(BoxOffice {
        addr,
        stop,
        serving,
        sweeping,
        ticking,
        _postgres: postgres,
        _redis: redis,
    })
}

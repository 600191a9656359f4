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
use ticket_core::services::Postgres;
use ticket_core::{db, idempotency};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{app, AppState};
use crate::{holds, sweeper, Cli, QueueMode};

/// A box-office server that is up and answering.
pub struct BoxOffice {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    serving: JoinHandle<std::io::Result<()>>,
    sweeping: JoinHandle<()>,
    // Keeps a throwaway PostgreSQL alive for as long as the server runs.
    _postgres: Option<Postgres>,
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
        Ok(())
    }

    /// Serves until Ctrl-C or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        ticket_core::server::shutdown_signal().await;
        tracing::info!("shutting down");
        self.stop().await
    }
}

/// Starts a box-office server with the settings in `cli`.
pub async fn start(cli: Cli) -> anyhow::Result<BoxOffice> {
    if cli.queue == QueueMode::On {
        anyhow::bail!(
            "the waiting room (--queue on) is not built yet; run with --queue off \
             (holds and payments then need no queue token)"
        );
    }
    let settings = cli.settings();
    let args = &cli.server;
    let listener = TcpListener::bind((args.host, args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    let (postgres, url) = match &args.database_url {
        Some(url) => (None, url.clone()),
        None => {
            tracing::warn!("no --database-url: starting a private throwaway PostgreSQL");
            let pg = tokio::task::spawn_blocking(Postgres::throwaway).await??;
            let url = pg.url().to_owned();
            (Some(pg), url)
        }
    };
    let pool = db::connect(
        &url,
        args.max_connections,
        Duration::from_millis(args.acquire_timeout_ms),
    )
    .await?;
    db::migrate(&pool).await?;
    let strategy = holds::build(&cli.strategy, &pool, &settings)?;
    let (stop, stopped) = watch::channel(false);
    let sweeping = sweeper::spawn(
        pool.clone(),
        strategy.clone(),
        settings.clone(),
        stopped.clone(),
    );
    let router = app(AppState {
        holds: strategy,
        pool,
        settings,
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
        admin_api = cli.admin_token.is_some(),
        database = %db::redact(&url),
        "box office listening on http://{addr}"
    );
    Ok(BoxOffice {
        addr,
        stop,
        serving,
        sweeping,
        _postgres: postgres,
    })
}

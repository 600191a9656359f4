//! What Level 2's HTTP tests share: servers on a fresh database, the test's
//! own pool for holding locks and reading the truth, and answers boiled down.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser as _;
use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use ticket_core::db::{self, DbTruth};
use ticket_core::metrics::sum_samples;
use ticket_core::services::Postgres;
use ticket_core::{RunningServer, TicketId};

/// The ticket every test sells.
pub const TICKET: i64 = 1;

/// One or more Level 2 servers on a fresh database, plus the test's own
/// pool on that database for holding locks and reading the truth.
pub struct Sale {
    pub servers: Vec<RunningServer>,
    pub pool: PgPool,
    pub http: reqwest::Client,
}

impl Sale {
    /// Starts `servers` Level 2 servers with `args` on a fresh database and
    /// puts `stock` units of [`TICKET`] on sale.
    pub async fn start(servers: usize, args: &[&str], stock: i32) -> anyhow::Result<Sale> {
        Sale::start_each(&vec![args; servers], stock).await
    }

    /// Starts one Level 2 server per entry of `args`, each with its own
    /// arguments, on one fresh database, and puts `stock` units on sale.
    pub async fn start_each(args: &[&[&str]], stock: i32) -> anyhow::Result<Sale> {
        let url = Postgres::shared()?.fresh_database().await?;
        let mut running = Vec::new();
        for server_args in args {
            let argv = ["level2", "--port", "0", "--database-url", &url]
                .into_iter()
                .chain(server_args.iter().copied());
            running.push(level2::Cli::try_parse_from(argv)?.start().await?);
        }
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .context("the test's own pool")?;
        db::reset_ticket(&pool, TicketId::parse(TICKET.into())?, "Lock lesson", stock).await?;
        Ok(Sale {
            servers: running,
            pool,
            http: reqwest::Client::new(),
        })
    }

    /// `user` tries to buy the ticket from server `server`.
    pub async fn buy(&self, server: usize, user: i64) -> anyhow::Result<Answer> {
        let started = Instant::now();
        let response = self
            .http
            .post(format!(
                "{}/tickets/{TICKET}/orders",
                self.servers[server].url()
            ))
            .json(&serde_json::json!({ "user_id": user }))
            .send()
            .await?;
        let status = response.status();
        let retry_after = response.headers().contains_key(RETRY_AFTER);
        let body: serde_json::Value = response.json().await?;
        Ok(Answer {
            status,
            retry_after,
            code: body["code"].as_str().map(str::to_owned),
            took: started.elapsed(),
        })
    }

    /// What the database says was sold.
    pub async fn truth(&self) -> anyhow::Result<DbTruth> {
        db::truth(&self.pool, TicketId::parse(TICKET.into())?).await
    }

    /// How often server `server` counted `event` in `/metrics`.
    pub async fn events(&self, server: usize, event: &str) -> anyhow::Result<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.servers[server].url()))
            .send()
            .await?
            .text()
            .await?;
        Ok(sum_samples(
            &text,
            "ticket_rush_strategy_events_total",
            Some(&format!("event=\"{event}\"")),
        ))
    }

    /// Takes the ticket's row lock in a transaction of the test's own, as
    /// another server in the middle of a slow sale would.
    pub async fn hold_row_lock(
        &self,
    ) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut holder = self.pool.begin().await?;
        sqlx::query("SELECT stock FROM tickets WHERE id = $1 FOR UPDATE")
            .bind(TICKET)
            .fetch_one(&mut *holder)
            .await?;
        Ok(holder)
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        for server in self.servers {
            server.stop().await?;
        }
        self.pool.close().await;
        Ok(())
    }
}

/// One HTTP answer, boiled down.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: bool,
    pub code: Option<String>,
    pub took: Duration,
}

impl Answer {
    pub fn is_busy(&self) -> bool {
        self.status == StatusCode::SERVICE_UNAVAILABLE
            && self.code.as_deref() == Some("busy")
            && self.retry_after
    }
}

//! `level6 takeover`: how long a new owner needs before it can decide, as
//! the state grows. It measures what each strategy does when it takes a
//! partition whose ticket has N buyers:
//!
//! * `partitioned` loads the ticket from PostgreSQL: its row and its N
//!   orders ([`crate::batch::refresh`] on an empty state);
//! * `state-store` replays the compacted changelog (N + 1 records,
//!   [`crate::changelog::rebuild`]) and checks the ticket's row, which
//!   matches, so no order is read from PostgreSQL.
//!
//! Run with (the figures in docs/09-single-writer.md come from this):
//!
//! ```text
//! cargo run --release -p level6 -- takeover --buyers 1000,10000,100000
//! ```

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use ticket_core::{TicketId, UserId};

use crate::batch::refresh;
use crate::changelog::{rebuild, Changelog};
use crate::log::{partition_of, Answer, Command, Keys, Request};
use crate::state::{PartitionState, TicketState};

/// `level6 takeover`.
#[derive(Args, Debug, Clone)]
pub struct TakeoverCommand {
    /// PostgreSQL (default: a throwaway one).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Redis (default: a throwaway one).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// The state sizes to measure: buyers holding the ticket.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub buyers: Vec<u32>,

    /// Measurements per size; the median is printed.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
}

impl TakeoverCommand {
    /// Measures and prints one line per size.
    pub async fn run(self) -> anyhow::Result<()> {
        let (database, _pg) = ticket_core::server::postgres_or_throwaway(self.database_url).await?;
        let (redis_url, _redis) = ticket_core::server::redis_or_throwaway(self.redis_url).await?;
        let pool = ticket_core::db::connect(&database, 4, Duration::from_secs(10)).await?;
        ticket_core::db::migrate(&pool).await?;
        // The engine's own connection settings (5 s per command): the
        // changelog is written and replayed in chunks, as a decider does.
        let client = redis::Client::open(redis_url)?;
        let redis =
            redis::aio::ConnectionManager::new_with_config(client, crate::engine::redis_config())
                .await?;
        let keys = Keys::new(&format!("takeover-{:08x}", rand::random::<u32>()));
        println!("state (buyers)  partitioned: load from PostgreSQL  state-store: replay changelog  ratio");
        for (index, &buyers) in self.buyers.iter().enumerate() {
            let ticket = TicketId::parse(900_000_000 + index as i128)?;
            let state = seed(&pool, ticket, buyers).await?;
            let p = partition_of(ticket, 1);
            write_changelog(&redis, &keys, p, ticket, &state).await?;
            let mut from_db = Vec::new();
            let mut from_log = Vec::new();
            for _ in 0..self.repeat.max(1) {
                let started = Instant::now();
                let mut fresh = PartitionState::new();
                refresh(&pool, &mut fresh, &[ticket]).await?;
                from_db.push(started.elapsed());
                anyhow::ensure!(fresh[&ticket].buyers.len() == buyers as usize);

                let started = Instant::now();
                let (mut replayed, _) = rebuild(&redis, &keys, p).await?;
                refresh(&pool, &mut replayed, &[ticket]).await?;
                from_log.push(started.elapsed());
                anyhow::ensure!(replayed[&ticket] == fresh[&ticket], "the replay differs");
            }
            let (db, log) = (median(&mut from_db), median(&mut from_log));
            println!(
                "{buyers:>14}  {:>31.1} ms  {:>29.1} ms  {:>5.2}",
                ms(db),
                ms(log),
                ms(log) / ms(db).max(f64::EPSILON)
            );
        }
        pool.close().await;
        Ok(())
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Puts `ticket` on sale with `buyers` orders already taken.
async fn seed(pool: &sqlx::PgPool, ticket: TicketId, buyers: u32) -> anyhow::Result<TicketState> {
    let total = i32::try_from(buyers)? + 10;
    ticket_core::db::reset_ticket(pool, ticket, "takeover", total).await?;
    sqlx::query(
        "INSERT INTO ticket_orders (ticket_id, user_id) SELECT $1, g FROM generate_series(1, $2) g",
    )
    .bind(ticket.get())
    .bind(i64::from(buyers))
    .execute(pool)
    .await
    .context("seed the orders")?;
    sqlx::query("UPDATE tickets SET stock = 10, version = 5 WHERE id = $1")
        .bind(ticket.get())
        .execute(pool)
        .await?;
    let mut state = PartitionState::new();
    refresh(pool, &mut state, &[ticket]).await?;
    state.remove(&ticket).context("the seeded ticket")
}

/// Writes `state` as the changelog of partition `p`, as a decider that
/// had just reloaded the ticket would.
async fn write_changelog(
    redis: &redis::aio::ConnectionManager,
    keys: &Keys,
    p: u32,
    ticket: TicketId,
    state: &TicketState,
) -> anyhow::Result<()> {
    let mut whole = PartitionState::new();
    whole.insert(ticket, state.clone());
    let touch = Request {
        id: "takeover".into(),
        command: Command::Buy {
            ticket,
            user: UserId::parse(1)?,
        },
        key: None,
        reply_to: String::new(),
    };
    let answer = Answer {
        id: "takeover".into(),
        status: 409,
        body: String::new(),
        location: None,
    };
    let mut log = Changelog::default();
    log.append(redis, keys, p, &whole, &[touch], &[answer])
        .await
}

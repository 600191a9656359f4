//! Throughput: a sustained run, and the ceilings it is measured against.
//!
//! The sell-out rush (1000 buyers, 100 tickets) answers "is it correct?" and
//! "how long did buyers wait?". It is over in a fraction of a second, too
//! short to say how many purchases per second a strategy can sustain. Here a
//! fixed number of buyers (`concurrency`) buy for `duration` against a stock
//! so large it never runs out, each buyer a new person every time.
//!
//! A figure alone says little: 900 purchases/s is good or bad depending on
//! the machine. So each strategy is reported as a fraction of a *ceiling*
//! measured in the same run at the same concurrency:
//!
//! - [`postgres_purchase`]: the purchase transaction (conditional UPDATE and
//!   INSERT, one transaction) issued straight to PostgreSQL, no HTTP, no
//!   server: the most a database-backed strategy could do (measured with as
//!   many connections as buyers and with as many as the servers' pools open;
//!   the better one counts, see `run::measure_ceilings`);
//! - [`http_noop`]: `GET /livez` on a server, which does no work: the most
//!   HTTP and the server framework allow;
//! - [`redis_lua`]: a stock-decrementing Lua script issued straight to Redis;
//! - [`postgres_batch_insert`]: orders inserted [`BATCH_ROWS`] at a time, one
//!   transaction per batch, as Levels 4 and 6 persist them: a sale's share
//!   of a batch (its cost is per row).
//!
//! Each run and each ceiling also measures the CPU time its processes spent
//! per operation ([`crate::cpu`]): the strategies against their floor, the
//! sum of the ceilings' costs they cannot avoid.

mod ceilings;
mod closed;
pub mod open;
mod progress;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use ticket_core::verify::{judge_run, Evidence, ExpectedOrders, Identities};
use ticket_core::{db, TicketId};

pub use self::ceilings::{
    http_noop, postgres_batch_insert, postgres_purchase, redis_lua, BATCH_ROWS,
};
use self::closed::Shared;
pub use crate::model::Ceiling;
use crate::model::{latency_cdf, Latency, Report};
use crate::reset::reset_ticket;
use crate::scrape::{metrics_delta, scrape_metrics};

/// Latencies and counts of one worker; merged at the end.
struct Meter {
    histogram: Histogram<u64>,
    ok: u64,
    errors: u64,
    /// Users answered 201 (sustained runs), for the identity check.
    answered: Vec<i64>,
    /// Users whose last answer was a failure.
    failed: Vec<i64>,
}

impl Meter {
    fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            ok: 0,
            errors: 0,
            answered: Vec::new(),
            failed: Vec::new(),
        }
    }

    fn record(&mut self, took: Duration) {
        self.histogram
            .saturating_record(took.as_micros().max(1) as u64);
    }

    fn merge(&mut self, other: &Meter) {
        let _ = self.histogram.add(&other.histogram);
        self.ok += other.ok;
        self.errors += other.errors;
        self.answered.extend_from_slice(&other.answered);
        self.failed.extend_from_slice(&other.failed);
    }

    fn latency(&self) -> Latency {
        Latency::of(&self.histogram)
    }
}

fn ceiling(name: &str, concurrency: usize, meter: &Meter, elapsed: Duration) -> Ceiling {
    Ceiling {
        name: name.to_owned(),
        concurrency,
        servers: 0,
        ops_per_sec: meter.ok as f64 / elapsed.as_secs_f64().max(1e-9),
        operations: meter.ok,
        errors: meter.errors,
        latency_ms: meter.latency(),
        cpu: None,
    }
}

/// Units put on sale for sustained runs and ceilings: far more than any run
/// here can sell.
pub const SUSTAINED_STOCK: i32 = 100_000_000;

/// Where user ids of sustained runs start; each purchase takes the next one.
const SUSTAINED_FIRST_USER: i64 = 7_000_000_000_000;

async fn collect(workers: &mut tokio::task::JoinSet<Meter>) -> anyhow::Result<Meter> {
    let mut total = Meter::new();
    while let Some(meter) = workers.join_next().await {
        total.merge(&meter.context("a worker panicked")?);
    }
    Ok(total)
}

/// A sustained run against servers.
#[derive(Debug, Clone)]
pub struct SustainPlan {
    /// Base URLs of the servers; workers are dealt round-robin over them.
    pub targets: Vec<String>,
    /// The database the servers share.
    pub database_url: String,
    /// The ticket bought.
    pub ticket_id: i64,
    /// Concurrent buyers (each one loops: buy, then buy again as someone
    /// new); with `rate`, the most requests in flight.
    pub concurrency: usize,
    /// Open model: arrivals per second, regardless of answers (`None`: the
    /// closed model, `concurrency` buyers in a loop).
    pub rate: Option<f64>,
    /// Show live progress on stderr.
    pub progress: bool,
    /// Send an `Idempotency-Key` with every purchase (one per person).
    pub idempotency_keys: bool,
    /// How long to keep buying.
    pub duration: Duration,
    /// Waits for asynchronous persistence before the database is read.
    pub settle: Option<crate::rush::Settle>,
    /// The level's own reset; `None`: PostgreSQL alone.
    pub resetter: Option<crate::reset::Reset>,
    /// The processes whose CPU time per sale is measured.
    pub cpu: crate::cpu::Watch,
}

/// Runs a sustained purchase load and judges it from the database.
pub async fn sustain(plan: &SustainPlan) -> anyhow::Result<Report> {
    anyhow::ensure!(!plan.targets.is_empty(), "no servers to send buyers to");
    let ticket = TicketId::parse(i128::from(plan.ticket_id))?;
    crate::client::raise_fd_limit();
    let pool = db::connect(&plan.database_url, 2, Duration::from_secs(10)).await?;
    reset_ticket(
        &pool,
        plan.resetter.as_ref(),
        ticket,
        "Sustained",
        SUSTAINED_STOCK,
    )
    .await?;
    let metrics_before = scrape_metrics(&plan.targets).await;
    let shared = Arc::new(Shared::new(SUSTAINED_FIRST_USER, plan.idempotency_keys));
    let cpu = plan.cpu.start();
    let started = Instant::now();
    let ticker = progress::start(plan, &shared, started);
    let (meter, uncorrected) = buy(plan, &shared, started).await?;
    let elapsed = started.elapsed();
    ticker.finish();
    // The lag runs from the last 201 the buyers saw, not from now: the
    // buyers may have stopped well after the last sale was answered.
    let persistence_lag_ms = match &plan.settle {
        Some(settle) => settle.run(&pool, ticket, shared.last_success()).await?,
        None => None,
    };
    // Up to the end of persistence: a sale's batched INSERT is part of it.
    let cpu = cpu.per_operation(shared.counts.succeeded.load(Ordering::Relaxed));
    let truth = db::truth(&pool, ticket).await?;
    let holders = db::order_holders(&pool, ticket).await?;
    pool.close().await;
    let metrics_after = scrape_metrics(&plan.targets).await;
    Ok(Report {
        server_metrics: metrics_delta(&metrics_before, &metrics_after),
        persistence_lag_ms,
        latency_uncorrected_ms: uncorrected.as_ref().map(Latency::of),
        cpu: Some(cpu),
        ..judged(plan, &shared, &meter, &truth, &holders, elapsed)
    })
}

/// Buys until the run's end: `concurrency` looping buyers (closed model),
/// or arrivals at `rate` (open model, which also returns the uncorrected
/// latencies).
async fn buy(
    plan: &SustainPlan,
    shared: &Arc<Shared>,
    started: Instant,
) -> anyhow::Result<(Meter, Option<Histogram<u64>>)> {
    let deadline = started + plan.duration;
    if let Some(rate) = plan.rate {
        let urls: Vec<String> = (0..plan.targets.len())
            .map(|i| orders_url(plan, i))
            .collect();
        let slots = plan.concurrency.max(1);
        let measured = open::arrive(&urls, rate, slots, started, deadline, shared.clone()).await?;
        return Ok((measured.meter, Some(measured.uncorrected)));
    }
    let mut workers = tokio::task::JoinSet::new();
    for index in 0..plan.concurrency {
        let url = orders_url(plan, index);
        workers.spawn(closed::buy_until(url, deadline, shared.clone()));
    }
    Ok((collect(&mut workers).await?, None))
}

/// The purchase URL of worker `index` (workers are dealt round-robin over
/// the servers).
fn orders_url(plan: &SustainPlan, index: usize) -> String {
    format!(
        "{}/tickets/{}/orders",
        plan.targets[index % plan.targets.len()],
        plan.ticket_id
    )
}

/// The report of a sustained run, judged from what the database holds.
fn judged(
    plan: &SustainPlan,
    shared: &Shared,
    meter: &Meter,
    truth: &db::DbTruth,
    holders: &[i64],
    elapsed: Duration,
) -> Report {
    let counts = &shared.counts;
    let succeeded = counts.succeeded.load(Ordering::Relaxed);
    let errors = counts.errors.load(Ordering::Relaxed);
    let judgement = judge_run(&Evidence {
        tickets: i64::from(SUSTAINED_STOCK),
        expected: ExpectedOrders::Sustained,
        identities: Identities::Known {
            answered: &meter.answered,
            failed: &meter.failed,
            holders,
        },
        errors,
        truth,
    });
    let attempts = counts.attempts.load(Ordering::Relaxed);
    let seconds = elapsed.as_secs_f64().max(1e-9);
    Report {
        servers: plan.targets.len(),
        buyers: plan.concurrency,
        tickets: SUSTAINED_STOCK,
        distinct_users: meter.answered.len() + meter.failed.len(),
        ticket_id: plan.ticket_id,
        succeeded,
        already_purchased: counts.conflicts.load(Ordering::Relaxed),
        busy: counts.busy.load(Ordering::Relaxed),
        errors,
        attempts,
        server_errors: counts.server_errors.load(Ordering::Relaxed),
        error_kinds: shared.failures.snapshot(),
        db_orders: truth.orders,
        db_stock: truth.stock,
        db_total: truth.total,
        latency_ms: meter.latency(),
        latency_cdf_ms: latency_cdf(&meter.histogram),
        elapsed_ms: elapsed.as_secs_f64() * 1000.0,
        throughput_rps: attempts as f64 / seconds,
        sales_per_sec: succeeded as f64 / seconds,
        mode: "sustained".to_owned(),
        rate: plan.rate,
        ..Report::judged(judgement)
    }
}

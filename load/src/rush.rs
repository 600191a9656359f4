//! The rush: N buyers released at the same instant against one or more
//! servers, then judged from the database.
//!
//! How a buyer behaves:
//!
//! 1. opens its own connection (its own HTTP client) and checks `/health`,
//!    so that the connection exists *before* the start;
//! 2. waits at a barrier with every other buyer;
//! 3. posts one purchase to its server (buyers are dealt round-robin over
//!    the servers);
//! 4. on 503 `busy` clicks again, as a person would, after the server's
//!    `retry_after_ms` hint (or `Retry-After`, or a short random pause),
//!    at most `max_attempts` times;
//! 5. on a load balancer's 502 or 504 (its server died holding the
//!    purchase) clicks again with the same `Idempotency-Key`, if it sends
//!    one, and again on 409 `request_in_progress` (that key's first attempt
//!    is at work, or holds the key until its lease runs out);
//! 6. stops at the first other answer.
//!
//! The answers it reads (201, 409 `sold_out`/`already_purchased`, 503 `busy`
//! with `retry_after_ms`) are the API's, in docs/api.md; what it reports is
//! in docs/load.md.
//!
//! A buyer's latency runs from the barrier to its final answer, retries
//! included: it is what that person waited. The report splits it into
//! connecting, queueing and the server's own time ([`crate::split`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use sqlx::PgPool;
use ticket_core::api::input::IDEMPOTENCY_KEY;
use ticket_core::verify::{judge_run, Evidence, ExpectedOrders, Identities, Judgement};
use ticket_core::{db, TicketId};
use tokio::sync::Barrier;

use crate::client::{raise_fd_limit, timed_buyer_client, ConnectClock};
use crate::failures::Failures;
use crate::model::latency_cdf;
use crate::reset::reset_ticket;
pub use crate::reset::{Reset, Settle, SettleFuture};
// Other crates and tests name these through `rush`, where they were born.
pub use crate::client::open_database;
pub(crate) use crate::client::{busy_hint, idempotency_key, request_id_of, retry_after_of};
pub use crate::model::{Latency, Report};
use crate::scrape::{metrics_delta, scrape_metrics};
use crate::split::{split, BuyerTimes};

/// What to run.
#[derive(Debug, Clone)]
pub struct RushPlan {
    /// Base URLs of the servers; buyers are dealt round-robin over them.
    pub targets: Vec<String>,
    /// The database the servers share: reset before, judged after.
    pub database_url: String,
    /// The ticket to race for.
    pub ticket_id: i64,
    /// Units put on sale.
    pub tickets: i32,
    /// Concurrent buyers.
    pub buyers: usize,
    /// How many different people the buyers are. `None`: every buyer is a
    /// different person. `Some(1)`: one person clicking `buyers` times.
    pub distinct_users: Option<usize>,
    /// Seeds the user ids, so a run can be repeated exactly.
    pub seed: u64,
    /// Most purchase attempts per buyer (a 503 busy is retried).
    pub max_attempts: u32,
    /// Gives up on the whole rush after this long.
    pub timeout: Duration,
    /// Reset the ticket in the database first.
    pub reset: bool,
    /// Send an `Idempotency-Key` with every purchase (one per buyer, the
    /// same on each of its attempts).
    pub idempotency_keys: bool,
    /// The level's own reset (Level 4 fences Redis first); `None`:
    /// PostgreSQL alone.
    pub resetter: Option<Reset>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Waits for asynchronous persistence before the database is read.
    pub settle: Option<Settle>,
}

impl RushPlan {
    /// 1000 buyers for 100 units of ticket 1, the headline scenario.
    pub fn new(targets: Vec<String>, database_url: impl Into<String>) -> Self {
        Self {
            targets,
            database_url: database_url.into(),
            ticket_id: 1,
            tickets: 100,
            buyers: 1000,
            distinct_users: None,
            seed: 42,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: Duration::from_secs(300),
            reset: true,
            resetter: None,
            idempotency_keys: true,
            progress: false,
            settle: None,
        }
    }

    /// The user id of buyer `index`.
    fn user_ids(&self) -> Vec<i64> {
        let people = self.distinct_users.unwrap_or(self.buyers).max(1);
        let mut rng = StdRng::seed_from_u64(self.seed);
        // A random block of ids, so runs with different seeds use different
        // buyers; the block is well inside BIGINT.
        let base: i64 = rng.random_range(1..1_000_000_000) * 1_000_000;
        (0..self.buyers)
            .map(|i| base + 1 + (i % people) as i64)
            .collect()
    }
}

/// High enough that fail-fast strategies (NOWAIT, optimistic with no
/// retries) still sell out: their buyers simply click again.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 500;

/// Locks a std mutex, ignoring poison (a buyer that panicked leaves its
/// numbers valid).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct Tally {
    last_success: std::sync::Mutex<Option<std::time::SystemTime>>,
    /// The user of every 201, for the identity check.
    answered: std::sync::Mutex<Vec<i64>>,
    /// Users whose final answer was a failure.
    failed: std::sync::Mutex<Vec<i64>>,
    failures: Failures,
    succeeded: AtomicU64,
    sold_out: AtomicU64,
    already_purchased: AtomicU64,
    busy: AtomicU64,
    errors: AtomicU64,
    gave_up: AtomicU64,
    attempts: AtomicU64,
    server_errors: AtomicU64,
}

/// Outcome of one buyer.
enum Final {
    Bought,
    SoldOut,
    AlreadyPurchased,
    GaveUp,
    Error,
}

/// Where every buyer waits to be released at one instant, and that instant.
struct StartLine {
    barrier: Arc<Barrier>,
    release: Arc<std::sync::OnceLock<Instant>>,
}

/// The bar of answered buyers, or a hidden one without `--progress`.
fn progress_bar(plan: &RushPlan) -> ProgressBar {
    if !plan.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(plan.buyers as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} buyers answered {pos}/{len} [{bar:40}] {elapsed}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

/// One task per buyer: connect, wait at the start line, buy, and count the
/// final answer. Each task returns how long its buyer waited from the
/// release, and where that time went.
fn spawn_buyers(
    plan: &RushPlan,
    user_ids: &[i64],
    tally: &Arc<Tally>,
    start: &StartLine,
    progress: &ProgressBar,
) -> tokio::task::JoinSet<BuyerTimes> {
    let mut tasks = tokio::task::JoinSet::new();
    // Keys must not repeat across runs on one database: a key from an
    // earlier run would replay that run's answer.
    let run = rand::random::<u64>();
    for (index, user_id) in user_ids.iter().copied().enumerate() {
        let target = plan.targets[index % plan.targets.len()].clone();
        let buyer = Buyer {
            url: format!("{target}/tickets/{}/orders", plan.ticket_id),
            health: format!("{target}/health"),
            timeout: plan.timeout,
            user_id,
            idempotency_key: plan
                .idempotency_keys
                .then(|| idempotency_key(run, index as u64)),
            max_attempts: plan.max_attempts.max(1),
            seed: plan.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        };
        let barrier = start.barrier.clone();
        let release = start.release.clone();
        let tally = tally.clone();
        let progress = progress.clone();
        tasks.spawn(async move {
            let client = buyer.connect().await;
            barrier.wait().await;
            // One start instant for everyone: the first task through the
            // barrier takes it, so latencies and elapsed share a clock.
            let started = *release.get_or_init(Instant::now);
            let mut times = BuyerTimes::default();
            let outcome = match client {
                Ok((client, clock)) => {
                    let (opened, micros) = clock.read();
                    let outcome = buyer.buy(&client, &tally, &mut times).await;
                    let (opened_after, micros_after) = clock.read();
                    times.connections = opened_after - opened;
                    times.connect = Duration::from_micros(micros_after - micros);
                    outcome
                }
                Err(err) => {
                    let message = format!("cannot build an HTTP client: {err:#}");
                    tally
                        .failures
                        .record(crate::failures::kind::TRANSPORT, || message);
                    Final::Error
                }
            };
            if matches!(outcome, Final::Error) {
                lock(&tally.failed).push(buyer.user_id);
            }
            times.took = started.elapsed();
            let counter = match outcome {
                Final::Bought => &tally.succeeded,
                Final::SoldOut => &tally.sold_out,
                Final::AlreadyPurchased => &tally.already_purchased,
                Final::GaveUp => &tally.gave_up,
                Final::Error => &tally.errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            progress.inc(1);
            times
        });
    }
    tasks
}

/// Waits for every buyer, at most `timeout`, and gathers how long each
/// waited from the release (and where that time went).
async fn collect_waits(
    mut tasks: tokio::task::JoinSet<BuyerTimes>,
    timeout: Duration,
    buyers: usize,
) -> anyhow::Result<(Histogram<u64>, Vec<BuyerTimes>)> {
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
    let mut all = Vec::with_capacity(buyers);
    let collect = async {
        while let Some(joined) = tasks.join_next().await {
            let times = joined.context("a buyer task panicked")?;
            histogram.saturating_record(times.took.as_micros().max(1) as u64);
            all.push(times);
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(timeout, collect).await {
        Ok(result) => result?,
        Err(_) => {
            tasks.abort_all();
            anyhow::bail!(
                "the rush did not finish within {timeout:?} ({} of {buyers} buyers answered)",
                histogram.len()
            );
        }
    }
    Ok((histogram, all))
}

/// Reads what the database holds after the rush and judges it: who was
/// answered 201 against who holds a row, and every count beside.
async fn judge_from_database(
    pool: &PgPool,
    ticket: TicketId,
    plan: &RushPlan,
    distinct_users: usize,
    tally: &Tally,
) -> anyhow::Result<(db::DbTruth, Judgement)> {
    let truth = db::truth(pool, ticket).await?;
    let holders = db::order_holders(pool, ticket).await?;
    let judgement = judge_run(&Evidence {
        tickets: i64::from(plan.tickets),
        expected: ExpectedOrders::SellOut {
            distinct_buyers: distinct_users as i64,
        },
        identities: Identities::Known {
            answered: &lock(&tally.answered),
            failed: &lock(&tally.failed),
            holders: &holders,
        },
        errors: tally.errors.load(Ordering::Relaxed),
        truth: &truth,
    });
    Ok((truth, judgement))
}

/// Runs the rush and judges it from the database.
pub async fn rush(plan: &RushPlan) -> anyhow::Result<Report> {
    anyhow::ensure!(!plan.targets.is_empty(), "no servers to send buyers to");
    anyhow::ensure!(plan.buyers > 0, "at least one buyer is needed");
    anyhow::ensure!(plan.tickets >= 0, "tickets cannot be negative");
    let ticket = TicketId::parse(i128::from(plan.ticket_id))?;
    raise_fd_limit();

    let pool = db::connect(&plan.database_url, 2, Duration::from_secs(10)).await?;
    if plan.reset {
        reset_ticket(
            &pool,
            plan.resetter.as_ref(),
            ticket,
            "Rush concert",
            plan.tickets,
        )
        .await?;
    }

    // The servers' counters run from their start: read them now, so the
    // report shows what this round did (servers reused across rounds, or
    // started by someone else, have counted earlier runs too).
    let metrics_before = scrape_metrics(&plan.targets).await;
    let user_ids = plan.user_ids();
    let distinct_users = user_ids.iter().collect::<HashSet<_>>().len();
    let tally = Arc::new(Tally::default());
    let start = StartLine {
        // +1: this task also waits, to take the start time at the release.
        barrier: Arc::new(Barrier::new(plan.buyers + 1)),
        release: Arc::new(std::sync::OnceLock::new()),
    };
    let progress = progress_bar(plan);
    let tasks = spawn_buyers(plan, &user_ids, &tally, &start, &progress);
    start.barrier.wait().await;
    let started = *start.release.get_or_init(Instant::now);
    let (histogram, times) = collect_waits(tasks, plan.timeout, plan.buyers).await?;
    // On the shared clock, so never shorter than the slowest buyer's wait.
    let elapsed = started.elapsed();
    progress.finish_and_clear();

    let last_success = *lock(&tally.last_success);
    let persistence_lag_ms = match &plan.settle {
        Some(settle) => settle.run(&pool, ticket, last_success).await?,
        None => None,
    };
    let (truth, judgement) =
        judge_from_database(&pool, ticket, plan, distinct_users, &tally).await?;
    pool.close().await;
    let server_metrics = metrics_delta(&metrics_before, &scrape_metrics(&plan.targets).await);
    Ok(Report {
        distinct_users,
        db_orders: truth.orders,
        db_stock: truth.stock,
        db_total: truth.total,
        latency_ms: Latency::of(&histogram),
        latency_cdf_ms: latency_cdf(&histogram),
        latency_split_ms: split(&times, &histogram),
        server_metrics,
        persistence_lag_ms,
        ..counted(plan, &tally, elapsed, judgement)
    })
}

/// The report's answer counts and rates, with the judgement.
fn counted(plan: &RushPlan, tally: &Tally, elapsed: Duration, judgement: Judgement) -> Report {
    let succeeded = tally.succeeded.load(Ordering::Relaxed);
    let attempts = tally.attempts.load(Ordering::Relaxed);
    let seconds = elapsed.as_secs_f64().max(1e-9);
    Report {
        servers: plan.targets.len(),
        buyers: plan.buyers,
        tickets: plan.tickets,
        ticket_id: plan.ticket_id,
        succeeded,
        sold_out: tally.sold_out.load(Ordering::Relaxed),
        already_purchased: tally.already_purchased.load(Ordering::Relaxed),
        busy: tally.busy.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        gave_up: tally.gave_up.load(Ordering::Relaxed),
        attempts,
        server_errors: tally.server_errors.load(Ordering::Relaxed),
        error_kinds: tally.failures.snapshot(),
        elapsed_ms: elapsed.as_secs_f64() * 1000.0,
        throughput_rps: attempts as f64 / seconds,
        sales_per_sec: succeeded as f64 / seconds,
        ..Report::judged(judgement)
    }
}

struct Buyer {
    url: String,
    health: String,
    timeout: Duration,
    user_id: i64,
    /// Sent with every attempt of this buyer: a sale whose answer was lost
    /// (a 503 or a dropped connection after the server sold) is replayed as
    /// its 201 on the next attempt, not refused as `already_purchased`.
    idempotency_key: Option<String>,
    max_attempts: u32,
    seed: u64,
}

impl Buyer {
    /// One client per buyer, with its connection opened before the start,
    /// and the clock that times the connections it opens.
    async fn connect(&self) -> anyhow::Result<(reqwest::Client, ConnectClock)> {
        let clock = ConnectClock::default();
        let client = timed_buyer_client(self.timeout, clock.clone())?;
        // A failed warm-up is not fatal: the purchase will try to connect
        // again, and count an error if that fails too.
        let _ = client.get(&self.health).send().await;
        Ok((client, clock))
    }

    /// Files an answer this buyer asks again about (see [`Buyer::buy`]).
    fn note_retried(&self, tally: &Tally, status: u16, request_id: Option<&str>) {
        use crate::failures::kind::{GATEWAY, IN_PROGRESS};
        let kind = if status == 409 { IN_PROGRESS } else { GATEWAY };
        let id = request_id.unwrap_or("none");
        tally.failures.record(kind, || {
            format!("{}: HTTP {status} (x-request-id {id}), retried", self.url)
        });
    }

    /// Files a sale: the buyer and when the last 201 came.
    fn note_bought(&self, tally: &Tally) {
        let now = std::time::SystemTime::now();
        let mut last = lock(&tally.last_success);
        *last = Some(last.map_or(now, |t| t.max(now)));
        lock(&tally.answered).push(self.user_id);
    }

    async fn buy(&self, client: &reqwest::Client, tally: &Tally, times: &mut BuyerTimes) -> Final {
        let mut rng = StdRng::seed_from_u64(self.seed);
        for _ in 0..self.max_attempts {
            tally.attempts.fetch_add(1, Ordering::Relaxed);
            let mut request = client.post(&self.url);
            if let Some(key) = &self.idempotency_key {
                request = request.header(IDEMPOTENCY_KEY, key);
            }
            let response = request
                .json(&serde_json::json!({ "user_id": self.user_id }))
                .send()
                .await;
            let response = match response {
                Ok(response) => response,
                Err(err) => {
                    tally.failures.transport(&self.url, &err);
                    return Final::Error;
                }
            };
            let status = response.status().as_u16();
            times.add_server_time(response.headers());
            let request_id = request_id_of(&response);
            let retry_after = retry_after_of(&response);
            let text = match response.text().await {
                Ok(text) => text,
                // The sale was answered; only its body was lost.
                Err(_) if status == 201 => String::new(),
                Err(err) => {
                    tally.failures.transport(&self.url, &err);
                    return Final::Error;
                }
            };
            let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let code = body.get("code").and_then(|c| c.as_str()).unwrap_or("");
            match (status, code) {
                (201, _) => {
                    self.note_bought(tally);
                    return Final::Bought;
                }
                (409, "sold_out") => return Final::SoldOut,
                (409, "already_purchased") => return Final::AlreadyPurchased,
                (503, _) => {
                    tally.busy.fetch_add(1, Ordering::Relaxed);
                    let hint = busy_hint(&body, retry_after);
                    // Half to one and a half times the hint: buyers who were
                    // told the same thing do not all come back together.
                    let pause = hint.mul_f64(rng.random_range(0.5..1.5));
                    tokio::time::sleep(pause).await;
                }
                // Asked again with the same key: a balancer's 502/504 (its
                // server died holding the purchase, which it rightly did not
                // resend: it may have sold), or 409 request_in_progress (the
                // key's first attempt is at work, or died with its server
                // and holds the key until its lease runs out). A sale
                // already made is then replayed as its 201.
                (502 | 504, _) | (409, "request_in_progress") if self.idempotency_key.is_some() => {
                    self.note_retried(tally, status, request_id.as_deref());
                    let pause = Duration::from_millis(20).mul_f64(rng.random_range(0.5..1.5));
                    tokio::time::sleep(pause).await;
                }
                (500..=599, _) => {
                    tally.server_errors.fetch_add(1, Ordering::Relaxed);
                    let id = request_id.as_deref();
                    tally.failures.answer(&self.url, status, id, &text);
                    return Final::Error;
                }
                _ => {
                    let id = request_id.as_deref();
                    tally.failures.answer(&self.url, status, id, &text);
                    return Final::Error;
                }
            }
        }
        Final::GaveUp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_distinct_unless_asked_otherwise() {
        let mut plan = RushPlan::new(vec!["http://x".into()], "postgres://x");
        let ids = plan.user_ids();
        assert_eq!(ids.len(), 1000);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 1000);
        assert!(ids.iter().all(|&id| id > 0));
        plan.distinct_users = Some(1);
        plan.buyers = 20;
        assert_eq!(plan.user_ids().iter().collect::<HashSet<_>>().len(), 1);
    }

    #[test]
    fn the_same_seed_gives_the_same_buyers() {
        let plan = RushPlan::new(vec!["http://x".into()], "postgres://x");
        assert_eq!(plan.user_ids(), plan.user_ids());
        let other = RushPlan {
            seed: 7,
            ..plan.clone()
        };
        assert_ne!(plan.user_ids(), other.user_ids());
    }
}

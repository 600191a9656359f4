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
//! 5. stops at the first other answer.
//!
//! A buyer's latency runs from the barrier to its final answer, retries
//! included: it is what that person waited.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use ticket_core::verify::{judge_run, Evidence, ExpectedOrders, Identities, Judgement};
use ticket_core::{db, TicketId, Verdict};
use tokio::sync::Barrier;

use crate::failures::{FailureKind, Failures};

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
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Waits for asynchronous persistence before the database is read.
    pub settle: Option<Settle>,
}

/// A step that waits until every answered sale is in PostgreSQL (see
/// [`crate::levels::SettleFn`]).
#[derive(Clone)]
pub struct Settle(pub Arc<dyn Fn() -> SettleFuture + Send + Sync>);

/// What a [`Settle`] step returns.
pub type SettleFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Settle(..)")
    }
}

impl Settle {
    /// Runs the step, and measures the persistence lag: from the last 201
    /// to the newest order row in PostgreSQL.
    pub async fn run(
        &self,
        pool: &PgPool,
        ticket: TicketId,
        last_success: Option<std::time::SystemTime>,
    ) -> anyhow::Result<Option<f64>> {
        (self.0)().await.context("waiting for persistence")?;
        let newest: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM max(created_at))::float8 FROM ticket_orders WHERE ticket_id = $1",
        )
        .bind(ticket.get())
        .fetch_one(pool)
        .await
        .context("read the newest order")?;
        Ok(match (newest, last_success) {
            (Some(newest), Some(last)) => {
                let last = last
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                Some(((newest - last) * 1000.0).max(0.0))
            }
            _ => None,
        })
    }
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

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest buyer.
    pub max: f64,
}

/// The percentiles drawn in latency plots.
const CDF_PERCENTILES: &[f64] = &[
    0.0, 1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.9, 100.0,
];

/// `[percentile, milliseconds]` points of a latency distribution, for plots.
pub fn latency_cdf(histogram: &Histogram<u64>) -> Vec<[f64; 2]> {
    if histogram.is_empty() {
        return Vec::new();
    }
    CDF_PERCENTILES
        .iter()
        .map(|&p| [p, histogram.value_at_percentile(p) as f64 / 1000.0])
        .collect()
}

/// Everything a rush measured. Serialized as the `--json` output; the field
/// names are part of the contract (DESIGN.md, "Load tool").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The level, when known.
    pub level: Option<u8>,
    /// The strategy, when known.
    pub strategy: Option<String>,
    /// How many servers the buyers were spread over.
    pub servers: usize,
    /// Concurrent buyers.
    pub buyers: usize,
    /// Units put on sale.
    pub tickets: i32,
    /// Different people among the buyers.
    pub distinct_users: usize,
    /// The ticket raced for.
    pub ticket_id: i64,
    /// The servers' think time, when the caller set it.
    pub think_time_ms: Option<u64>,

    /// Buyers answered 201.
    pub succeeded: u64,
    /// Buyers answered 409 sold_out.
    pub sold_out: u64,
    /// Buyers answered 409 already_purchased.
    pub already_purchased: u64,
    /// 503 busy answers (every attempt counts).
    pub busy: u64,
    /// Buyers who got anything else: 404, 5xx other than 503, a transport
    /// error, a timeout.
    pub errors: u64,
    /// Buyers still busy after `max_attempts`.
    pub gave_up: u64,
    /// Purchase requests sent, retries included.
    pub attempts: u64,
    /// 5xx answers other than 503 (always a bug).
    pub server_errors: u64,
    /// Failed answers by kind (`refused`, `timeout`, `4xx`, `5xx`,
    /// `transport`), each with the first message seen.
    #[serde(default)]
    pub error_kinds: BTreeMap<String, FailureKind>,

    /// Order rows in the database.
    pub db_orders: i64,
    /// The stock column after the run.
    pub db_stock: i32,
    /// `tickets.total` after the run: must be what the run put on sale.
    #[serde(default)]
    pub db_total: i32,
    /// Orders beyond the tickets on sale.
    pub oversold: i64,
    /// 201 answers beyond the tickets on sale, whether or not the database
    /// took them (distinct from `oversold`, which counts rows).
    #[serde(default)]
    pub oversold_answers: i64,
    /// Rows beyond one per buyer.
    pub duplicate_orders: i64,
    /// Buyers answered 201 who hold no order row.
    #[serde(default)]
    pub answered_without_order: i64,
    /// Order rows whose buyer was never answered 201 (and did not lose the
    /// answer to an error).
    #[serde(default)]
    pub orders_without_answer: i64,
    /// The judgement.
    pub verdict: Verdict,
    /// What broke, in words.
    pub problems: Vec<String>,

    /// Per-buyer latency, barrier to final answer.
    pub latency_ms: Latency,
    /// The whole latency distribution, `[percentile, ms]`, for plots.
    #[serde(default)]
    pub latency_cdf_ms: Vec<[f64; 2]>,
    /// Barrier to last answer.
    pub elapsed_ms: f64,
    /// HTTP answers per second (attempts / elapsed).
    pub throughput_rps: f64,
    /// Successful purchases per second.
    pub sales_per_sec: f64,

    /// The servers' own counters after the run, summed over servers:
    /// `event:retry`, `event:conflict`, `purchases:created`...
    pub server_metrics: BTreeMap<String, f64>,

    /// `sell_out` (N buyers race for a small stock) or `sustained` (a fixed
    /// number of buyers buy for a fixed time from a stock that never runs
    /// out; latency is then per request).
    #[serde(default = "sell_out")]
    pub mode: String,
    /// Ceilings measured in the same run, for sustained runs.
    #[serde(default)]
    pub ceilings: Vec<crate::sustain::Ceiling>,
    /// For levels that persist asynchronously: from the last 201 to the
    /// newest order row in PostgreSQL, in milliseconds.
    #[serde(default)]
    pub persistence_lag_ms: Option<f64>,
    /// Peak memory of the load process and of each server it started.
    #[serde(default)]
    pub memory: Option<Memory>,
    /// The services' durability settings as they reported them, e.g.
    /// `PostgreSQL fsync=on full_page_writes=on synchronous_commit=on`
    /// (filled in by `load run`; empty when not read).
    #[serde(default)]
    pub settings: String,
}

/// Peak resident memory (VmHWM), in MiB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// The load tool itself (all buyers' connections live here).
    pub load_peak_rss_mib: f64,
    /// Each server the load tool started, in order.
    pub servers_peak_rss_mib: Vec<f64>,
}

/// A process's peak resident memory in MiB, from /proc (Linux).
pub fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn sell_out() -> String {
    "sell_out".to_owned()
}

/// Locks a std mutex, ignoring poison (a buyer that panicked leaves its
/// numbers valid).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Report {
    /// A report holding only `judgement`'s fields, for the rest to be
    /// filled in with `..Report::judged(judgement)`.
    pub fn judged(judgement: Judgement) -> Self {
        let Judgement {
            verdict,
            oversold,
            oversold_answers,
            duplicate_orders,
            answered_without_order,
            orders_without_answer,
            problems,
        } = judgement;
        Self {
            level: None,
            strategy: None,
            servers: 0,
            buyers: 0,
            tickets: 0,
            distinct_users: 0,
            ticket_id: 0,
            think_time_ms: None,
            succeeded: 0,
            sold_out: 0,
            already_purchased: 0,
            busy: 0,
            errors: 0,
            gave_up: 0,
            attempts: 0,
            server_errors: 0,
            error_kinds: BTreeMap::new(),
            db_orders: 0,
            db_stock: 0,
            db_total: 0,
            oversold,
            oversold_answers,
            duplicate_orders,
            answered_without_order,
            orders_without_answer,
            verdict,
            problems,
            latency_ms: Latency::default(),
            latency_cdf_ms: Vec::new(),
            elapsed_ms: 0.0,
            throughput_rps: 0.0,
            sales_per_sec: 0.0,
            server_metrics: BTreeMap::new(),
            mode: sell_out(),
            ceilings: Vec::new(),
            persistence_lag_ms: None,
            memory: None,
            settings: String::new(),
        }
    }

    /// This run's sales per second as a fraction of the named ceiling.
    pub fn ratio_to(&self, ceiling: &str) -> Option<f64> {
        self.ceilings
            .iter()
            .find(|c| c.name == ceiling && c.ops_per_sec > 0.0)
            .map(|c| self.sales_per_sec / c.ops_per_sec)
    }
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

/// Raises this process's open-file limit to its hard limit: every buyer
/// holds a socket, and in-process servers hold the other end.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
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
        db::reset_ticket(&pool, ticket, "Rush concert", plan.tickets).await?;
    }

    // The servers' counters run from their start: read them now, so the
    // report shows what this round did (servers reused across rounds, or
    // started by someone else, have counted earlier runs too).
    let metrics_before = scrape_metrics(&plan.targets).await;
    let user_ids = plan.user_ids();
    let distinct_users = user_ids.iter().collect::<HashSet<_>>().len();
    let tally = Arc::new(Tally::default());
    // +1: this task also waits, to take the start time at the release.
    let barrier = Arc::new(Barrier::new(plan.buyers + 1));
    let progress = if plan.progress {
        let bar = ProgressBar::new(plan.buyers as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} buyers answered {pos}/{len} [{bar:40}] {elapsed}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let release = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut tasks = tokio::task::JoinSet::new();
    for (index, user_id) in user_ids.iter().copied().enumerate() {
        let target = plan.targets[index % plan.targets.len()].clone();
        let buyer = Buyer {
            url: format!("{target}/tickets/{}/orders", plan.ticket_id),
            health: format!("{target}/health"),
            timeout: plan.timeout,
            user_id,
            max_attempts: plan.max_attempts.max(1),
            seed: plan.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        };
        let barrier = barrier.clone();
        let tally = tally.clone();
        let progress = progress.clone();
        let release = release.clone();
        tasks.spawn(async move {
            let client = buyer.connect().await;
            barrier.wait().await;
            // One start instant for everyone: the first task through the
            // barrier takes it, so latencies and elapsed share a clock.
            let started = *release.get_or_init(Instant::now);
            let outcome = match client {
                Ok(client) => buyer.buy(&client, &tally).await,
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
            let took = started.elapsed();
            let counter = match outcome {
                Final::Bought => &tally.succeeded,
                Final::SoldOut => &tally.sold_out,
                Final::AlreadyPurchased => &tally.already_purchased,
                Final::GaveUp => &tally.gave_up,
                Final::Error => &tally.errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            progress.inc(1);
            took
        });
    }

    barrier.wait().await;
    let started = *release.get_or_init(Instant::now);
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
    let collect = async {
        while let Some(joined) = tasks.join_next().await {
            let took = joined.context("a buyer task panicked")?;
            histogram.saturating_record(took.as_micros().max(1) as u64);
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(plan.timeout, collect).await {
        Ok(result) => result?,
        Err(_) => {
            tasks.abort_all();
            anyhow::bail!(
                "the rush did not finish within {:?} ({} of {} buyers answered)",
                plan.timeout,
                histogram.len(),
                plan.buyers
            );
        }
    }
    // On the shared clock, so never shorter than the slowest buyer's wait.
    let elapsed = started.elapsed();
    progress.finish_and_clear();

    let last_success = *lock(&tally.last_success);
    let persistence_lag_ms = match &plan.settle {
        Some(settle) => settle.run(&pool, ticket, last_success).await?,
        None => None,
    };
    let truth = db::truth(&pool, ticket).await?;
    let holders = db::order_holders(&pool, ticket).await?;
    pool.close().await;
    let succeeded = tally.succeeded.load(Ordering::Relaxed);
    let errors = tally.errors.load(Ordering::Relaxed);
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
        errors,
        truth: &truth,
    });
    let server_metrics = metrics_delta(&metrics_before, &scrape_metrics(&plan.targets).await);
    let attempts = tally.attempts.load(Ordering::Relaxed);
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(Report {
        servers: plan.targets.len(),
        buyers: plan.buyers,
        tickets: plan.tickets,
        distinct_users,
        ticket_id: plan.ticket_id,
        succeeded,
        sold_out: tally.sold_out.load(Ordering::Relaxed),
        already_purchased: tally.already_purchased.load(Ordering::Relaxed),
        busy: tally.busy.load(Ordering::Relaxed),
        errors,
        gave_up: tally.gave_up.load(Ordering::Relaxed),
        attempts,
        server_errors: tally.server_errors.load(Ordering::Relaxed),
        error_kinds: tally.failures.snapshot(),
        db_orders: truth.orders,
        db_stock: truth.stock,
        db_total: truth.total,
        latency_ms: Latency {
            p50: ms(0.50),
            p95: ms(0.95),
            p99: ms(0.99),
            max: histogram.max() as f64 / 1000.0,
        },
        latency_cdf_ms: latency_cdf(&histogram),
        elapsed_ms: elapsed.as_secs_f64() * 1000.0,
        throughput_rps: attempts as f64 / seconds,
        sales_per_sec: succeeded as f64 / seconds,
        server_metrics,
        persistence_lag_ms,
        ..Report::judged(judgement)
    })
}

struct Buyer {
    url: String,
    health: String,
    timeout: Duration,
    user_id: i64,
    max_attempts: u32,
    seed: u64,
}

/// One buyer's own HTTP client: one connection, kept, no proxy. Sustained
/// runs and ceilings use the same.
pub(crate) fn buyer_client() -> reqwest::Result<reqwest::Client> {
    buyer_client_waiting(REQUEST_TIMEOUT)
}

/// A buyer's client whose requests give up after `timeout`.
fn buyer_client_waiting(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(timeout)
        .no_proxy()
        .build()
}

/// How long one request of a sustained run may take before it counts as an
/// error. A sell-out's buyers wait as long as the rush may last (its
/// `timeout`): a slow answer there is the server's latency, which the report
/// shows, not a failure; a server that never answers ends the rush.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

impl Buyer {
    /// One client per buyer, with its connection opened before the start.
    async fn connect(&self) -> anyhow::Result<reqwest::Client> {
        let client = buyer_client_waiting(self.timeout)?;
        // A failed warm-up is not fatal: the purchase will try to connect
        // again, and count an error if that fails too.
        let _ = client.get(&self.health).send().await;
        Ok(client)
    }

    async fn buy(&self, client: &reqwest::Client, tally: &Tally) -> Final {
        let mut rng = StdRng::seed_from_u64(self.seed);
        for _ in 0..self.max_attempts {
            tally.attempts.fetch_add(1, Ordering::Relaxed);
            let response = client
                .post(&self.url)
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
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs);
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
                    let now = std::time::SystemTime::now();
                    let mut last = lock(&tally.last_success);
                    *last = Some(last.map_or(now, |t| t.max(now)));
                    lock(&tally.answered).push(self.user_id);
                    return Final::Bought;
                }
                (409, "sold_out") => return Final::SoldOut,
                (409, "already_purchased") => return Final::AlreadyPurchased,
                (503, _) => {
                    tally.busy.fetch_add(1, Ordering::Relaxed);
                    let hint = body
                        .get("retry_after_ms")
                        .and_then(|v| v.as_u64())
                        .map(Duration::from_millis)
                        .or(retry_after)
                        .unwrap_or(Duration::from_millis(20));
                    // Half to one and a half times the hint: buyers who were
                    // told the same thing do not all come back together.
                    let pause = hint.mul_f64(rng.random_range(0.5..1.5));
                    tokio::time::sleep(pause).await;
                }
                (500..=599, _) => {
                    tally.server_errors.fetch_add(1, Ordering::Relaxed);
                    tally.failures.answer(&self.url, status, &text);
                    return Final::Error;
                }
                _ => {
                    tally.failures.answer(&self.url, status, &text);
                    return Final::Error;
                }
            }
        }
        Final::GaveUp
    }
}

/// Reads every server's `/metrics` and sums the counters the report shows.
/// A server that does not answer adds nothing (the report still stands on
/// the database).
pub async fn scrape_metrics(targets: &[String]) -> BTreeMap<String, f64> {
    let client = reqwest::Client::new();
    let mut totals = BTreeMap::new();
    for target in targets {
        let Ok(response) = client
            .get(format!("{target}/metrics"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        for (key, value) in counters(&text) {
            *totals.entry(key).or_insert(0.0) += value;
        }
    }
    totals
}

/// What the counters did between two scrapes: `after - before`, per key.
pub fn metrics_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(key, value)| (key.clone(), value - before.get(key).copied().unwrap_or(0.0)))
        .collect()
}

/// Picks the purchase and strategy-event counters out of Prometheus text, as
/// `purchases:<outcome>` and `event:<event>`.
pub fn counters(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        for (metric, label, prefix) in [
            ("ticket_rush_purchases_total", "outcome=\"", "purchases"),
            ("ticket_rush_strategy_events_total", "event=\"", "event"),
        ] {
            if let Some(labels) = series
                .strip_prefix(metric)
                .and_then(|r| r.strip_prefix('{'))
            {
                if let Some(rest) = labels.split(label).nth(1) {
                    if let Some(name) = rest.split('"').next() {
                        out.push((format!("{prefix}:{name}"), value));
                    }
                }
            }
        }
    }
    out
}

/// Opens a small pool to the rush's database, for callers that need to look
/// at it themselves.
pub async fn open_database(url: &str) -> anyhow::Result<PgPool> {
    db::connect(url, 2, Duration::from_secs(10)).await
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

    #[test]
    fn server_counters_are_reported_per_round() {
        let before = BTreeMap::from([("event:retry".to_owned(), 7.0)]);
        let after = BTreeMap::from([
            ("event:retry".to_owned(), 10.0),
            ("purchases:created".to_owned(), 100.0),
        ]);
        let delta = metrics_delta(&before, &after);
        assert_eq!(delta["event:retry"], 3.0);
        assert_eq!(delta["purchases:created"], 100.0);
    }

    #[test]
    fn counters_are_read_from_prometheus_text() {
        let text = "# HELP x\n\
            ticket_rush_purchases_total{outcome=\"created\"} 100\n\
            ticket_rush_strategy_events_total{event=\"retry\"} 7\n\
            ticket_rush_purchase_duration_seconds_sum 1.5\n";
        assert_eq!(
            counters(text),
            vec![
                ("purchases:created".to_owned(), 100.0),
                ("event:retry".to_owned(), 7.0)
            ]
        );
    }
}

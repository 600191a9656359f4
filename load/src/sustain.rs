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
//! - [`redis_lua`]: a stock-decrementing Lua script issued straight to Redis.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use ticket_core::verify::{judge_run, Evidence, ExpectedOrders, Identities};
use ticket_core::{db, TicketId};

use ticket_core::api::input::IDEMPOTENCY_KEY;

use crate::client::buyer_client;
use crate::failures::Failures;
pub use crate::model::Ceiling;
use crate::model::{latency_cdf, Latency, Report};
use crate::rush::idempotency_key;
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
        let ms = |q: f64| self.histogram.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            p50: ms(0.50),
            p95: ms(0.95),
            p99: ms(0.99),
            max: self.histogram.max() as f64 / 1000.0,
        }
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
    }
}

/// Units put on sale for sustained runs and ceilings: far more than any run
/// here can sell.
pub const SUSTAINED_STOCK: i32 = 100_000_000;

/// Where user ids of sustained runs start; each purchase takes the next one.
const SUSTAINED_FIRST_USER: i64 = 7_000_000_000_000;

/// The purchase transaction straight to PostgreSQL: `concurrency`
/// connections, each looping BEGIN; conditional UPDATE; INSERT; COMMIT for
/// `duration`, on its own ticket.
pub async fn postgres_purchase(
    database_url: &str,
    ticket_id: i64,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Ceiling> {
    let ticket = TicketId::parse(i128::from(ticket_id))?;
    let pool = db::connect(
        database_url,
        u32::try_from(concurrency).unwrap_or(u32::MAX).max(1),
        Duration::from_secs(30),
    )
    .await?;
    db::reset_ticket(&pool, ticket, "Ceiling", SUSTAINED_STOCK).await?;
    let next_user = Arc::new(AtomicI64::new(SUSTAINED_FIRST_USER));
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let pool = pool.clone();
        let next_user = next_user.clone();
        workers.spawn(async move {
            let mut meter = Meter::new();
            let Ok(mut conn) = pool.acquire().await else {
                meter.errors += 1;
                return meter;
            };
            while Instant::now() < deadline {
                let user = next_user.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let outcome = async {
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    let updated = sqlx::query(
                        "UPDATE tickets SET stock = stock - 1, version = version + 1 \
                         WHERE id = $1 AND stock > 0",
                    )
                    .bind(ticket_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    sqlx::query("INSERT INTO ticket_orders (ticket_id, user_id) VALUES ($1, $2)")
                        .bind(ticket_id)
                        .bind(user)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    anyhow::Ok(updated)
                }
                .await;
                match outcome {
                    Ok(1) => {
                        meter.ok += 1;
                        meter.record(t.elapsed());
                    }
                    _ => meter.errors += 1,
                }
            }
            meter
        });
    }
    let meter = collect(&mut workers).await?;
    let elapsed = started.elapsed();
    pool.close().await;
    Ok(ceiling("postgres_purchase", concurrency, &meter, elapsed))
}

/// `GET /livez` on `targets`, `concurrency` clients dealt round-robin over
/// them (as the buyers are), for `duration`.
pub async fn http_noop(
    targets: &[String],
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Ceiling> {
    anyhow::ensure!(!targets.is_empty(), "no server to measure HTTP on");
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for index in 0..concurrency {
        let url = format!("{}/livez", targets[index % targets.len()]);
        workers.spawn(async move {
            let mut meter = Meter::new();
            let client = match buyer_client() {
                Ok(client) => client,
                Err(_) => {
                    meter.errors += 1;
                    return meter;
                }
            };
            while Instant::now() < deadline {
                let t = Instant::now();
                let answered = match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                if answered {
                    meter.ok += 1;
                    meter.record(t.elapsed());
                } else {
                    meter.errors += 1;
                }
            }
            meter
        });
    }
    let meter = collect(&mut workers).await?;
    Ok(Ceiling {
        servers: targets.len(),
        ..ceiling("http_noop", concurrency, &meter, started.elapsed())
    })
}

/// The Lua script of the Redis ceiling: decrement stock if any is left.
const REDIS_DECREMENT: &str = r"
local stock = tonumber(redis.call('GET', KEYS[1]) or '0')
if stock <= 0 then return -1 end
return redis.call('DECR', KEYS[1])
";

/// A stock-decrementing Lua script straight to Redis, `concurrency`
/// connections, for `duration`.
pub async fn redis_lua(
    redis_url: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Ceiling> {
    let client = redis::Client::open(redis_url).context("bad Redis URL")?;
    let key = format!("ticket-rush:ceiling:{}", rand::random::<u32>());
    let mut setup = client
        .get_multiplexed_async_connection()
        .await
        .context("cannot connect to Redis")?;
    redis::cmd("SET")
        .arg(&key)
        .arg(SUSTAINED_STOCK)
        .query_async::<()>(&mut setup)
        .await?;
    let script = redis::Script::new(REDIS_DECREMENT);
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let key = key.clone();
        let script = script.clone();
        workers.spawn(async move {
            let mut meter = Meter::new();
            // One connection per worker, like one connection per buyer.
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                meter.errors += 1;
                return meter;
            };
            while Instant::now() < deadline {
                let t = Instant::now();
                match script.key(&key).invoke_async::<i64>(&mut conn).await {
                    Ok(left) if left >= 0 => {
                        meter.ok += 1;
                        meter.record(t.elapsed());
                    }
                    _ => meter.errors += 1,
                }
            }
            meter
        });
    }
    let meter = collect(&mut workers).await?;
    let elapsed = started.elapsed();
    let _ = redis::cmd("DEL")
        .arg(&key)
        .query_async::<()>(&mut setup)
        .await;
    Ok(ceiling("redis_lua", concurrency, &meter, elapsed))
}

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
    /// Concurrent buyers (each one loops: buy, then buy again as someone new).
    pub concurrency: usize,
    /// How long to keep buying.
    pub duration: Duration,
    /// Waits for asynchronous persistence before the database is read.
    pub settle: Option<crate::rush::Settle>,
    /// The level's own reset; `None`: PostgreSQL alone.
    pub resetter: Option<crate::reset::Reset>,
}

/// Runs a sustained purchase load and judges it from the database.
pub async fn sustain(plan: &SustainPlan) -> anyhow::Result<Report> {
    anyhow::ensure!(!plan.targets.is_empty(), "no servers to send buyers to");
    let ticket = TicketId::parse(i128::from(plan.ticket_id))?;
    crate::client::raise_fd_limit();
    let pool = db::connect(&plan.database_url, 2, Duration::from_secs(10)).await?;
    crate::reset::reset_ticket(
        &pool,
        plan.resetter.as_ref(),
        ticket,
        "Sustained",
        SUSTAINED_STOCK,
    )
    .await?;
    let metrics_before = scrape_metrics(&plan.targets).await;
    let shared = Arc::new(Shared {
        run: rand::random(),
        next_user: AtomicI64::new(SUSTAINED_FIRST_USER),
        counts: Counts::default(),
        failures: Failures::default(),
        last_success: std::sync::Mutex::new(None),
    });
    let started = Instant::now();
    let deadline = started + plan.duration;
    let mut workers = tokio::task::JoinSet::new();
    for index in 0..plan.concurrency {
        let url = format!(
            "{}/tickets/{}/orders",
            plan.targets[index % plan.targets.len()],
            plan.ticket_id
        );
        workers.spawn(buy_until(url, deadline, shared.clone()));
    }
    let meter = collect(&mut workers).await?;
    let elapsed = started.elapsed();
    // The lag runs from the last 201 the buyers saw, not from now: the
    // buyers may have stopped well after the last sale was answered.
    let last_success = *shared
        .last_success
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let persistence_lag_ms = match &plan.settle {
        Some(settle) => settle.run(&pool, ticket, last_success).await?,
        None => None,
    };
    let truth = db::truth(&pool, ticket).await?;
    let holders = db::order_holders(&pool, ticket).await?;
    pool.close().await;
    let counts = &shared.counts;
    let succeeded = counts.succeeded.load(Ordering::Relaxed);
    let errors = counts.errors.load(Ordering::Relaxed);
    let judgement = judge_run(&Evidence {
        tickets: i64::from(SUSTAINED_STOCK),
        expected: ExpectedOrders::Sustained,
        identities: Identities::Known {
            answered: &meter.answered,
            failed: &meter.failed,
            holders: &holders,
        },
        errors,
        truth: &truth,
    });
    let attempts = counts.attempts.load(Ordering::Relaxed);
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let metrics_after = scrape_metrics(&plan.targets).await;
    Ok(Report {
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
        server_metrics: metrics_delta(&metrics_before, &metrics_after),
        mode: "sustained".to_owned(),
        persistence_lag_ms,
        ..Report::judged(judgement)
    })
}

/// What every worker of a sustained run shares.
struct Shared {
    /// This run's number, in every idempotency key it sends.
    run: u64,
    next_user: AtomicI64,
    counts: Counts,
    failures: Failures,
    last_success: std::sync::Mutex<Option<std::time::SystemTime>>,
}

/// One worker: buys at `url` until `deadline`, a new person after every
/// final answer; a busy or failed person clicks again.
async fn buy_until(url: String, deadline: Instant, shared: Arc<Shared>) -> Meter {
    let mut meter = Meter::new();
    let client = match buyer_client() {
        Ok(client) => client,
        Err(err) => {
            shared.failures.transport(&url, &err);
            shared.counts.errors.fetch_add(1, Ordering::Relaxed);
            meter.errors += 1;
            return meter;
        }
    };
    let counts = &shared.counts;
    let mut user = shared.next_user.fetch_add(1, Ordering::Relaxed);
    let mut user_failed = false;
    while Instant::now() < deadline {
        let t = Instant::now();
        let answer = client
            .post(&url)
            // One key per person, the same on every click of theirs.
            .header(IDEMPOTENCY_KEY, idempotency_key(shared.run, user as u64))
            .json(&serde_json::json!({ "user_id": user }))
            .send()
            .await;
        meter.record(t.elapsed());
        counts.attempts.fetch_add(1, Ordering::Relaxed);
        let response = match answer {
            Ok(response) => response,
            Err(err) => {
                shared.failures.transport(&url, &err);
                counts.errors.fetch_add(1, Ordering::Relaxed);
                user_failed = true;
                continue;
            }
        };
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        match status {
            201 => {
                counts.succeeded.fetch_add(1, Ordering::Relaxed);
                meter.ok += 1;
                meter.answered.push(user);
                let now = std::time::SystemTime::now();
                let mut last = shared
                    .last_success
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                *last = Some(last.map_or(now, |t| t.max(now)));
                drop(last);
                user = shared.next_user.fetch_add(1, Ordering::Relaxed);
                user_failed = false;
                continue;
            }
            // Busy: the same person clicks again, after a short pause.
            503 => {
                counts.busy.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            409 => {
                counts.conflicts.fetch_add(1, Ordering::Relaxed);
            }
            500..=599 => {
                counts.server_errors.fetch_add(1, Ordering::Relaxed);
                counts.errors.fetch_add(1, Ordering::Relaxed);
                shared.failures.answer(&url, status, &body);
                user_failed = true;
                continue;
            }
            _ => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                shared.failures.answer(&url, status, &body);
                user_failed = true;
                continue;
            }
        }
        // A final answer other than 201: the next buyer is someone new.
        if user_failed {
            meter.failed.push(user);
        }
        user = shared.next_user.fetch_add(1, Ordering::Relaxed);
        user_failed = false;
    }
    if user_failed {
        meter.failed.push(user);
    }
    meter
}

#[derive(Default)]
struct Counts {
    attempts: std::sync::atomic::AtomicU64,
    succeeded: std::sync::atomic::AtomicU64,
    busy: std::sync::atomic::AtomicU64,
    conflicts: std::sync::atomic::AtomicU64,
    errors: std::sync::atomic::AtomicU64,
    server_errors: std::sync::atomic::AtomicU64,
}

//! Lock+unlock cycles per second: Level 3's Redis lock against the `rslock`
//! crate, on the same Redis, in the same run.
//!
//! ```text
//! cargo bench -p level3 --bench lock
//! ```
//!
//! Uses `REDIS_URL` if set, otherwise a throwaway `redis-server`. Two parts:
//!
//! 1. **criterion** measures cycles per second, uncontended (one task, one
//!    lock) and contended (8 tasks on one lock, spread over two clients as
//!    two servers would be).
//! 2. **a fairness report** (printed after criterion's) runs each contender
//!    for a fixed time with 8 contending tasks, first with an empty critical
//!    section, then with a 1 ms one (standing in for a sale's database
//!    transaction), and prints each task's
//!    acquisitions, the longest wait, how often a waiter gave up, and how
//!    many Redis commands the clients sent per acquisition (counted by Redis
//!    itself, `INFO commandstats`).
//!
//! Contenders: `level3/pubsub`, `level3/spin` (this crate; a fixed 5 s lease,
//! like rslock's TTL, plus `level3/pubsub-watchdog` uncontended to show what
//! the watchdog costs), `rslock/default` (its default retries: 3 tries, a
//! random 0-200 ms pause between them, looped until it gets the lock, as
//! `LockManager::acquire` does) and `rslock/tuned` (random 0-10 ms pauses).
//!
//! The uncontended report in turns adds two floors, minimal locks that are
//! not contenders: `floor/set-nx` (`SET NX PX`, then a release script of two
//! calls, which is what rslock sends) and `floor/set-nx+token` (the same
//! with a fencing token from `INCR` in the same round trip, inside
//! `MULTI`/`EXEC` so that the token's order is the holds' order). The gap
//! between the two is what a fencing token costs any lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use level3::lock::{Lease, LockClient, LockError, LockOptions, WaitForRelease, Waiting};
use level3::spin::SPIN_BACKOFF;
use ticket_core::services::Redis;
use tokio::runtime::Runtime;

/// Tasks that fight over one lock in the contended runs.
const TASKS: usize = 8;
/// The lease (level3) and TTL (rslock) of every hold.
const LEASE: Duration = Duration::from_secs(5);
/// How long a level3 waiter waits before giving up.
const WAIT_BUDGET: Duration = Duration::from_secs(1);
/// How long each contender runs in the fairness report.
const REPORT_RUN: Duration = Duration::from_secs(4);

/// One way of taking and releasing a named lock, from one of two clients.
#[derive(Clone)]
enum Contender {
    Level3 {
        clients: [LockClient; 2],
        lease: Lease,
    },
    Rslock {
        managers: [rslock::LockManager; 2],
    },
    /// The least any owner-checked lock can do, for the uncontended report
    /// only: `SET NX PX` and a two-call release script, on a plain
    /// multiplexed connection, with (`token`) or without a fencing token
    /// taken in the same round trip (`MULTI`, `SET NX PX`, `INCR`, `EXEC`).
    Floor {
        conn: redis::aio::MultiplexedConnection,
        token: bool,
        /// [`FLOOR_RELEASE`], hashed once.
        release: redis::Script,
    },
}

/// The floor's release: delete the key only if it still holds our value.
const FLOOR_RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// What one lock+unlock cycle saw.
struct Cycle {
    /// From asking to holding.
    waited: Duration,
    /// Attempts that gave up before this one succeeded (level3: wait budget
    /// spent; rslock: `lock()` ran out of its retries).
    gave_up: u64,
}

impl Contender {
    fn level3(url: &str, waiting: Waiting, lease: Lease) -> Self {
        let options = LockOptions {
            key_prefix: format!("bench-{:08x}", rand::random::<u32>()),
            waiting,
            ..LockOptions::default()
        };
        Contender::Level3 {
            clients: [
                LockClient::new(url, "bench-a", options.clone()).expect("a level3 client"),
                LockClient::new(url, "bench-b", options).expect("a level3 client"),
            ],
            lease,
        }
    }

    fn rslock(url: &str, retry_delay: Option<Duration>) -> Self {
        let manager = || {
            let mut manager = rslock::LockManager::new(vec![url.to_owned()]);
            if let Some(delay) = retry_delay {
                manager.set_retry(3, delay);
            }
            manager
        };
        Contender::Rslock {
            managers: [manager(), manager()],
        }
    }

    /// Takes `name` (from client `task % 2`), holds it for `hold`, releases it.
    async fn cycle(&self, task: usize, name: &str, hold: Duration) -> Cycle {
        let started = Instant::now();
        let mut gave_up = 0;
        match self {
            Contender::Level3 { clients, lease } => {
                let lock = clients[task % 2].lock(name);
                loop {
                    match lock.try_lock(WAIT_BUDGET, *lease).await {
                        Ok(guard) => {
                            let waited = started.elapsed();
                            work(hold).await;
                            guard.release().await.expect("release");
                            return Cycle { waited, gave_up };
                        }
                        Err(LockError::Timeout { .. }) => gave_up += 1,
                        Err(err) => panic!("level3 lock failed: {err}"),
                    }
                }
            }
            Contender::Rslock { managers } => {
                let manager = &managers[task % 2];
                loop {
                    match manager.lock(name, LEASE).await {
                        Ok(lock) => {
                            let waited = started.elapsed();
                            work(hold).await;
                            manager.unlock(&lock).await;
                            return Cycle { waited, gave_up };
                        }
                        Err(rslock::LockError::Unavailable) => gave_up += 1,
                        Err(err) => panic!("rslock failed: {err}"),
                    }
                }
            }
            Contender::Floor {
                conn,
                token,
                release,
            } => {
                let mut conn = conn.clone();
                let key = format!("floor:{{{name}}}");
                let value = format!("{:016x}", rand::random::<u64>());
                let mut acquire = redis::pipe();
                if *token {
                    acquire.atomic();
                }
                acquire
                    .cmd("SET")
                    .arg(&key)
                    .arg(&value)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(LEASE));
                if *token {
                    acquire.cmd("INCR").arg(format!("{key}:fence"));
                }
                let taken: Vec<redis::Value> = acquire
                    .query_async(&mut conn)
                    .await
                    .expect("the floor's SET NX");
                assert_eq!(
                    taken.first(),
                    Some(&redis::Value::Okay),
                    "the floor is measured uncontended only"
                );
                let waited = started.elapsed();
                work(hold).await;
                let released: i64 = release
                    .key(&key)
                    .arg(&value)
                    .invoke_async(&mut conn)
                    .await
                    .expect("the floor's release");
                assert_eq!(released, 1);
                Cycle { waited, gave_up }
            }
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The critical section: nothing, or a pause standing in for a sale's
/// database transaction.
async fn work(hold: Duration) {
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
}

struct Setup {
    runtime: Runtime,
    url: String,
    _redis: Option<Redis>,
}

fn setup() -> Setup {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let (url, redis) = match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => (url, None),
        _ => {
            let redis = Redis::throwaway().expect("a throwaway redis-server");
            (redis.url().to_owned(), Some(redis))
        }
    };
    Setup {
        runtime,
        url,
        _redis: redis,
    }
}

fn contenders(url: &str) -> Vec<(&'static str, Contender)> {
    let fixed = Lease::Fixed(LEASE);
    vec![
        (
            "level3/pubsub",
            Contender::level3(url, Arc::new(WaitForRelease), fixed),
        ),
        (
            "level3/spin",
            Contender::level3(url, Arc::new(SPIN_BACKOFF), fixed),
        ),
        ("rslock/default", Contender::rslock(url, None)),
        (
            "rslock/tuned",
            Contender::rslock(url, Some(Duration::from_millis(10))),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let setup = setup();
    let contenders = setup.runtime.block_on(async { contenders(&setup.url) });

    let mut uncontended = c.benchmark_group("uncontended");
    uncontended.throughput(Throughput::Elements(1));
    let watchdog = setup.runtime.block_on(async {
        Contender::level3(&setup.url, Arc::new(WaitForRelease), Lease::Watchdog)
    });
    for (name, contender) in contenders
        .iter()
        .map(|(name, c)| (*name, c))
        .chain([("level3/pubsub-watchdog", &watchdog)])
    {
        uncontended.bench_function(name, |b| {
            b.to_async(&setup.runtime)
                .iter(|| async { contender.cycle(0, "uncontended", Duration::ZERO).await })
        });
    }
    uncontended.finish();

    let mut contended = c.benchmark_group(format!("contended-{TASKS}-tasks"));
    contended
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    for (name, contender) in &contenders {
        contended.bench_function(*name, |b| {
            b.to_async(&setup.runtime).iter_custom(|iters| {
                let contender = contender.clone();
                async move {
                    let per_task = iters.div_ceil(TASKS as u64).max(1);
                    let started = Instant::now();
                    let handles: Vec<_> = (0..TASKS)
                        .map(|task| {
                            let contender = contender.clone();
                            tokio::spawn(async move {
                                for _ in 0..per_task {
                                    contender.cycle(task, "contended", Duration::ZERO).await;
                                }
                            })
                        })
                        .collect();
                    for handle in handles {
                        handle.await.expect("a contending task");
                    }
                    // Report the time for `iters` cycles.
                    started
                        .elapsed()
                        .mul_f64(iters as f64 / (per_task * TASKS as u64) as f64)
                }
            })
        });
    }
    contended.finish();

    setup.runtime.block_on(async {
        let mut conn = redis::Client::open(setup.url.as_str())
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("a Redis connection for the report");
        for hold in [Duration::ZERO, Duration::from_millis(1)] {
            fairness(&mut conn, &contenders, hold).await;
        }
        uncontended_commands(&mut conn, &contenders, &watchdog).await;
        let floor = |token| Contender::Floor {
            conn: conn.clone(),
            token,
            release: redis::Script::new(FLOOR_RELEASE),
        };
        let floors = [
            ("floor/set-nx", floor(false)),
            ("floor/set-nx+token", floor(true)),
        ];
        uncontended_interleaved(&contenders, &watchdog, &floors).await;
    });
}

/// Commands the clients sent, by Redis's own count since the last reset,
/// and the microseconds Redis spent running them (scripts included).
///
/// Redis also lists the calls scripts make (HSET, PUBLISH, GET... inside
/// EVALSHA), so only commands a client sends itself are added up. rslock
/// sends `SET key value NX PX` itself; level3 calls SET only inside its
/// scripts, so SET is counted for rslock only (`with_set`).
async fn client_commands(
    conn: &mut redis::aio::MultiplexedConnection,
    with_set: bool,
) -> (u64, f64) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    // cmdstat_evalsha:calls=10000,usec=49533,usec_per_call=4.95,...
    let stats: HashMap<String, (u64, f64)> = info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let mut fields = rest.split(',');
            let calls = fields.next()?.strip_prefix("calls=")?.parse().ok()?;
            let usec = fields.next()?.strip_prefix("usec=")?.parse().ok()?;
            Some((name.to_owned(), (calls, usec)))
        })
        .collect();
    let mut sent_by_clients = vec![
        "evalsha",
        "eval",
        "script|load",
        "subscribe",
        "unsubscribe",
        "ping",
    ];
    if with_set {
        sent_by_clients.push("set");
    }
    sent_by_clients
        .iter()
        .filter_map(|name| stats.get(*name))
        .fold((0, 0.0), |(calls, usec), (c, u)| (calls + c, usec + u))
}

async fn reset_stats(conn: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .expect("CONFIG RESETSTAT");
}

/// The fairness report: each contender, `TASKS` tasks, `REPORT_RUN` long,
/// each hold lasting `hold`.
async fn fairness(
    conn: &mut redis::aio::MultiplexedConnection,
    contenders: &[(&'static str, Contender)],
    hold: Duration,
) {
    println!();
    println!(
        "Fairness report: {TASKS} tasks on one lock (two clients), {REPORT_RUN:?} per contender, each hold {hold:?}"
    );
    println!();
    println!("| contender | cycles/s | acquisitions per task | max/min | longest wait | gave up | client commands per acquisition |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, contender) in contenders {
        reset_stats(conn).await;
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let handles: Vec<_> = (0..TASKS)
            .map(|task| {
                let contender = contender.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let (mut count, mut longest, mut gave_up) = (0u64, Duration::ZERO, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        let cycle = contender.cycle(task, "report", hold).await;
                        count += 1;
                        longest = longest.max(cycle.waited);
                        gave_up += cycle.gave_up;
                    }
                    (count, longest, gave_up)
                })
            })
            .collect();
        tokio::time::sleep(REPORT_RUN).await;
        stop.store(true, Ordering::Relaxed);
        let mut counts = Vec::new();
        let (mut longest, mut gave_up) = (Duration::ZERO, 0);
        for handle in handles {
            let (count, task_longest, task_gave_up) = handle.await.expect("a report task");
            counts.push(count);
            longest = longest.max(task_longest);
            gave_up += task_gave_up;
        }
        let elapsed = started.elapsed();
        let total: u64 = counts.iter().sum();
        let (commands, _) = client_commands(conn, name.starts_with("rslock")).await;
        let (min, max) = (
            counts.iter().copied().min().unwrap_or(0),
            counts.iter().copied().max().unwrap_or(0),
        );
        println!(
            "| {name} | {:.0} | {counts:?} | {} | {:.1} ms | {gave_up} | {:.2} |",
            total as f64 / elapsed.as_secs_f64(),
            if min == 0 {
                "inf".to_owned()
            } else {
                format!("{:.2}", max as f64 / min as f64)
            },
            longest.as_secs_f64() * 1e3,
            commands as f64 / total.max(1) as f64,
        );
    }
}

/// Client commands per uncontended lock+unlock cycle.
async fn uncontended_commands(
    conn: &mut redis::aio::MultiplexedConnection,
    contenders: &[(&'static str, Contender)],
    watchdog: &Contender,
) {
    println!();
    println!("Uncontended, 1000 lock+unlock cycles: client commands per cycle, and the time Redis spent running them per cycle");
    println!();
    for (name, contender) in contenders
        .iter()
        .map(|(name, c)| (*name, c))
        .chain([("level3/pubsub-watchdog", watchdog)])
    {
        reset_stats(conn).await;
        for _ in 0..1000 {
            contender
                .cycle(0, "report-uncontended", Duration::ZERO)
                .await;
        }
        let (commands, usec) = client_commands(conn, name.starts_with("rslock")).await;
        println!(
            "- {name}: {:.2} commands, {:.1} µs in Redis",
            commands as f64 / 1000.0,
            usec / 1000.0
        );
    }
}

/// Uncontended cycles per second, measured in turns: 30 rounds, each
/// contender running 300 cycles per round, so that a busy machine slows every
/// contender alike. Prints the median round of each.
///
/// `floors` join only this report: two minimal locks (see
/// [`Contender::Floor`]) that show what an owner-checked lock costs at the
/// least, with and without a fencing token.
async fn uncontended_interleaved(
    contenders: &[(&'static str, Contender)],
    watchdog: &Contender,
    floors: &[(&'static str, Contender)],
) {
    let all: Vec<(&str, &Contender)> = contenders
        .iter()
        .map(|(name, c)| (*name, c))
        .chain([("level3/pubsub-watchdog", watchdog)])
        .chain(floors.iter().map(|(name, c)| (*name, c)))
        .collect();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
    for _ in 0..30 {
        for (rate, (_, contender)) in rates.iter_mut().zip(&all) {
            let started = Instant::now();
            for _ in 0..300 {
                contender.cycle(0, "interleaved", Duration::ZERO).await;
            }
            rate.push(300.0 / started.elapsed().as_secs_f64());
        }
    }
    println!();
    println!("Uncontended, in turns (30 rounds of 300 cycles each): median cycles/s [min, max]");
    println!();
    for (rate, (name, _)) in rates.iter_mut().zip(&all) {
        rate.sort_by(f64::total_cmp);
        println!(
            "- {name}: {:.0} [{:.0}, {:.0}]",
            rate[rate.len() / 2],
            rate[0],
            rate[rate.len() - 1]
        );
    }
}

// `criterion_group!`/`criterion_main!` would generate an undocumented
// `pub fn`; this is what they expand to.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}

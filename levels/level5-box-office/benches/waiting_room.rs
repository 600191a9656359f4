//! The waiting room and the cache, each as a ratio to a floor in the same
//! run:
//!
//! - `queue-join`: joins per second through `join.lua` (advance the line,
//!   give a number, store the entry, answer the position), against the
//!   same Redis writes sent raw in one pipeline (no script, no atomicity),
//!   and against a bare `INCR` round trip.
//! - `reads`: `GET /shows` and a 1,000-seat seat map through the cache,
//!   against the same reads with no cache (the database every time).
//!
//! Each measured iteration is a batch of 32 requests at once, through the
//! crate's own code (no HTTP), on one multiplexed Redis connection and a
//! pool of 10 database connections, like a server.
//!
//! Then, outside criterion, the server's memory: a `level5` process is
//! started, 10,000 users join its line over HTTP, and its peak resident
//! memory (`VmHWM` in `/proc/PID/status`) is printed beside the idle one
//! and Redis's own `used_memory` growth.
//!
//! Run with:
//!
//! ```text
//! cargo bench -p level5 --bench waiting_room
//! ```
//!
//! Uses `DATABASE_URL` / `REDIS_URL` if set, otherwise throwaway servers.

mod rss;

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use futures::future::join_all;
use level5::cache::reads::Reader;
use level5::cache::{Cache, CacheSettings};
use level5::queue::{Queue, QueueSettings};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use ticket_core::metrics::Metrics;
use ticket_core::services::{Postgres, Redis};

/// Requests per measured batch.
const BATCH: u64 = 32;

struct Setup {
    runtime: tokio::runtime::Runtime,
    pool: PgPool,
    database_url: String,
    redis_url: String,
    show: i64,
}

fn setup() -> Setup {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let pg: &'static Postgres = Postgres::shared().expect("PostgreSQL");
    let redis_url = Redis::shared().expect("Redis").url().to_owned();
    let (pool, database_url, show) = runtime.block_on(async {
        let url = pg.fresh_database().await.expect("a database");
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect(&url)
            .await
            .expect("a pool");
        ticket_core::db::migrate(&pool).await.expect("migrations");
        let mut show = 0;
        for n in 0..20 {
            show = sqlx::query_scalar(
                "INSERT INTO shows (title, starts_at) VALUES ('bench ' || $1, now()) RETURNING id",
            )
            .bind(n)
            .fetch_one(&pool)
            .await
            .expect("a show");
            sqlx::query(
                "INSERT INTO seats (show_id, seat_no, grade, price) \
                 SELECT $1, n, CASE WHEN n <= 100 THEN 'vip' ELSE 'r' END, 100 \
                 FROM generate_series(1, 1000) n",
            )
            .bind(show)
            .execute(&pool)
            .await
            .expect("seats");
        }
        (pool, url, show)
    });
    Setup {
        runtime,
        pool,
        database_url,
        redis_url,
        show,
    }
}

fn queue_joins(c: &mut Criterion, setup: &Setup) {
    let settings = QueueSettings {
        active_limit: 100,
        admitted_ttl: Duration::from_secs(60),
    };
    let queue = Arc::new(Queue::new(&setup.redis_url, "bench", settings).expect("a queue"));
    let client = redis::Client::open(setup.redis_url.as_str()).expect("a client");
    let conn = setup
        .runtime
        .block_on(client.get_multiplexed_async_connection())
        .expect("Redis");
    let next_user = std::sync::atomic::AtomicI64::new(1);
    let mut group = c.benchmark_group("queue-join");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("join.lua", |b| {
        b.to_async(&setup.runtime).iter(|| {
            let queue = queue.clone();
            let first = next_user.fetch_add(BATCH as i64, std::sync::atomic::Ordering::Relaxed);
            async move {
                join_all((first..first + BATCH as i64).map(|u| {
                    let queue = queue.clone();
                    async move { queue.join(1, u).await.expect("join") }
                }))
                .await
            }
        })
    });
    group.bench_function("raw-pipeline", |b| {
        b.to_async(&setup.runtime).iter(|| {
            let first = next_user.fetch_add(BATCH as i64, std::sync::atomic::Ordering::Relaxed);
            let conn = conn.clone();
            async move {
                join_all((first..first + BATCH as i64).map(|u| {
                    let mut conn = conn.clone();
                    async move { raw_join(&mut conn, u).await }
                }))
                .await
            }
        })
    });
    group.bench_function("raw-incr", |b| {
        b.to_async(&setup.runtime).iter(|| {
            let conn = conn.clone();
            async move {
                join_all((0..BATCH).map(|_| {
                    let mut conn = conn.clone();
                    async move {
                        let _: i64 = redis::cmd("INCR")
                            .arg("raw:incr")
                            .query_async(&mut conn)
                            .await
                            .expect("incr");
                    }
                }))
                .await
            }
        })
    });
    group.finish();
}

/// The Redis operations a join makes, sent raw in one round trip: what
/// `join.lua` costs beyond them is the script (and its atomicity).
async fn raw_join(conn: &mut redis::aio::MultiplexedConnection, user: i64) {
    let base = "raw:q:1";
    let number: i64 = redis::cmd("INCR")
        .arg(format!("{base}:seq"))
        .query_async(conn)
        .await
        .expect("incr");
    let _: () = redis::pipe()
        .hset_multiple(
            format!("{base}:e:{number}"),
            &[
                ("user", user.to_string()),
                ("secret", "0".repeat(32)),
                ("state", "waiting".into()),
            ],
        )
        .ignore()
        .hset(format!("{base}:users"), user, number)
        .ignore()
        .zadd(format!("{base}:waiting"), number, number)
        .ignore()
        .zcard(format!("{base}:active"))
        .ignore()
        .zrank(format!("{base}:waiting"), number)
        .ignore()
        .query_async(conn)
        .await
        .expect("pipeline");
}

fn reads(c: &mut Criterion, setup: &Setup) {
    let settings = level5::Cli::try_parse_from(["level5"])
        .expect("flags")
        .settings();
    let cache_settings = CacheSettings {
        shows_ttl: Duration::from_secs(3600),
        seat_map_ttl: Duration::from_secs(3600),
        guard: true,
    };
    let cached = Cache::new(Some(&setup.redis_url), "bench", cache_settings).expect("cache");
    let uncached = Cache::new(None, "bench", cache_settings).expect("no cache");
    let metrics = Metrics::new();
    let mut group = c.benchmark_group("reads");
    group.throughput(Throughput::Elements(BATCH));
    for (name, cache) in [("cached", &cached), ("uncached", &uncached)] {
        let reader = Reader {
            cache,
            pool: &setup.pool,
            metrics: &metrics,
            settings: &settings,
        };
        group.bench_function(format!("shows-{name}"), |b| {
            b.to_async(&setup.runtime).iter(|| {
                join_all((0..BATCH).map(|_| async { reader.shows().await.expect("shows") }))
            })
        });
        group.bench_function(format!("seat-map-{name}"), |b| {
            b.to_async(&setup.runtime).iter(|| {
                join_all(
                    (0..BATCH).map(|_| async { reader.seat_map(setup.show).await.expect("map") }),
                )
            })
        });
    }
    group.finish();
}

use clap::Parser as _;

fn main() {
    let setup = setup();
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    queue_joins(&mut c, &setup);
    reads(&mut c, &setup);
    c.final_summary();
    rss::report(&setup.runtime, &setup.database_url, &setup.redis_url);
}

//! Holds per second for each strategy, as a ratio to the floor: raw SQL
//! doing the same hold (one transaction: insert the hold and its seats,
//! `UPDATE seats ... WHERE hold_id IS NULL`, commit or roll back), and, for
//! `redis-lua`, the Lua script alone.
//!
//! Each measured iteration is a batch of 32 buyers at once (distinct users,
//! groups of 1 to 4 seats) against a freshly reset show, through the
//! strategy's own code (no HTTP), on a pool of 10 connections like a server:
//!
//! - `hot`: every buyer wants seats among the 10 front seats; most lose.
//! - `spread`: every buyer picks among 1,000 seats; few collide.
//!
//! Run with:
//!
//! ```text
//! cargo bench -p level5 --bench holds
//! ```
//!
//! Uses `DATABASE_URL` / `REDIS_URL` if set, otherwise throwaway servers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser as _;
use criterion::{BenchmarkId, Criterion, Throughput};
use futures::future::join_all;
use level5::holds::{HoldRequest, HoldSeats};
use rand::seq::IndexedRandom as _;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use ticket_core::services::{Postgres, Redis};
use ticket_core::UserId;

/// Buyers per measured batch.
const BATCH: usize = 32;

/// What is measured: a strategy, or one of the floors.
#[derive(Clone)]
enum Contender {
    Strategy(Arc<dyn HoldSeats>),
    RawSql,
    /// Boxed: a Redis client and script are large beside the other variants.
    RawLua(Box<(redis::Client, redis::Script)>),
}

struct Setup {
    runtime: tokio::runtime::Runtime,
    pool: PgPool,
    show: i64,
    redis_url: String,
}

fn setup() -> Setup {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let pg: &'static Postgres = Postgres::shared().expect("PostgreSQL");
    let redis_url = Redis::shared().expect("Redis").url().to_owned();
    let (pool, show) = runtime.block_on(async {
        let url = pg.fresh_database().await.expect("a database");
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect(&url)
            .await
            .expect("a pool");
        ticket_core::db::migrate(&pool).await.expect("migrations");
        let show: i64 = sqlx::query_scalar(
            "INSERT INTO shows (title, starts_at) VALUES ('bench', now()) RETURNING id",
        )
        .fetch_one(&pool)
        .await
        .expect("a show");
        sqlx::query(
            "INSERT INTO seats (show_id, seat_no, grade, price) \
             SELECT $1, n, 'r', 100 FROM generate_series(1, 1000) n",
        )
        .bind(show)
        .execute(&pool)
        .await
        .expect("seats");
        (pool, show)
    });
    Setup {
        runtime,
        pool,
        show,
        redis_url,
    }
}

fn contenders(setup: &Setup) -> Vec<(&'static str, Contender)> {
    let strategy = |args: &[&str]| {
        let argv = ["level5", "--redis-url", &setup.redis_url]
            .into_iter()
            .chain(args.iter().copied());
        let cli = level5::Cli::try_parse_from(argv).expect("flags");
        let built = level5::holds::build(&cli.strategy, &setup.pool, &cli.settings());
        Contender::Strategy(built.expect("a strategy"))
    };
    let client = redis::Client::open(setup.redis_url.as_str()).expect("a Redis client");
    let script = redis::Script::new(include_str!("../src/holds/lua/hold.lua"));
    vec![
        ("raw-sql", Contender::RawSql),
        ("pessimistic", strategy(&["--strategy", "pessimistic"])),
        ("optimistic-retry", strategy(&["--strategy", "optimistic"])),
        (
            "optimistic-fail-fast",
            strategy(&["--strategy", "optimistic", "--max-retries", "0"]),
        ),
        ("redis-lua", strategy(&["--strategy", "redis-lua"])),
        ("raw-lua", Contender::RawLua(Box::new((client, script)))),
    ]
}

/// Puts every seat back on sale and forgets the holds (not timed).
async fn reset(pool: &PgPool, redis_url: &str, show: i64) {
    sqlx::query("UPDATE seats SET hold_id = NULL WHERE show_id = $1 AND hold_id IS NOT NULL")
        .bind(show)
        .execute(pool)
        .await
        .expect("reset seats");
    sqlx::query("DELETE FROM holds WHERE show_id = $1")
        .bind(show)
        .execute(pool)
        .await
        .expect("reset holds");
    let mut conn = redis::Client::open(redis_url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*:owners")
        .query_async(&mut conn)
        .await
        .expect("keys");
    for key in keys {
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("del");
    }
    let _: () = redis::cmd("SET")
        .arg("raw:loaded")
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("set");
}

/// The floor: the writes every strategy must make, checked by the UPDATE.
async fn raw_sql(pool: &PgPool, request: &HoldRequest) {
    let mut tx = pool.begin().await.expect("begin");
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO holds (show_id, user_id, amount, status, expires_at) \
         VALUES ($1, $2, 100, 'held', now() + interval '5 minutes') RETURNING id",
    )
    .bind(request.show_id)
    .bind(request.user.get())
    .fetch_one(&mut *tx)
    .await
    .expect("hold");
    sqlx::query(
        "INSERT INTO hold_seats (hold_id, show_id, seat_no) SELECT $1, $2, unnest($3::int[])",
    )
    .bind(id)
    .bind(request.show_id)
    .bind(&request.seats)
    .execute(&mut *tx)
    .await
    .expect("hold seats");
    let taken = sqlx::query(
        "UPDATE seats SET hold_id = $1 WHERE show_id = $2 AND seat_no = ANY($3) AND hold_id IS NULL",
    )
    .bind(id)
    .bind(request.show_id)
    .bind(&request.seats)
    .execute(&mut *tx)
    .await;
    if matches!(taken, Ok(done) if done.rows_affected() as usize == request.seats.len()) {
        tx.commit().await.expect("commit");
    }
}

async fn run_one(contender: &Contender, pool: &PgPool, request: HoldRequest) {
    match contender {
        Contender::Strategy(strategy) => {
            let _ = strategy.hold(&request).await;
        }
        Contender::RawSql => raw_sql(pool, &request).await,
        Contender::RawLua(lua) => {
            let (client, script) = lua.as_ref();
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("Redis");
            let mut invocation = script.key("raw:owners");
            invocation.key("raw:loaded").arg(request.user.get());
            for seat in &request.seats {
                invocation.arg(*seat);
            }
            let _: Vec<i64> = invocation.invoke_async(&mut conn).await.expect("lua");
        }
    }
}

fn requests(show: i64, seats: &[i32], next_user: &mut i64) -> Vec<HoldRequest> {
    let mut rng = rand::rng();
    (0..BATCH)
        .map(|_| {
            *next_user += 1;
            let group = rand::random_range(1..=4);
            HoldRequest {
                show_id: show,
                user: UserId::parse((*next_user).into()).expect("a user"),
                seats: seats.choose_multiple(&mut rng, group).copied().collect(),
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let setup = setup();
    let contenders = setup.runtime.block_on(async { contenders(&setup) });
    for (scenario, range) in [("hot", 1..=10), ("spread", 1..=1000)] {
        let seats: Vec<i32> = range.collect();
        let mut group = c.benchmark_group(format!("holds/{scenario}"));
        group
            .throughput(Throughput::Elements(BATCH as u64))
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4));
        let mut next_user = 0i64;
        for (name, contender) in &contenders {
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|iterations| {
                    setup.runtime.block_on(async {
                        let mut spent = Duration::ZERO;
                        for _ in 0..iterations {
                            reset(&setup.pool, &setup.redis_url, setup.show).await;
                            let batch = requests(setup.show, &seats, &mut next_user);
                            let started = Instant::now();
                            join_all(
                                batch
                                    .into_iter()
                                    .map(|r| run_one(contender, &setup.pool, r)),
                            )
                            .await;
                            spent += started.elapsed();
                        }
                        spent
                    })
                })
            });
        }
        group.finish();
    }
}

// `criterion_group!`/`criterion_main!` would generate an undocumented
// `pub fn`; this is what they expand to.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}

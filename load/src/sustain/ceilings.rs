//! The ceilings a sustained run is set against: the same work with
//! nothing in front of it (see the parent module's doc).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ticket_core::{db, TicketId};

use super::{ceiling, collect, Meter, SUSTAINED_FIRST_USER, SUSTAINED_STOCK};
use crate::client::buyer_client;
use crate::cpu::{Role, Watch};
use crate::model::Ceiling;

/// The purchase transaction straight to PostgreSQL: `concurrency`
/// connections, each looping BEGIN; conditional UPDATE; INSERT; COMMIT for
/// `duration`, on its own ticket. CPU: the load generator and `watch`'s
/// PostgreSQL.
pub async fn postgres_purchase(
    database_url: &str,
    ticket_id: i64,
    concurrency: usize,
    duration: Duration,
    watch: &Watch,
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
    // Every connection is opened before the clock and the CPU count start:
    // opening one (a backend forked, authenticated) is no part of a sale.
    let mut connections = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        connections.push(
            pool.acquire()
                .await
                .context("opening the ceiling's connections")?,
        );
    }
    let cpu = watch.only(&[Role::Load, Role::Postgres]).start();
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for mut conn in connections {
        let next_user = next_user.clone();
        workers.spawn(async move {
            let mut meter = Meter::new();
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
    let cpu = cpu.per_operation(meter.ok);
    pool.close().await;
    Ok(Ceiling {
        cpu: Some(cpu),
        ..ceiling("postgres_purchase", concurrency, &meter, elapsed)
    })
}

/// `GET /livez` on `targets`, `concurrency` clients dealt round-robin over
/// them (as the buyers are), for `duration`. CPU: the load generator and
/// `watch`'s servers (those at `targets`).
pub async fn http_noop(
    targets: &[String],
    concurrency: usize,
    duration: Duration,
    watch: &Watch,
) -> anyhow::Result<Ceiling> {
    anyhow::ensure!(!targets.is_empty(), "no server to measure HTTP on");
    let cpu = watch.only(&[Role::Load, Role::Server]).start();
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
        cpu: Some(cpu.per_operation(meter.ok)),
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
/// connections, for `duration`. CPU: the load generator and `watch`'s Redis.
pub async fn redis_lua(
    redis_url: &str,
    concurrency: usize,
    duration: Duration,
    watch: &Watch,
) -> anyhow::Result<Ceiling> {
    // A single Redis, or a cluster (`redis+cluster://`, docs/08-cluster.md).
    use ticket_core::redis_conn::RedisConnection;
    let key = format!("ticket-rush:ceiling:{}", rand::random::<u32>());
    let mut setup = RedisConnection::multiplexed(redis_url)
        .await
        .context("cannot connect to Redis")?;
    redis::cmd("SET")
        .arg(&key)
        .arg(SUSTAINED_STOCK)
        .query_async::<()>(&mut setup)
        .await?;
    let script = redis::Script::new(REDIS_DECREMENT);
    let cpu = watch.only(&[Role::Load, Role::Redis]).start();
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let url = redis_url.to_owned();
        let key = key.clone();
        let script = script.clone();
        workers.spawn(async move {
            let mut meter = Meter::new();
            // One connection per worker, like one connection per buyer.
            let Ok(mut conn) = RedisConnection::multiplexed(&url).await else {
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
    let cpu = cpu.per_operation(meter.ok);
    let _ = redis::cmd("DEL")
        .arg(&key)
        .query_async::<()>(&mut setup)
        .await;
    Ok(Ceiling {
        cpu: Some(cpu),
        ..ceiling("redis_lua", concurrency, &meter, elapsed)
    })
}

/// Orders per batch of the [`postgres_batch_insert`] ceiling: what a
/// persistence worker writes in one transaction when sales arrive faster
/// than it commits.
pub const BATCH_ROWS: usize = 100;

/// Orders inserted straight into PostgreSQL [`BATCH_ROWS`] at a time, the
/// way Levels 4 and 6 persist decided sales: one transaction per batch, an
/// `INSERT ... SELECT FROM unnest(...)` of the rows and one UPDATE of the
/// stock. One connection (a persistence worker), for `duration`; an
/// operation is one row. CPU: the load generator and `watch`'s PostgreSQL.
pub async fn postgres_batch_insert(
    database_url: &str,
    ticket_id: i64,
    duration: Duration,
    watch: &Watch,
) -> anyhow::Result<Ceiling> {
    let ticket = TicketId::parse(i128::from(ticket_id))?;
    let pool = db::connect(database_url, 1, Duration::from_secs(30)).await?;
    db::reset_ticket(&pool, ticket, "Batch ceiling", SUSTAINED_STOCK).await?;
    let mut conn = pool.acquire().await?;
    let mut next_user = SUSTAINED_FIRST_USER;
    let mut meter = Meter::new();
    let cpu = watch.only(&[Role::Load, Role::Postgres]).start();
    let started = Instant::now();
    let deadline = started + duration;
    while Instant::now() < deadline {
        let users: Vec<i64> = (next_user..next_user + BATCH_ROWS as i64).collect();
        next_user += BATCH_ROWS as i64;
        let t = Instant::now();
        match insert_batch(&mut conn, ticket_id, &users).await {
            Ok(rows) => {
                meter.ok += rows;
                meter.record(t.elapsed());
            }
            Err(_) => meter.errors += 1,
        }
    }
    let elapsed = started.elapsed();
    let cpu = cpu.per_operation(meter.ok);
    drop(conn);
    pool.close().await;
    Ok(Ceiling {
        cpu: Some(cpu),
        ..ceiling("postgres_batch_insert", 1, &meter, elapsed)
    })
}

/// One batch: the orders of `users` and the stock they took, one
/// transaction; returns the rows inserted.
async fn insert_batch(
    conn: &mut sqlx::PgConnection,
    ticket_id: i64,
    users: &[i64],
) -> anyhow::Result<u64> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let inserted = sqlx::query(
        "INSERT INTO ticket_orders (ticket_id, user_id) \
         SELECT $1, u FROM unnest($2::int8[]) AS u ON CONFLICT DO NOTHING",
    )
    .bind(ticket_id)
    .bind(users)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("UPDATE tickets SET stock = stock - $2, version = version + 1 WHERE id = $1")
        .bind(ticket_id)
        .bind(i32::try_from(inserted)?)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(inserted)
}

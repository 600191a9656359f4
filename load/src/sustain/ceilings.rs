//! The ceilings a sustained run is set against: the same work with
//! nothing in front of it (see the parent module's doc).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ticket_core::{db, TicketId};

use super::{ceiling, collect, Meter, SUSTAINED_FIRST_USER, SUSTAINED_STOCK};
use crate::client::buyer_client;
use crate::model::Ceiling;

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
    let _ = redis::cmd("DEL")
        .arg(&key)
        .query_async::<()>(&mut setup)
        .await;
    Ok(ceiling("redis_lua", concurrency, &meter, elapsed))
}

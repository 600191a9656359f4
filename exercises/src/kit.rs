//! The parts of every exercise that are *not* the lesson: reading the
//! stock, a Redis connection, a Redis lock's acquire loop, a fencing
//! token, loading the stock into Redis. Learners read these; they edit the
//! exercise files only.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use sqlx::PgConnection;
use ticket_core::services::Redis;
use ticket_core::{PurchaseError, TicketId};

/// What an exercise may use beyond the server's [`StrategyContext`]
/// (`ticket_core::StrategyContext`): the Redis the servers share, for the
/// exercises that need one.
#[derive(Clone, Default)]
pub struct Config {
    /// `--redis-url` (or `REDIS_URL`), or a throwaway Redis's URL.
    pub redis_url: Option<String>,
    /// A throwaway Redis started because no URL was given; kept alive with
    /// the server.
    pub throwaway_redis: Option<Arc<Redis>>,
}

impl Config {
    /// A connection to the shared Redis (connects on first use), or a clear
    /// error for an exercise that needs one when none was given.
    pub fn redis(&self) -> anyhow::Result<ConnectionManager> {
        let url = self
            .redis_url
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("this exercise needs Redis: give --redis-url"))?;
        let client = redis::Client::open(url)
            .map_err(|err| anyhow::anyhow!("bad Redis URL {url:?}: {err}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|err| anyhow::anyhow!("cannot set up a Redis connection: {err}"))
    }
}

/// A Redis failure, as the buyer's answer: 503, try again later.
pub fn redis_down(err: redis::RedisError) -> PurchaseError {
    PurchaseError::Unavailable(anyhow::Error::new(err).context("Redis"))
}

/// Every key the exercises write in Redis starts with this, so that a check
/// can clear them before a rush.
pub const KEY_PREFIX: &str = "exercise:";

/// The Redis key of `ticket`'s lock (exercises 6 and 7).
pub fn lock_key(ticket: TicketId) -> String {
    format!("{KEY_PREFIX}lock:{ticket}")
}

/// The stock as the ticket row says, in the caller's connection.
pub async fn read_stock(conn: &mut PgConnection, ticket: TicketId) -> Result<i32, PurchaseError> {
    sqlx::query_scalar("SELECT stock FROM tickets WHERE id = $1")
        .bind(ticket.get())
        .fetch_optional(conn)
        .await?
        .ok_or(PurchaseError::NotFound)
}

/// A random owner token: who holds a Redis lock.
pub fn owner_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Tries to take the Redis lock `key` for `owner` with `SET key owner NX PX
/// lease`, again and again (every 10 to 30 ms) for at most `wait`. Returns
/// whether it was taken. Correct as it is: the lessons are in the release
/// (exercise 6) and in what the lease means (exercise 7).
pub async fn try_lock(
    redis: &mut ConnectionManager,
    key: &str,
    owner: &str,
    lease: Duration,
    wait: Duration,
) -> Result<bool, PurchaseError> {
    let deadline = Instant::now() + wait;
    loop {
        let taken: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(lease.as_millis() as u64)
            .query_async(redis)
            .await
            .map_err(redis_down)?;
        if taken.is_some() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(rand::random_range(10..=30))).await;
    }
}

/// Runs a release script (`KEYS[1]` the lock, `ARGV[1]` the owner).
pub async fn run_release(
    redis: &mut ConnectionManager,
    script: &Script,
    key: &str,
    owner: &str,
) -> Result<(), PurchaseError> {
    let _: i64 = script
        .key(key)
        .arg(owner)
        .invoke_async(redis)
        .await
        .map_err(redis_down)?;
    Ok(())
}

/// A fencing token: larger than every token handed out before, even across
/// Redis restarts (the clock, in microseconds, is its floor). Exercise 7.
pub async fn next_fencing_token(redis: &mut ConnectionManager) -> Result<i64, PurchaseError> {
    const NEXT: &str = r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        local last = tonumber(redis.call('GET', KEYS[1]) or '0')
        if now <= last then now = last + 1 end
        redis.call('SET', KEYS[1], now)
        return now";
    Script::new(NEXT)
        .key("fencing-counter")
        .invoke_async(redis)
        .await
        .map_err(redis_down)
}

/// Puts a ticket's stock into Redis the first time this server sells it
/// (exercise 9): `SET stock_key <stock from PostgreSQL> NX`, so the server
/// that comes second keeps what the first one loaded.
#[derive(Default)]
pub struct StockLoader {
    loaded: Mutex<HashSet<i64>>,
}

impl StockLoader {
    /// Loads `ticket`'s stock into `stock_key` unless this server already did.
    pub async fn ensure(
        &self,
        pool: &sqlx::PgPool,
        redis: &mut ConnectionManager,
        ticket: TicketId,
        stock_key: &str,
    ) -> Result<(), PurchaseError> {
        if self
            .loaded
            .lock()
            .expect("not poisoned")
            .contains(&ticket.get())
        {
            return Ok(());
        }
        let mut conn = pool.acquire().await?;
        let stock = read_stock(&mut conn, ticket).await?;
        let _: Option<String> = redis::cmd("SET")
            .arg(stock_key)
            .arg(stock)
            .arg("NX")
            .query_async(redis)
            .await
            .map_err(redis_down)?;
        self.loaded
            .lock()
            .expect("not poisoned")
            .insert(ticket.get());
        Ok(())
    }
}

/// The seats a buyer asks for (exercise 10): seats 1 and 2, in an order
/// that depends on the buyer, as people list seats in any order.
pub fn seats_wanted(user: ticket_core::UserId) -> [i32; 2] {
    if user.get() % 2 == 0 {
        [1, 2]
    } else {
        [2, 1]
    }
}

/// The seat rows of exercise 10, created on first use: `exercise_seats`,
/// two seats per ticket.
#[derive(Default)]
pub struct SeatTable {
    /// Set once the table exists: whether this connection's role may lower
    /// `deadlock_timeout` (superusers may).
    created: tokio::sync::OnceCell<bool>,
}

impl SeatTable {
    /// Creates the table once per server (two servers at once are
    /// serialized by an advisory lock) and the ticket's two seats.
    pub async fn ensure(&self, pool: &sqlx::PgPool, ticket: TicketId) -> Result<(), PurchaseError> {
        self.created
            .get_or_try_init(|| async {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(4242)")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS exercise_seats (ticket_id BIGINT NOT NULL, \
                     seat_no INT NOT NULL, PRIMARY KEY (ticket_id, seat_no))",
                )
                .execute(&mut *tx)
                .await?;
                let superuser: bool = sqlx::query_scalar(
                    "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                )
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok::<bool, PurchaseError>(superuser)
            })
            .await?;
        sqlx::query(
            "INSERT INTO exercise_seats (ticket_id, seat_no) VALUES ($1, 1), ($1, 2) \
             ON CONFLICT DO NOTHING",
        )
        .bind(ticket.get())
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Begins a sale's transaction. PostgreSQL looks for deadlocks only
    /// after a waiter has waited `deadlock_timeout` (1 s by default); where
    /// the role may, it is lowered to 50 ms for this transaction, so that a
    /// check of a deadlocking stub takes seconds, not minutes.
    pub async fn begin(
        &self,
        pool: &sqlx::PgPool,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, PurchaseError> {
        let mut tx = pool.begin().await?;
        if self.created.get() == Some(&true) {
            sqlx::query("SET LOCAL deadlock_timeout = '50ms'")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }
}

/// Sells a unit while the buyer's seats are held (exercise 10): one
/// conditional UPDATE and the order, then COMMIT, which frees the seats.
/// A deadlock (SQLSTATE 40P01) is answered 500: it is a bug in the lock
/// order, not a busy moment.
pub async fn sell_held_seats(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    purchase: &ticket_core::Purchase,
) -> Result<ticket_core::Order, PurchaseError> {
    let left: Option<i32> = sqlx::query_scalar(
        "UPDATE tickets SET stock = stock - 1, version = version + 1 \
         WHERE id = $1 AND stock > 0 RETURNING stock",
    )
    .bind(purchase.ticket.get())
    .fetch_optional(&mut *tx)
    .await?;
    if left.is_none() {
        return Err(PurchaseError::SoldOut);
    }
    let order = ticket_core::db::insert_order(&mut tx, purchase).await?;
    tx.commit().await?;
    Ok(order)
}

/// Exercise 10's translation of a database error: a deadlock is a bug in
/// the lock order (500), everything else as ticket-core says.
pub fn deadlock_is_a_bug(err: sqlx::Error) -> PurchaseError {
    if ticket_core::db::sqlstate(&err).as_deref() == Some("40P01") {
        return PurchaseError::Unexpected(anyhow::anyhow!(
            "deadlock detected: two buyers each held a seat the other wanted"
        ));
    }
    err.into()
}

/// The `Idempotency-Key` a purchase carries (exercise 8): its server hands
/// every key to the strategy untouched (`--idempotency strategy`), so the
/// exercise's code, and nothing before it, decides what a repeat means.
pub fn idempotency_key(purchase: &ticket_core::Purchase) -> Option<&str> {
    purchase.claim.as_ref().map(|claim| claim.key.as_str())
}

/// The table of exercise 8's keys, created on first use:
/// `exercise_keys (user_id, key)` → the answer given (`sold` or
/// `sold_out`) and the order sold, if any. `answer`
/// is NULL while the key is claimed and its sale not yet committed.
#[derive(Default)]
pub struct KeyTable {
    created: tokio::sync::OnceCell<()>,
}

impl KeyTable {
    /// Creates the table once per server (two servers at once are
    /// serialized by an advisory lock).
    pub async fn ensure(&self, pool: &sqlx::PgPool) -> Result<(), PurchaseError> {
        self.created
            .get_or_try_init(|| async {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(4243)")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS exercise_keys (user_id BIGINT NOT NULL, \
                     key TEXT NOT NULL, ticket_id BIGINT NOT NULL, answer TEXT, \
                     order_id BIGINT, PRIMARY KEY (user_id, key))",
                )
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok::<(), PurchaseError>(())
            })
            .await?;
        Ok(())
    }
}

/// How a purchase's outcome is written down for its key: the answer's
/// name and the order sold; `None` for outcomes that must not be
/// remembered: busy and errors (the next click should try again), and
/// `already_purchased` (the unique order refused it, which ended the
/// transaction; the next click is refused by it the same way).
pub fn answer_of(
    outcome: &Result<ticket_core::Order, PurchaseError>,
) -> Option<(&'static str, Option<i64>)> {
    match outcome {
        Ok(order) => Some(("sold", Some(order.order_id.0))),
        Err(PurchaseError::SoldOut) => Some(("sold_out", None)),
        Err(_) => None,
    }
}

/// The outcome a recorded answer stands for, given again: the same order
/// (so the same 201 body), or the same refusal.
pub fn replay(
    purchase: &ticket_core::Purchase,
    answer: &str,
    order_id: Option<i64>,
) -> Result<ticket_core::Order, PurchaseError> {
    match (answer, order_id) {
        ("sold", Some(id)) => Ok(ticket_core::Order {
            order_id: ticket_core::OrderId(id),
            ticket_id: purchase.ticket,
            user_id: purchase.user,
        }),
        ("sold_out", _) => Err(PurchaseError::SoldOut),
        _ => Err(PurchaseError::Unexpected(anyhow::anyhow!(
            "key recorded with an unknown answer {answer:?}"
        ))),
    }
}

/// The sale itself, correct on its own (exercise 8's lesson is the key,
/// not the stock): one conditional UPDATE and the order, in the caller's
/// transaction, which the caller commits.
pub async fn sell_in(
    conn: &mut PgConnection,
    purchase: &ticket_core::Purchase,
) -> Result<ticket_core::Order, PurchaseError> {
    let left: Option<i32> = sqlx::query_scalar(
        "UPDATE tickets SET stock = stock - 1, version = version + 1 \
         WHERE id = $1 AND stock > 0 RETURNING stock",
    )
    .bind(purchase.ticket.get())
    .fetch_optional(&mut *conn)
    .await?;
    if left.is_none() {
        return Err(PurchaseError::SoldOut);
    }
    // Without the key: ticket-core's own key table is not used here.
    let plain = ticket_core::Purchase::new(purchase.ticket, purchase.user);
    ticket_core::db::insert_order(conn, &plain).await
}

//! Holding seats: the one trait every strategy implements, and the SQL
//! steps they share.
//!
//! A hold is all or nothing: every seat asked for is free and becomes this
//! hold's, or none does and the buyer is told which were taken. What differs
//! between strategies is only *how they make sure* that nobody else takes
//! one of those seats between "I looked, it is free" and "it is mine":
//!
//! | strategy | file | how |
//! | --- | --- | --- |
//! | `pessimistic` | [`pessimistic`] | `FOR UPDATE` on each seat row, in one global order |
//! | `optimistic` | [`optimistic`] | read without locks, write `WHERE version = $read`; fail fast or retry |
//!
//! Every strategy writes the same rows: a `holds` row (with the amount the
//! seats cost *now*), one `hold_seats` row per seat (the record of the
//! claim), and `seats.hold_id` (the seat's current owner, which is what the
//! strategies fight over).

pub mod optimistic;
pub mod pessimistic;
pub mod redis_lua;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row as _};
use ticket_core::strategy::think;
use ticket_core::UserId;

use crate::error::BoxError;
use crate::Settings;

/// A validated request to hold seats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRequest {
    /// The show.
    pub show_id: i64,
    /// Who holds.
    pub user: UserId,
    /// 1 to `--max-seats` distinct seat numbers, in the order asked.
    pub seats: Vec<i32>,
}

/// A hold that was made: the answer to `POST /shows/{id}/holds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hold {
    /// The hold's id.
    pub hold_id: i64,
    /// The show.
    pub show_id: i64,
    /// The holder.
    pub user_id: UserId,
    /// The seats, in ascending order.
    pub seats: Vec<i32>,
    /// What paying costs: the seats' prices when the hold was made.
    pub amount: i64,
    /// When the hold runs out (RFC 3339, UTC).
    pub expires_at: String,
}

/// One way of holding seats (correctly, or, with a broken flag, not).
///
/// The API calls only this; adding a strategy is one file and one line in
/// [`build`].
#[async_trait]
pub trait HoldSeats: Send + Sync + 'static {
    /// The contract's name (`pessimistic`, `optimistic`...).
    fn name(&self) -> &'static str;

    /// Holds all of `request.seats` for `request.user`, or none.
    async fn hold(&self, request: &HoldRequest) -> Result<Hold, BoxError>;

    /// Called after a release or an expiry committed: these seats are back
    /// on sale. Strategies that keep seats outside PostgreSQL (Redis) let go
    /// of them here; the default has nothing to do.
    async fn freed(&self, _seats: &[FreedSeat]) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A seat that went back on sale, and the hold that had it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreedSeat {
    /// The show.
    pub show_id: i64,
    /// The seat.
    pub seat_no: i32,
    /// The hold that no longer has it.
    pub hold_id: i64,
}

/// The strategy names, as `--strategy` accepts them.
pub const STRATEGIES: &[&str] = &["pessimistic", "optimistic", "redis-lua"];

/// Builds the strategy called `name`.
pub fn build(name: &str, pool: &PgPool, settings: &Settings) -> anyhow::Result<Arc<dyn HoldSeats>> {
    let (pool, settings) = (pool.clone(), settings.clone());
    match name {
        "pessimistic" => Ok(Arc::new(pessimistic::Pessimistic { pool, settings })),
        "optimistic" => Ok(Arc::new(optimistic::Optimistic { pool, settings })),
        "redis-lua" => Ok(Arc::new(redis_lua::RedisLua::new(pool, settings)?)),
        other => anyhow::bail!(
            "unknown strategy {other:?}; Level 5 has: {}",
            STRATEGIES.join(", ")
        ),
    }
}

/// One seat as a strategy reads it.
#[derive(Debug, Clone, Copy)]
pub struct SeatRow {
    /// The seat number.
    pub seat_no: i32,
    /// Its price now.
    pub price: i64,
    /// Its owner, if held or sold.
    pub hold_id: Option<i64>,
    /// Its version (grows on every change of owner).
    pub version: i64,
}

/// Serializes the holds of one user: concurrent holds by the same user
/// queue here, so the per-user limit is checked against committed holds.
///
/// **Kind:** a transaction-scoped advisory lock keyed by (5, user) (5 for
/// Level 5; a hash collision only makes two users queue, never breaks the
/// limit). **What it protects:** the sequence count the user's seats,
/// check the limit, add the hold, commit. **Order:** always taken before any
/// seat row, by every strategy, so it cannot join a deadlock.
pub async fn lock_user(tx: &mut PgConnection, user: UserId) -> Result<(), BoxError> {
    sqlx::query("SELECT pg_advisory_xact_lock(5, hashtext($1::text))")
        .bind(user.get())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Refuses the hold if the user would hold more than `max` seats of this
/// show at once (holds still `held`).
pub async fn check_limit(
    tx: &mut PgConnection,
    request: &HoldRequest,
    max: usize,
) -> Result<(), BoxError> {
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM hold_seats hs JOIN holds h ON h.id = hs.hold_id \
         WHERE h.user_id = $1 AND h.show_id = $2 AND h.status = 'held'",
    )
    .bind(request.user.get())
    .bind(request.show_id)
    .fetch_one(&mut *tx)
    .await?;
    if held as usize + request.seats.len() > max {
        return Err(BoxError::HoldLimit { max });
    }
    Ok(())
}

/// 404 when the show does not exist.
pub async fn require_show(tx: &mut PgConnection, show_id: i64) -> Result<(), BoxError> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM shows WHERE id = $1")
        .bind(show_id)
        .fetch_optional(&mut *tx)
        .await?;
    found.map(|_| ()).ok_or(BoxError::NotFound("show"))
}

/// Reads one seat, with `FOR UPDATE` when `lock` is set. A seat that does
/// not exist is a 422 (the request named it).
pub async fn read_seat(
    tx: &mut PgConnection,
    show_id: i64,
    seat_no: i32,
    lock: bool,
) -> Result<SeatRow, BoxError> {
    let sql = if lock {
        "SELECT price, hold_id, version FROM seats WHERE show_id = $1 AND seat_no = $2 FOR UPDATE"
    } else {
        "SELECT price, hold_id, version FROM seats WHERE show_id = $1 AND seat_no = $2"
    };
    let row = sqlx::query(sql)
        .bind(show_id)
        .bind(seat_no)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| {
            BoxError::invalid("unknown_seat", format!("this show has no seat {seat_no}"))
        })?;
    Ok(SeatRow {
        seat_no,
        price: row.get("price"),
        hold_id: row.get("hold_id"),
        version: row.get("version"),
    })
}

/// The seats among `rows` that someone else holds or bought.
pub fn taken(rows: &[SeatRow]) -> Result<(), BoxError> {
    let mut taken: Vec<i32> = rows
        .iter()
        .filter(|s| s.hold_id.is_some())
        .map(|s| s.seat_no)
        .collect();
    if taken.is_empty() {
        return Ok(());
    }
    taken.sort_unstable();
    Err(BoxError::SeatsUnavailable(taken))
}

/// Inserts the hold and its `hold_seats`, priced from `rows`, expiring
/// `ttl` from now (the clock *now*, not the transaction's start: think time
/// must not eat into the buyer's minutes). Does not touch `seats`.
///
/// `id` is the hold's id when the caller drew it already (`redis-lua`
/// claims seats in Redis under it before the row exists); `None` draws one.
pub async fn insert_hold(
    tx: &mut PgConnection,
    request: &HoldRequest,
    rows: &[SeatRow],
    ttl: Duration,
    id: Option<i64>,
) -> Result<Hold, BoxError> {
    let amount: i64 = rows.iter().map(|s| s.price).sum();
    let mut seats: Vec<i32> = rows.iter().map(|s| s.seat_no).collect();
    seats.sort_unstable();
    let row = sqlx::query(
        "INSERT INTO holds (id, show_id, user_id, amount, status, expires_at) \
         VALUES (coalesce($5, nextval('holds_id_seq')), $1, $2, $3, 'held', \
                 clock_timestamp() + make_interval(secs => $4)) \
         RETURNING id, to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS expires",
    )
    .bind(request.show_id)
    .bind(request.user.get())
    .bind(amount)
    .bind(ttl.as_secs_f64())
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let hold_id: i64 = row.get("id");
    sqlx::query(
        "INSERT INTO hold_seats (hold_id, show_id, seat_no) SELECT $1, $2, unnest($3::int[])",
    )
    .bind(hold_id)
    .bind(request.show_id)
    .bind(&seats)
    .execute(&mut *tx)
    .await?;
    Ok(Hold {
        hold_id,
        show_id: request.show_id,
        user_id: request.user,
        seats,
        amount,
        expires_at: row.get("expires"),
    })
}

/// Makes `hold` the owner of its seats, unconditionally. Correct only
/// under the seat locks (pessimistic); it is also what the broken
/// `--lock-scope before-commit` does without them.
pub async fn take_seats(tx: &mut PgConnection, hold: &Hold) -> Result<(), BoxError> {
    sqlx::query(
        "UPDATE seats SET hold_id = $1, version = version + 1 \
         WHERE show_id = $2 AND seat_no = ANY($3)",
    )
    .bind(hold.hold_id)
    .bind(hold.show_id)
    .bind(&hold.seats)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Sets PostgreSQL's `lock_timeout` and `statement_timeout` for this
/// transaction only (`SET LOCAL`), so a buyer behind a busy seat waits at
/// most `ms` and is then answered 503 busy. Zero waits forever.
pub async fn bound_waits(tx: &mut PgConnection, ms: u64) -> Result<(), BoxError> {
    sqlx::query(
        "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $1, true)",
    )
    .bind(format!("{ms}ms"))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Pauses for the think time: the window between reading seats and taking
/// them, widened so that races reproduce on demand.
pub async fn pause(settings: &Settings) {
    think(settings.think_time).await;
}

//! The sweeper: expires holds that nobody touches again, so their seats go
//! back on sale.
//!
//! A buyer who walks away sends nothing; the hold must expire anyway. Every
//! server runs a sweeper, every `--sweep-interval-ms`, so expiry does not
//! depend on one server staying up. Two sweepers must not both expire the
//! same hold, and no sweeper may expire a hold whose payment is committing.
//! One statement gives both:
//!
//! ```sql
//! SELECT id FROM holds WHERE status = 'held' AND expires_at <= clock_timestamp()
//! ORDER BY expires_at LIMIT 500 FOR UPDATE SKIP LOCKED
//! ```
//!
//! - `FOR UPDATE` locks each due hold, the lock a payment also takes first
//!   (see [`crate::settle`]): while we hold it, no payment can pay it.
//! - `SKIP LOCKED` passes over holds another transaction has locked: the
//!   other server's sweeper (so the work is split, never done twice), or a
//!   payment (which decides; if it pays, the hold is no longer `held` when
//!   a later sweep looks).
//!
//! `--sweeper unlocked` keeps the broken design: read the due holds with a
//! plain SELECT, think, then `UPDATE ... SET status = 'expired'` by id. A
//! payment that had locked the hold and commits in between is overwritten:
//! the user paid, the hold says expired, its seats are sold again.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use ticket_core::strategy::think;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::BoxError;
use crate::holds::HoldSeats;
use crate::settle::{expire, tell_freed};
use crate::{Settings, SweeperMode};

/// Most holds one sweep expires; the next sweep takes the rest.
const BATCH: i64 = 500;

/// Starts this server's sweeper; it stops when `stop` changes.
pub fn spawn(
    pool: PgPool,
    holds: Arc<dyn HoldSeats>,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(settings.sweep_interval) => {}
            }
            match sweep(&pool, holds.as_ref(), &settings).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(expired = n, "swept expired holds"),
                Err(err) => {
                    tracing::warn!(error = %err, "a sweep failed; the next one retries");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
}

/// One sweep: expires the due holds no one else is working on. Returns how
/// many it expired.
pub async fn sweep(
    pool: &PgPool,
    holds: &dyn HoldSeats,
    settings: &Settings,
) -> Result<usize, BoxError> {
    if settings.sweeper == SweeperMode::Unlocked {
        return sweep_unlocked(pool, holds, settings).await;
    }
    let mut tx = pool.begin().await?;
    let due: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM holds WHERE status = 'held' AND expires_at <= clock_timestamp() \
         ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if due.is_empty() {
        return Ok(0);
    }
    think(settings.think_time).await;
    let freed = expire(&mut tx, &due).await?;
    tx.commit().await?;
    tell_freed(holds, &freed).await;
    Ok(due.len())
}

/// BROKEN on purpose: looks without locking, writes without re-checking.
async fn sweep_unlocked(
    pool: &PgPool,
    holds: &dyn HoldSeats,
    settings: &Settings,
) -> Result<usize, BoxError> {
    let due: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM holds WHERE status = 'held' AND expires_at <= clock_timestamp() \
         ORDER BY expires_at LIMIT $1",
    )
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    if due.is_empty() {
        return Ok(0);
    }
    think(settings.think_time).await;
    let mut tx = pool.begin().await?;
    let freed = expire(&mut tx, &due).await?;
    tx.commit().await?;
    tell_freed(holds, &freed).await;
    Ok(due.len())
}

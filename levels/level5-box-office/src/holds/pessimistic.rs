//! `pessimistic`: lock every seat row asked for, *in one global order*,
//! then look, decide and write while nobody else can.
//!
//! Where the locks are:
//!
//! - **Kind:** PostgreSQL's row-level `FOR UPDATE` lock, one per seat row,
//!   taken one statement at a time. Seat-map readers are not blocked; only
//!   other buyers (and the sweeper, freeing a seat) wait.
//! - **What they protect:** the sequence read the seats, check they are all
//!   free, insert the hold, point the seats at it, *commit*.
//! - **Why that scope:** row locks live until the transaction ends, and that
//!   is exactly right. Let go of them before the commit
//!   (`--lock-scope before-commit`, kept to show it) and a second buyer reads
//!   the seats we have not written yet: both hold the same seat.
//! - **Why one order:** a buyer who wants seats [1, 2] and one who wants
//!   [2, 1] each lock their first seat, then wait for the other's: a
//!   deadlock. Sorting the seats first (`--lock-order global`, the default)
//!   makes every buyer lock in the same order, so whoever gets seat 1 first
//!   also gets seat 2, and the other simply waits. With
//!   `--lock-order request` the deadlock happens; PostgreSQL finds it after
//!   `deadlock_timeout` (1 s by default), rolls one transaction back with
//!   SQLSTATE 40P01, and that buyer is answered 503 `busy` after waiting a
//!   second for nothing. Nothing is double-sold; the cost is the wait and a
//!   buyer who must click again.
//!
//! A buyer waits for a seat at most `--lock-timeout-ms` (503 busy after).

use async_trait::async_trait;
use sqlx::PgPool;

use super::{
    bound_waits, check_limit, insert_hold, lock_user, pause, read_seat, require_show, take_seats,
    taken, Hold, HoldRequest, HoldSeats, SeatRow,
};
use crate::error::BoxError;
use crate::{LockOrder, LockScope, Settings};

/// Holds seats under `FOR UPDATE` row locks.
pub struct Pessimistic {
    /// The database.
    pub pool: PgPool,
    /// The server's settings (order, scope, timeout, think time).
    pub settings: Settings,
}

#[async_trait]
impl HoldSeats for Pessimistic {
    fn name(&self) -> &'static str {
        "pessimistic"
    }

    async fn hold(&self, request: &HoldRequest) -> Result<Hold, BoxError> {
        let mut tx = self.pool.begin().await?;
        bound_waits(&mut tx, self.settings.lock_timeout_ms).await?;
        lock_user(&mut tx, request.user).await?;
        require_show(&mut tx, request.show_id).await?;
        check_limit(&mut tx, request, self.settings.max_seats).await?;
        let rows = self.lock_seats(&mut tx, request).await?;
        taken(&rows)?;
        pause(&self.settings).await;
        if self.settings.lock_scope == LockScope::BeforeCommit {
            // BROKEN on purpose: the commit releases the seat locks, and
            // the writes below happen in a second transaction, unguarded.
            // Another buyer who read the seats meanwhile takes them too.
            tx.commit().await?;
            pause(&self.settings).await;
            tx = self.pool.begin().await?;
        }
        let hold = insert_hold(&mut tx, request, &rows, self.settings.hold_ttl, None).await?;
        take_seats(&mut tx, &hold).await?;
        tx.commit().await?;
        Ok(hold)
    }
}

impl Pessimistic {
    /// Locks the seats one by one, in ascending seat order (or, broken, in
    /// the order the buyer listed them), pausing for the think time between
    /// two locks so that the deadlock window is wide open when it exists.
    async fn lock_seats(
        &self,
        tx: &mut sqlx::PgConnection,
        request: &HoldRequest,
    ) -> Result<Vec<SeatRow>, BoxError> {
        let mut order = request.seats.clone();
        if self.settings.lock_order == LockOrder::Global {
            order.sort_unstable();
        }
        let mut rows = Vec::with_capacity(order.len());
        for (i, seat) in order.into_iter().enumerate() {
            if i > 0 {
                pause(&self.settings).await;
            }
            rows.push(read_seat(tx, request.show_id, seat, true).await?);
        }
        Ok(rows)
    }
}

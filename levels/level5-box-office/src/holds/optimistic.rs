//! `optimistic`: read the seats without locking them, and write each one
//! only if nobody changed it since (`WHERE version = $read`).
//!
//! No buyer waits for another while thinking. The check moves to the write:
//! each seat's `UPDATE ... WHERE version = $v AND hold_id IS NULL` changes
//! one row or none. If any seat changed (0 rows), someone took or touched
//! it after we read it: the whole transaction rolls back, our hold with it,
//! and nothing is half-held.
//!
//! Then there are two answers, both kept (`--max-retries`):
//!
//! - **Fail fast** (`--max-retries 0`), as the seed projects did: the lost
//!   race is the answer. If the seats are now taken, 409 `seats_unavailable`
//!   naming them; if they are free again (the winner released them), 503
//!   `busy`, click again.
//! - **Retry** (the default, 5): start over in a *fresh* transaction (an old
//!   snapshot would only re-read the stale versions), after a short random
//!   pause. A retry that finds the seats taken answers 409 at once; one that
//!   finds them free tries again.
//!
//! Where the locks are: the UPDATE still takes each seat row's lock until
//! COMMIT (every write does), but only from the write to the commit, never
//! while thinking. The seats are written in ascending order, so two buyers
//! can never hold each other's seat locks in a cycle.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{PgConnection, PgPool};

use super::{
    bound_waits, check_limit, insert_hold, lock_user, pause, read_seat, require_show, taken, Hold,
    HoldRequest, HoldSeats, SeatRow,
};
use crate::error::BoxError;
use crate::Settings;

/// Holds seats with a version check at write time.
pub struct Optimistic {
    /// The database.
    pub pool: PgPool,
    /// The server's settings (retries, think time).
    pub settings: Settings,
}

/// How one attempt ended.
enum Attempt {
    Held(Hold),
    /// A seat's version changed between our read and our write.
    Conflict,
}

#[async_trait]
impl HoldSeats for Optimistic {
    fn name(&self) -> &'static str {
        "optimistic"
    }

    async fn hold(&self, request: &HoldRequest) -> Result<Hold, BoxError> {
        let mut attempts = 0;
        loop {
            // A fresh transaction each time: see the module comment.
            match self.attempt(request).await? {
                Attempt::Held(hold) => return Ok(hold),
                Attempt::Conflict if attempts < self.settings.max_retries => {
                    attempts += 1;
                    let ceiling = 2u64 << attempts.min(5);
                    tokio::time::sleep(Duration::from_millis(rand::random_range(0..ceiling))).await;
                }
                Attempt::Conflict => return Err(self.lost_race(request).await),
            }
        }
    }
}

impl Optimistic {
    async fn attempt(&self, request: &HoldRequest) -> Result<Attempt, BoxError> {
        let mut tx = self.pool.begin().await?;
        bound_waits(&mut tx, self.settings.lock_timeout_ms).await?;
        lock_user(&mut tx, request.user).await?;
        require_show(&mut tx, request.show_id).await?;
        check_limit(&mut tx, request, self.settings.max_seats).await?;
        let rows = read_seats(&mut tx, request).await?;
        taken(&rows)?;
        pause(&self.settings).await;
        let hold = insert_hold(&mut tx, request, &rows, self.settings.hold_ttl, None).await?;
        for seat in &rows {
            let written = sqlx::query(
                "UPDATE seats SET hold_id = $1, version = version + 1 \
                 WHERE show_id = $2 AND seat_no = $3 AND version = $4 AND hold_id IS NULL",
            )
            .bind(hold.hold_id)
            .bind(request.show_id)
            .bind(seat.seat_no)
            .bind(seat.version)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if written == 0 {
                // Dropping the transaction rolls back the hold and any seat
                // already written: all or nothing.
                return Ok(Attempt::Conflict);
            }
        }
        tx.commit().await?;
        Ok(Attempt::Held(hold))
    }

    /// The answer once retries ran out: which seats are taken now, or busy.
    async fn lost_race(&self, request: &HoldRequest) -> BoxError {
        let check = async {
            let mut conn = self.pool.acquire().await?;
            let rows = read_seats(&mut conn, request).await?;
            taken(&rows)?;
            Ok::<_, BoxError>(())
        };
        match check.await {
            Err(err) => err,
            Ok(()) => BoxError::Busy("another buyer changed these seats while we held them"),
        }
    }
}

/// Reads the seats in ascending order, without locks.
async fn read_seats(
    conn: &mut PgConnection,
    request: &HoldRequest,
) -> Result<Vec<SeatRow>, BoxError> {
    let mut order = request.seats.clone();
    order.sort_unstable();
    let mut rows = Vec::with_capacity(order.len());
    for seat in order {
        rows.push(read_seat(conn, request.show_id, seat, false).await?);
    }
    Ok(rows)
}

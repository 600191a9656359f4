//! `atomic`: no read at all. One conditional UPDATE does the check and the
//! write together, inside the database:
//!
//! ```sql
//! UPDATE tickets SET stock = stock - 1 WHERE id = $1 AND stock > 0
//! ```
//!
//! The race of Level 0 lives in the gap between *reading* the stock in the
//! server and *writing* a value computed from it. Here there is no gap: the
//! server never sees the stock, it asks PostgreSQL to take one *if one is
//! left*, and PostgreSQL answers "1 row updated" (sold) or "0 rows" (none
//! left).
//!
//! Is there still a lock? Yes, and that is the honest answer to "do we need
//! a lock at all?": we take no *explicit* lock, but every UPDATE takes the
//! row's exclusive lock, held until COMMIT.
//!
//! - **What it protects:** the row between our decrement and our commit. A
//!   second UPDATE of the same row waits; when we commit, PostgreSQL
//!   re-reads the row *as we left it*, re-checks `stock > 0` against it and
//!   subtracts from that value. That re-check (READ COMMITTED's rule for
//!   updates) is why `stock - 1` can never be lost and `stock > 0` can never
//!   be fooled.
//! - **Why that scope:** the order insert belongs to the same sale, so it is
//!   in the same transaction: a failed insert (this buyer already holds the
//!   ticket) rolls the decrement back. Nothing is spent on a refused order.
//! - **What it costs:** only the time from the UPDATE to the COMMIT, which
//!   is why this is the fastest correct strategy. `--think-time-ms` pauses
//!   *inside* that window (after the UPDATE, before the insert and commit),
//!   standing for any work a real sale does there. Every other buyer of the
//!   ticket waits through it, so a long pause makes `atomic` as slow as
//!   `pessimistic`: keep work out of a transaction that holds a hot row.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use sqlx::PgConnection;
use ticket_core::strategy::StrategyContext;
use ticket_core::{db, Order, Purchase, PurchaseError, SellTickets};

use crate::retry::{settle, Failure};
use crate::transaction::{in_transaction, Opening};
use crate::Level2Config;

/// Sells with one conditional `UPDATE ... WHERE stock > 0`.
pub struct Atomic {
    ctx: StrategyContext,
    /// How its transaction begins.
    opening: Opening,
}

/// Builds [`Atomic`].
pub fn build(
    context: &StrategyContext,
    config: &Level2Config,
) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(Atomic {
        ctx: context.clone(),
        opening: Opening::read_committed(context, config)?,
    }))
}

#[async_trait]
impl SellTickets for Atomic {
    fn name(&self) -> &'static str {
        "atomic"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        let sale = in_transaction(&self.ctx, &self.opening, async |tx| {
            self.sell(tx, &purchase).await
        });
        settle(&self.ctx.metrics, sale.await)
    }
}

impl Atomic {
    async fn sell(&self, tx: &mut PgConnection, purchase: &Purchase) -> Result<Order, Failure> {
        let (ticket, user) = (purchase.ticket, purchase.user);
        // Check and write in one statement. The row lock is taken here (we
        // may wait for it) and held until COMMIT.
        //
        // A buyer's second click should not queue for the row lock just to
        // be rolled back, so the buyer's existing order is part of the
        // condition: PostgreSQL checks the WHERE clause on the row *before*
        // locking it, and a row that fails it is skipped, not locked. Asking
        // in the same statement, rather than in a SELECT before it, saves a
        // round trip on every sale. The look may race with the same buyer's
        // other click; UNIQUE (ticket_id, user_id) settles that race.
        let waiting = Instant::now();
        let left: Option<i32> = sqlx::query_scalar(
            "UPDATE tickets SET stock = stock - 1, version = version + 1 \
             WHERE id = $1 AND stock > 0 AND NOT EXISTS \
               (SELECT 1 FROM ticket_orders WHERE ticket_id = $1 AND user_id = $2) \
             RETURNING stock",
        )
        .bind(ticket.get())
        .bind(user.get())
        .fetch_optional(&mut *tx)
        .await?;
        self.ctx.metrics.lock_wait(waiting.elapsed());
        if left.is_none() {
            // No row matched: this buyer holds the ticket already, none is
            // left, or there is no such ticket. Only buyers who could not
            // buy pay for these questions, and they hold no lock.
            return Err(refusal(tx, purchase).await?.into());
        }

        // The think time sits inside the lock window: every other buyer of
        // this ticket is waiting on our row lock right now.
        self.ctx.think().await;

        Ok(db::insert_order(tx, purchase).await?)
        // `finish` commits: the decrement, the order and the lock's release
        // happen together.
    }
}

/// Why a conditional UPDATE matched no row, asked in the order a buyer
/// should hear it: their own order first (a second click is
/// `already_purchased` even once sold out), then whether the ticket exists.
async fn refusal(tx: &mut PgConnection, purchase: &Purchase) -> Result<PurchaseError, Failure> {
    if db::has_order(tx, purchase.ticket, purchase.user).await? {
        return Ok(PurchaseError::AlreadyPurchased);
    }
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tickets WHERE id = $1)")
        .bind(purchase.ticket.get())
        .fetch_one(&mut *tx)
        .await?;
    Ok(if exists {
        PurchaseError::SoldOut
    } else {
        PurchaseError::NotFound
    })
}

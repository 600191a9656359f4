//! `optimistic`: take no lock while deciding; at the write, check that nobody
//! changed the ticket since we read it, and start over if somebody did.
//!
//! The `version` column is the whole mechanism. Every write bumps it; our
//! write says `WHERE version = <the version we read>`. If another buyer
//! committed in between, that condition matches no row, the UPDATE changes
//! nothing, and we know our read was stale. Nothing wrong was written, so we
//! can simply try again with a fresh read: a lost race costs a retry, never
//! an oversell.
//!
//! **Why a version, and not the stock we read** (`WHERE stock = $read`)? A
//! value can come back; a version cannot. Between our read (stock 5) and
//! our write, one buyer buys (4) and another cancels (5 again): the stock
//! compares equal, so a check on it passes as if nothing had happened. This
//! is the ABA problem of lock-free programming. Here the stock we would
//! write (4) happens to be right, because the stock is the only thing our
//! decision used; but a decision made from *anything else* read with it
//! (the buyer's eligibility, a price, which sale the row belongs to) would
//! be applied to a row that changed under it, and the check would not
//! notice. A version counts changes and only grows, so "same version"
//! means "no write in between", which is what the check must prove. (One
//! caveat: resetting a sale, as the load tool does between rushes, sets the
//! version back to 0; that is safe only because no purchase is in flight
//! across a reset.)
//!
//! Where the locks are:
//!
//! - While reading and thinking: **none**. The read is a plain SELECT in a
//!   READ COMMITTED transaction, which locks nothing; other buyers read and
//!   write the row freely meanwhile. That is what "optimistic" bets on: that
//!   nobody else writes in between.
//! - The UPDATE takes the ticket's **row lock** (an exclusive row-level lock,
//!   which PostgreSQL takes for every UPDATE), held until COMMIT, a few
//!   milliseconds later. A second writer of the same row waits for it, then
//!   PostgreSQL re-checks its `WHERE version = $v` against the row the first
//!   writer committed, finds a newer version, and updates nothing. That
//!   re-check is why the version test cannot be fooled, even by two writes
//!   that arrive in the same instant.
//!
//! The bet loses under a rush: 20 buyers read version 7, one wins, 19 find
//! version 8 and retry, 18 of those lose again... Each lost race is a wasted
//! read, a wasted transaction and a pause. Retries are therefore bounded
//! (`--max-retries`) and jittered (see [`crate::retry`]); when they run out
//! the buyer is answered 503 busy and clicks again. `--max-retries 0` fails
//! fast on the first lost race.
//!
//! Why read inside the transaction, holding a connection while thinking,
//! when no lock needs it? Because the pool then caps how many buyers race
//! at once (10 per server by default), as it does for every other strategy.
//! Read on a connection handed back before thinking, and *every* buyer of
//! the rush is in the race window at once: 500 per server read the same
//! version, one wins, 499 retry, and the wasted work grows with the square
//! of the crowd (`docs/02-db-locks.md` has the measurement).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use sqlx::PgConnection;
use ticket_core::strategy::StrategyContext;
use ticket_core::{db, Order, Purchase, PurchaseError, SellTickets};

use crate::retry::{with_retries, Failure, RetryPolicy};
use crate::transaction::{in_transaction, Opening};
use crate::Level2Config;

/// Sells with a version check at the write, retrying lost races.
pub struct Optimistic {
    ctx: StrategyContext,
    /// How each attempt's transaction begins.
    opening: Opening,
    retry: RetryPolicy,
}

/// Builds [`Optimistic`].
pub fn build(
    context: &StrategyContext,
    config: &Level2Config,
) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(Optimistic {
        ctx: context.clone(),
        opening: Opening::read_committed(context, config)?,
        retry: config.retry_policy(),
    }))
}

#[async_trait]
impl SellTickets for Optimistic {
    fn name(&self) -> &'static str {
        "optimistic"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        with_retries(self.retry, &self.ctx.metrics, || self.attempt(&purchase)).await
    }
}

impl Optimistic {
    /// One try, in a fresh transaction: read, check, think, then write only
    /// if the version is still the one we read.
    async fn attempt(&self, purchase: &Purchase) -> Result<Order, Failure> {
        in_transaction(&self.ctx, &self.opening, async |tx| {
            self.sell(tx, purchase).await
        })
        .await
    }

    async fn sell(&self, tx: &mut PgConnection, purchase: &Purchase) -> Result<Order, Failure> {
        let (ticket, user) = (purchase.ticket, purchase.user);
        // 1. Read stock *and version*. No lock.
        let (stock, version): (i32, i64) =
            sqlx::query_as("SELECT stock, version FROM tickets WHERE id = $1")
                .bind(ticket.get())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(PurchaseError::NotFound)?;

        // 2. Check. "None left" needs no version check: we write nothing
        //    on it, and it was true when we read it.
        if db::has_order(tx, ticket, user).await? {
            return Err(PurchaseError::AlreadyPurchased.into());
        }
        if stock <= 0 {
            return Err(PurchaseError::SoldOut.into());
        }

        // 3. The race window, holding no lock: other buyers may sell the
        //    ticket meanwhile, and we will find out at the write.
        self.ctx.think().await;

        // 4. Write what we decided, on the condition that the ticket is the
        //    one we read. We write `stock = <what we read> - 1`, not
        //    `stock - 1`, on purpose: the version check alone has to make
        //    that safe, and it does.
        let waiting = Instant::now();
        let updated = sqlx::query(
            "UPDATE tickets SET stock = $3, version = version + 1 \
             WHERE id = $1 AND version = $2",
        )
        .bind(ticket.get())
        .bind(version)
        .bind(stock - 1)
        .execute(&mut *tx)
        .await?;
        self.ctx.metrics.lock_wait(waiting.elapsed());
        if updated.rows_affected() == 0 {
            // Somebody committed a sale since our read. Nothing was
            // written; `finish` rolls back and `with_retries` goes round
            // again with a fresh transaction.
            return Err(Failure::Lost { event: "conflict" });
        }

        // 5. The order, in the same transaction: if this buyer's second
        //    click got here first, UNIQUE (ticket_id, user_id) refuses it,
        //    the transaction rolls back, and the stock we just took is given
        //    back with it.
        Ok(db::insert_order(tx, purchase).await?)
    }
}

//! `advisory`: a named lock in PostgreSQL, `pg_advisory_xact_lock(ticket)`,
//! around Level 0's read-check-write.
//!
//! Many courses teach this lock with MySQL's `GET_LOCK('ticket-1', timeout)`:
//! a lock on a *name*, not on a row. PostgreSQL's version takes a number (a
//! `bigint`, here the ticket's id). Nothing in the database is locked by it:
//! it only means something because every seller of the ticket asks for the
//! same number first. That makes it Level 1's `per-ticket` mutex moved into
//! the one place both servers share.
//!
//! Where the lock is:
//!
//! - **Kind:** a transaction-level advisory lock (`_xact_`), exclusive, keyed
//!   by the ticket id. A second buyer of the ticket, on any server, waits in
//!   `pg_advisory_xact_lock` until we end our transaction. Plain reads, and
//!   writers who do not ask for the lock, are not stopped: every path that
//!   changes the stock must take it, or it protects nothing.
//! - **What it protects:** read stock, check, write, insert the order,
//!   *commit*.
//! - **Why that scope:** the `_xact_` form is released by COMMIT or
//!   ROLLBACK and by nothing else, so the lock covers the commit (Level 1's
//!   rule) without a line of ours. The session form, `pg_advisory_lock`,
//!   would stay held after COMMIT until an explicit `pg_advisory_unlock`:
//!   forget that on one path (an error, a cancelled request) and the pooled
//!   connection keeps the ticket locked for whoever uses it next.
//!
//! How the wait ends: `--lock-timeout-ms`, as PostgreSQL's `lock_timeout`,
//! bounds it (55P03, answered 503 busy). Unlike a row lock behind a hot row
//! (see [`crate::pessimistic`]), an advisory lock is one wait in one queue,
//! so `lock_timeout` alone bounds the whole of it.
//!
//! The key space is one per database and shared by everyone who uses
//! advisory locks there (sqlx's migrations take one, keyed by a hash of the
//! database name). Two unrelated users picking the same number only wait
//! for each other: slower, never wrong.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use sqlx::PgConnection;
use ticket_core::strategy::StrategyContext;
use ticket_core::{
    db, CancelError, Cancellation, Order, OrderId, Purchase, PurchaseError, SellTickets, TicketId,
    UserId,
};

use crate::pessimistic::{look_before_locking, sell_locked_row};
use crate::retry::{settle, Failure};
use crate::transaction::{in_transaction, Opening};
use crate::Level2Config;

/// Sells under `pg_advisory_xact_lock(ticket id)`.
pub struct Advisory {
    ctx: StrategyContext,
    /// How its transaction begins.
    opening: Opening,
    /// PostgreSQL's spelling of `--lock-timeout-ms`, for example `"1000ms"`.
    lock_timeout: String,
}

/// Builds [`Advisory`].
pub fn build(
    context: &StrategyContext,
    config: &Level2Config,
) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(Advisory {
        ctx: context.clone(),
        opening: Opening::read_committed(context, config)?,
        lock_timeout: format!("{}ms", config.lock_timeout_ms),
    }))
}

#[async_trait]
impl SellTickets for Advisory {
    fn name(&self) -> &'static str {
        "advisory"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        let sale = in_transaction(&self.ctx, &self.opening, async |tx| {
            self.sell(tx, &purchase).await
        });
        settle(&self.ctx.metrics, sale.await)
    }

    async fn cancel(
        &self,
        ticket: TicketId,
        order: OrderId,
        user: UserId,
    ) -> Option<Result<Cancellation, CancelError>> {
        // Sales write an absolute stock (`read - 1`) under the named lock and
        // lock no row; a restock outside the lock could land between a sale's
        // read and write and be overwritten. So a cancel takes the lock too.
        Some(self.cancel_under_lock(ticket, order, user).await)
    }
}

impl Advisory {
    /// Cancels `order` inside the ticket's named lock: the same queries as
    /// [`db::cancel_order`], after `pg_advisory_xact_lock`.
    async fn cancel_under_lock(
        &self,
        ticket: TicketId,
        order: OrderId,
        user: UserId,
    ) -> Result<Cancellation, CancelError> {
        let mut tx = self.ctx.pool.begin().await.map_err(PurchaseError::from)?;
        self.take_lock(&mut tx, ticket)
            .await
            .map_err(PurchaseError::from)?;
        match db::lock_order_owner(&mut tx, ticket, order)
            .await
            .map_err(PurchaseError::from)?
        {
            Some(owner) if owner != user.get() => Err(CancelError::Forbidden),
            Some(_) => {
                db::move_to_cancelled(&mut tx, ticket, order)
                    .await
                    .map_err(PurchaseError::from)?;
                tx.commit().await.map_err(PurchaseError::from)?;
                Ok(Cancellation {
                    order_id: order,
                    ticket_id: ticket,
                    user_id: user,
                    status: "cancelled",
                })
            }
            // Not a live order: already cancelled (the same answer again),
            // another buyer's, or unknown. Nothing to restock, no lock needed.
            None => {
                drop(tx);
                db::cancel_order(&self.ctx.pool, ticket, order, user).await
            }
        }
    }

    /// Waits, at most `--lock-timeout-ms`, for the ticket's named lock, held
    /// until the transaction ends.
    async fn take_lock(&self, tx: &mut PgConnection, ticket: TicketId) -> sqlx::Result<()> {
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(&self.lock_timeout)
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ticket.get())
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn sell(&self, tx: &mut PgConnection, purchase: &Purchase) -> Result<Order, Failure> {
        let ticket = purchase.ticket;
        // A late buyer is told "sold out" without queueing for the lock.
        look_before_locking(tx, ticket).await?;

        // The lock: wait here for the ticket's number, until COMMIT.
        let waiting = Instant::now();
        self.take_lock(tx, ticket).await?;
        self.ctx.metrics.lock_wait(waiting.elapsed());

        // Level 0's read, now under the lock: nobody can sell in between.
        let stock: i32 = sqlx::query_scalar("SELECT stock FROM tickets WHERE id = $1")
            .bind(ticket.get())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(PurchaseError::NotFound)?;
        sell_locked_row(&self.ctx, tx, purchase, stock).await
    }
}

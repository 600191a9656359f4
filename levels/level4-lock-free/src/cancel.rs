//! Cancelling a Level 4 order: the unit goes back on sale in both stores,
//! once, whether or not the order has reached PostgreSQL yet.
//!
//! The database-only cancellation the other levels share would be wrong
//! here: it moves the row and restocks PostgreSQL, while Redis, which
//! decides every sale, would go on counting the unit as sold and the buyer
//! as served. So Level 4 cancels in this order:
//!
//! 1. **Ask Redis** whether this buyer holds this order in the current sale.
//!    If not, PostgreSQL's answer stands (a repeated cancel, someone else's
//!    order, no such order): [`ticket_core::db::cancel_order`].
//! 2. **Cancel in PostgreSQL**, under the ticket's row lock. A persisted order
//!    moves to `cancelled_orders` and its unit goes back into `stock`. An order
//!    the worker has not written yet goes straight to `cancelled_orders`, with
//!    no stock change (its unit was never taken in PostgreSQL); when the worker
//!    reaches its entry it finds it there and inserts nothing. The worker's
//!    batches take the same row lock first, so a cancellation and a batch
//!    never interleave: the batch sees the cancellation committed and does not
//!    bring the order back.
//! 3. **Then Redis** (`lua/cancel.lua`): forget the buyer, put the unit back.
//!
//! PostgreSQL first: if the Redis step fails (Redis down), the unit stays
//! unsold in Redis, which is safe, and the buyer's retry (or `reconcile
//! --repair`) finishes the job. Redis first would let the unit be sold again
//! while PostgreSQL still holds the old order: an oversell.

use ticket_core::redis_checks::is_unavailable;
use ticket_core::{db, CancelError, Cancellation, OrderId, PurchaseError, TicketId, UserId};

use crate::store::SaleStore;

impl SaleStore {
    /// Cancels `order` of `ticket` for `user` in both stores (see the
    /// module's doc). Repeating a cancellation gives the same answer and
    /// restocks nothing.
    pub async fn cancel(
        &self,
        ticket: TicketId,
        order: OrderId,
        user: UserId,
    ) -> Result<Cancellation, CancelError> {
        let keys = self.keys();
        let (epoch, held): (Option<i64>, Option<i64>) = self
            .redis()
            .pipe(
                redis::pipe()
                    .cmd("HGET")
                    .arg(keys.sale(ticket))
                    .arg("epoch")
                    .cmd("HGET")
                    .arg(keys.buyers(ticket))
                    .arg(user.get()),
            )
            .await
            .map_err(redis_failed)?;
        let epoch = match (epoch, held) {
            (Some(epoch), Some(held)) if held == order.0 => epoch,
            _ => return db::cancel_order(self.pool(), ticket, order, user).await,
        };
        let answer = self.cancel_in_database(ticket, order, user, epoch).await?;
        let _: i64 = self
            .redis()
            .invoke(
                self.scripts()
                    .cancel
                    .key(keys.sale(ticket))
                    .key(keys.buyers(ticket))
                    .arg(epoch)
                    .arg(user.get())
                    .arg(order.0),
            )
            .await
            .map_err(redis_failed)?;
        Ok(answer)
    }

    /// Step 2, one transaction under the ticket's row lock.
    async fn cancel_in_database(
        &self,
        ticket: TicketId,
        order: OrderId,
        user: UserId,
        epoch: i64,
    ) -> Result<Cancellation, CancelError> {
        let answer = Cancellation {
            order_id: order,
            ticket_id: ticket,
            user_id: user,
            status: "cancelled",
        };
        let pg = |err: sqlx::Error| CancelError::Purchase(PurchaseError::from(err));
        let mut tx = self.pool().begin().await.map_err(pg)?;
        // Behind a busy worker a cancel waits, but not forever (55P03: busy).
        sqlx::query("SET LOCAL lock_timeout = '5s'")
            .execute(&mut *tx)
            .await
            .map_err(pg)?;
        let sale: Option<(i64, i64)> =
            sqlx::query_as("SELECT sale_epoch, version FROM tickets WHERE id = $1 FOR UPDATE")
                .bind(ticket.get())
                .fetch_optional(&mut *tx)
                .await
                .map_err(pg)?;
        match sale {
            Some((sale_epoch, version)) if sale_epoch == epoch && version > 0 => {}
            // No such ticket, or its sale was reset since: the order went
            // with the old sale.
            _ => return Err(CancelError::NotFound),
        }

        let live = db::lock_order_owner(&mut tx, ticket, order)
            .await
            .map_err(pg)?;
        match live {
            Some(owner) if owner != user.get() => return Err(CancelError::Forbidden),
            // Persisted: move it, and its unit goes back.
            Some(_) => db::move_to_cancelled(&mut tx, ticket, order)
                .await
                .map_err(pg)?,
            None => {
                let cancelled = db::cancelled_order_owner(&mut *tx, ticket, order)
                    .await
                    .map_err(pg)?;
                match cancelled {
                    // Cancelled before: the same answer, nothing restocked.
                    Some(owner) if owner == user.get() => {}
                    Some(_) => return Err(CancelError::Forbidden),
                    // Not persisted yet: record the cancellation; the worker
                    // will find it and insert nothing. PostgreSQL never took
                    // its unit, so there is nothing to put back here.
                    None => {
                        sqlx::query(
                            "INSERT INTO cancelled_orders (id, ticket_id, user_id, ordered_at) \
                             VALUES ($1, $2, $3, now())",
                        )
                        .bind(order.0)
                        .bind(ticket.get())
                        .bind(user.get())
                        .execute(&mut *tx)
                        .await
                        .map_err(pg)?;
                    }
                }
            }
        }
        tx.commit().await.map_err(pg)?;
        Ok(answer)
    }

    /// `reconcile --repair`: applies in Redis a cancellation PostgreSQL has
    /// committed (step 3, when it failed).
    pub(crate) async fn restock_cancelled(
        &self,
        ticket: TicketId,
        epoch: i64,
        user: i64,
        order: i64,
    ) -> Result<bool, redis::RedisError> {
        let keys = self.keys();
        let done: i64 = self
            .redis()
            .invoke(
                self.scripts()
                    .cancel
                    .key(keys.sale(ticket))
                    .key(keys.buyers(ticket))
                    .arg(epoch)
                    .arg(user)
                    .arg(order),
            )
            .await?;
        Ok(done == 1)
    }
}

/// A Redis failure, as the buyer who cancels is answered.
fn redis_failed(err: redis::RedisError) -> CancelError {
    CancelError::Purchase(if is_unavailable(&err) {
        PurchaseError::Unavailable(anyhow::Error::new(err).context("Redis, which holds the sale"))
    } else {
        PurchaseError::Unexpected(anyhow::Error::new(err).context("Redis refused a command"))
    })
}

//! `nowait`: lock the ticket's row if it is free; if it is not, say so at
//! once.
//!
//! Same lock as [`crate::pessimistic`] (the row's `FOR NO KEY UPDATE` lock,
//! held until COMMIT, protecting read-check-write-commit), with one word
//! more: `FOR NO KEY UPDATE NOWAIT`. Where `pessimistic` queues behind the holder,
//! `NOWAIT` makes PostgreSQL refuse at once with SQLSTATE 55P03
//! (`lock_not_available`). The buyer is answered 503 busy with `Retry-After`
//! and picks again, like a shop assistant saying "someone is buying that
//! seat right now, try again in a moment".
//!
//! Why fail fast? Nobody waits while holding a database connection, so a
//! rush cannot pile hundreds of waiting transactions onto PostgreSQL, and the
//! pool stays free for buyers whose tickets are not contended. The price is
//! paid by the buyers: under a rush almost every first try is refused, and
//! the crowd's clicks come back again and again (the load tool counts them
//! as attempts). Nothing is ever oversold, and nothing waits.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use sqlx::PgConnection;
use ticket_core::strategy::StrategyContext;
use ticket_core::{db, Order, Purchase, PurchaseError, SellTickets};

use crate::pessimistic::{look_before_locking, sell_locked_row};
use crate::retry::{settle, Failure};
use crate::transaction::{in_transaction, Opening};
use crate::Level2Config;

/// Sells under `SELECT ... FOR NO KEY UPDATE NOWAIT`: a held row is an immediate
/// busy.
pub struct NoWait {
    ctx: StrategyContext,
    /// How its transaction begins.
    opening: Opening,
}

/// Builds [`NoWait`].
pub fn build(
    context: &StrategyContext,
    config: &Level2Config,
) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(NoWait {
        ctx: context.clone(),
        opening: Opening::read_committed(context, config)?,
    }))
}

#[async_trait]
impl SellTickets for NoWait {
    fn name(&self) -> &'static str {
        "nowait"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        let sale = in_transaction(&self.ctx, &self.opening, async |tx| {
            self.sell(tx, &purchase).await
        });
        settle(&self.ctx.metrics, sale.await)
    }
}

impl NoWait {
    async fn sell(&self, tx: &mut PgConnection, purchase: &Purchase) -> Result<Order, Failure> {
        let ticket = purchase.ticket;
        // 0. A look before the lock (see `look_before_locking`): once the
        //    ticket is sold out, late buyers are told so instead of being
        //    refused by each other's locks.
        look_before_locking(tx, ticket).await?;

        // 1. Lock, or be refused at once, then read.
        let waiting = Instant::now();
        let stock: Option<i32> =
            sqlx::query_scalar("SELECT stock FROM tickets WHERE id = $1 FOR NO KEY UPDATE NOWAIT")
                .bind(ticket.get())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|err| match db::sqlstate(&err).as_deref() {
                    Some("55P03") => Failure::Busy {
                        event: "lock_refused",
                        reason: "another buyer holds the ticket row right now",
                    },
                    _ => Failure::from(err),
                })?;
        self.ctx.metrics.lock_wait(waiting.elapsed());
        let stock = stock.ok_or(PurchaseError::NotFound)?;

        // 2-4. Check, think, write, as `pessimistic` does under its lock
        //      (`sell_locked_row`); `finish` commits and releases the row.
        //      Every buyer who arrives during the race window is refused at
        //      once instead of queueing.
        sell_locked_row(&self.ctx, tx, purchase, stock).await
    }
}

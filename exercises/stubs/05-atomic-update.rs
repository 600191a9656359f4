//! Exercise 5: one atomic conditional update. Read the statement first:
//! `exercises/05-atomic-update/README.md`. Check your work with
//! `cargo run -p load -- exercise check 5`.

use std::sync::Arc;

use async_trait::async_trait;
use ticket_core::strategy::StrategyContext;
use ticket_core::{db, Order, Purchase, PurchaseError, SellTickets};

use crate::kit::{read_stock, Config};

/// Your strategy: no lock you take yourself.
pub struct AtomicUpdate {
    ctx: StrategyContext,
}

/// Builds your strategy when the server starts.
pub fn build(ctx: &StrategyContext, _: &Config) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(AtomicUpdate { ctx: ctx.clone() }))
}

#[async_trait]
impl SellTickets for AtomicUpdate {
    fn name(&self) -> &'static str {
        "atomic-update"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        let ticket = purchase.ticket;
        let mut tx = self.ctx.pool.begin().await?;
        let stock = read_stock(&mut tx, ticket).await?;
        if stock <= 0 {
            return Err(PurchaseError::SoldOut);
        }
        self.ctx.think().await;
        // `stock - 1` in SQL, not a value computed from our read: no lost
        // update. Is that enough?
        sqlx::query("UPDATE tickets SET stock = stock - 1, version = version + 1 WHERE id = $1")
            .bind(ticket.get())
            .execute(&mut *tx)
            .await?;
        let order = db::insert_order(&mut tx, &purchase).await?;
        tx.commit().await?;
        Ok(order)
    }
}

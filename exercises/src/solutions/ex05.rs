//! Exercise 5, solved: Level 2's `atomic`
//! (`levels/level2-db-lock/src/atomic.rs`) in the exercise's shape.

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
        // A look first: "none left" needs no lock and no write.
        if read_stock(&mut tx, ticket).await? <= 0 {
            return Err(PurchaseError::SoldOut);
        }
        self.ctx.think().await;
        // Check and write in one statement: PostgreSQL re-checks `stock > 0`
        // against the row as the previous writer left it.
        let left: Option<i32> = sqlx::query_scalar(
            "UPDATE tickets SET stock = stock - 1, version = version + 1 \
             WHERE id = $1 AND stock > 0 RETURNING stock",
        )
        .bind(ticket.get())
        .fetch_optional(&mut *tx)
        .await?;
        if left.is_none() {
            return Err(PurchaseError::SoldOut);
        }
        let order = db::insert_order(&mut tx, &purchase).await?;
        tx.commit().await?;
        Ok(order)
    }
}

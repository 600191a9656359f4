//! Exercise 3: a pessimistic row lock. Read the statement first:
//! `exercises/03-row-lock/README.md`. Check your work with
//! `cargo run -p load -- exercise check 3`.

use std::sync::Arc;

use async_trait::async_trait;
use ticket_core::strategy::StrategyContext;
use ticket_core::{db, Order, Purchase, PurchaseError, SellTickets};

use crate::kit::Config;

/// Your strategy: the sale in one transaction, on any number of servers.
pub struct RowLock {
    ctx: StrategyContext,
}

/// Builds your strategy when the server starts.
pub fn build(ctx: &StrategyContext, _: &Config) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(RowLock { ctx: ctx.clone() }))
}

#[async_trait]
impl SellTickets for RowLock {
    fn name(&self) -> &'static str {
        "row-lock"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        let ticket = purchase.ticket;
        let mut tx = self.ctx.pool.begin().await?;
        // 1. Read the stock.
        let stock: i32 = sqlx::query_scalar("SELECT stock FROM tickets WHERE id = $1")
            .bind(ticket.get())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(PurchaseError::NotFound)?;
        // 2. Check it.
        if stock <= 0 {
            return Err(PurchaseError::SoldOut);
        }
        // 3. Think (the race window).
        self.ctx.think().await;
        // 4. Write the order and what we computed, then commit both.
        let order = db::insert_order(&mut tx, &purchase).await?;
        sqlx::query("UPDATE tickets SET stock = $2, version = version + 1 WHERE id = $1")
            .bind(ticket.get())
            .bind(stock - 1)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(order)
    }
}

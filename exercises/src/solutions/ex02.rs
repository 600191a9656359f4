//! Exercise 2, solved: the guard drops after COMMIT, as in Level 1
//! (`levels/level1-local-lock/src/mutex.rs`).

use std::sync::Arc;

use async_trait::async_trait;
use ticket_core::strategy::StrategyContext;
use ticket_core::{db, Order, Purchase, PurchaseError, SellTickets};

use crate::kit::{read_stock, Config};

/// Your strategy: a server-wide lock around read, check and write.
pub struct AcrossCommit {
    ctx: StrategyContext,
    /// Guards the sequence read-check-write(-commit?) of every sale on this
    /// server. Tokio's mutex, because the guard is held across `.await`.
    lock: tokio::sync::Mutex<()>,
}

/// Builds your strategy when the server starts.
pub fn build(ctx: &StrategyContext, _: &Config) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(AcrossCommit {
        ctx: ctx.clone(),
        lock: tokio::sync::Mutex::new(()),
    }))
}

#[async_trait]
impl SellTickets for AcrossCommit {
    fn name(&self) -> &'static str {
        "across-commit"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        let guard = self.lock.lock().await;
        let mut tx = self.ctx.pool.begin().await?;
        let stock = read_stock(&mut tx, purchase.ticket).await?;
        if stock <= 0 {
            return Err(PurchaseError::SoldOut);
        }
        let order = db::insert_order(&mut tx, &purchase).await?;
        sqlx::query("UPDATE tickets SET stock = $2, version = version + 1 WHERE id = $1")
            .bind(purchase.ticket.get())
            .bind(stock - 1)
            .execute(&mut *tx)
            .await?;
        // A commit takes a moment (a disk flush, a busy database): the think
        // time stands for it. Slow now, but no longer wrong.
        self.ctx.think().await;
        tx.commit().await?;
        // Only now can the next buyer read what we wrote.
        drop(guard);
        Ok(order)
    }
}

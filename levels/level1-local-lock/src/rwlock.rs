//! `rwlock`: look in parallel, sell one at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::PgPool;
use ticket_core::metrics::Metrics;
use ticket_core::strategy::StrategyContext;
use ticket_core::{
    db, CancelError, Cancellation, Order, OrderId, Purchase, PurchaseError, SellTickets, TicketId,
    UserId,
};

/// Sells under a server-wide `tokio::sync::RwLock`.
pub struct RwLockStrategy {
    /// Read side: "is anything left?", shared by any number of buyers.
    /// Write side: the whole read-check-write-commit, one buyer at a time.
    /// Tokio's RwLock is fair: once a writer waits, new readers queue
    /// behind it, so a stream of lookers cannot starve the sellers.
    lock: tokio::sync::RwLock<()>,
    pool: PgPool,
    think_time: Duration,
    metrics: Metrics,
}

/// Builds [`RwLockStrategy`].
pub fn build(context: &StrategyContext, _: &()) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(RwLockStrategy {
        lock: tokio::sync::RwLock::new(()),
        pool: context.pool.clone(),
        think_time: context.think_time,
        metrics: context.metrics.clone(),
    }))
}

#[async_trait]
impl SellTickets for RwLockStrategy {
    fn name(&self) -> &'static str {
        "rwlock"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        // Step 1, shared: a quick look. Once the ticket is sold out, every
        // late buyer gets their answer here, all at the same time.
        {
            let _shared = self.lock.read().await;
            let stock: i32 = sqlx::query_scalar("SELECT stock FROM tickets WHERE id = $1")
                .bind(purchase.ticket.get())
                .fetch_optional(&self.pool)
                .await?
                .ok_or(PurchaseError::NotFound)?;
            if stock <= 0 {
                return Err(PurchaseError::SoldOut);
            }
        }
        // Step 2, exclusive: the real sale. The look above may be stale by
        // now (we let go of the read lock, and a read lock cannot be
        // upgraded), so the sale reads and checks again under the write lock.
        let waiting = Instant::now();
        let _exclusive = self.lock.write().await;
        self.metrics.lock_wait(waiting.elapsed());
        level0::naive::read_check_write(&self.pool, self.think_time, &purchase).await
    }

    async fn cancel(
        &self,
        ticket: TicketId,
        order: OrderId,
        user: UserId,
    ) -> Option<Result<Cancellation, CancelError>> {
        // Sales write an absolute stock (`read - 1`) under this lock; a
        // restock outside it could land between a sale's read and write and
        // be overwritten. So cancellations queue on the same lock.
        let _exclusive = self.lock.write().await;
        Some(db::cancel_order(&self.pool, ticket, order, user).await)
    }
}

//! `mutex`: one lock for the whole server.

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

/// Sells under one server-wide `tokio::sync::Mutex`.
pub struct MutexStrategy {
    /// The lock. It protects no data of its own (`()`): what it protects is
    /// the *sequence* read-check-write-commit in the database. It is Tokio's
    /// mutex, not std's, because the guard is held across `.await` (every
    /// query); waiting for it parks the task instead of blocking a thread.
    lock: tokio::sync::Mutex<()>,
    pool: PgPool,
    think_time: Duration,
    metrics: Metrics,
}

/// Builds [`MutexStrategy`].
pub fn build(context: &StrategyContext, _: &()) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(MutexStrategy {
        lock: tokio::sync::Mutex::new(()),
        pool: context.pool.clone(),
        think_time: context.think_time,
        metrics: context.metrics.clone(),
    }))
}

#[async_trait]
impl SellTickets for MutexStrategy {
    fn name(&self) -> &'static str {
        "mutex"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        let waiting = Instant::now();
        let _guard = self.lock.lock().await;
        self.metrics.lock_wait(waiting.elapsed());
        // The guard lives until the end of this function, that is until
        // after COMMIT inside `read_check_write`. Dropping it earlier (say,
        // after the UPDATE but before the commit) would let the next buyer
        // read the stock we have not committed yet: the race again.
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
        let _guard = self.lock.lock().await;
        Some(db::cancel_order(&self.pool, ticket, order, user).await)
    }
}

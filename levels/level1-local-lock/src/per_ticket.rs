//! `per-ticket`: one lock per ticket, so tickets do not queue behind each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::PgPool;
use ticket_core::metrics::Metrics;
use ticket_core::strategy::StrategyContext;
use ticket_core::{
    db, CancelError, Cancellation, Order, OrderId, Purchase, PurchaseError, SellTickets, TicketId,
    UserId,
};

/// Sells under a `tokio::sync::Mutex` per ticket.
pub struct PerTicketStrategy {
    /// The locks, one per ticket, made on first use.
    ///
    /// The *map* is behind a `std::sync::Mutex`: it is held only to look up
    /// or insert an entry, never across an `.await`, so the cheaper blocking
    /// mutex is the right tool (as in tokio's mini-redis). The *entries* are
    /// `tokio::sync::Mutex`es, because those are held across the queries.
    /// Entries are never removed: one small lock per ticket ever sold.
    locks: Mutex<HashMap<TicketId, Arc<tokio::sync::Mutex<()>>>>,
    pool: PgPool,
    think_time: Duration,
    metrics: Metrics,
}

/// Builds [`PerTicketStrategy`].
pub fn build(context: &StrategyContext, _: &()) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(PerTicketStrategy {
        locks: Mutex::new(HashMap::new()),
        pool: context.pool.clone(),
        think_time: context.think_time,
        metrics: context.metrics.clone(),
    }))
}

impl PerTicketStrategy {
    fn lock_for(&self, ticket: TicketId) -> Arc<tokio::sync::Mutex<()>> {
        // A poisoned map only means another request panicked while inserting;
        // the map itself is still valid.
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(ticket).or_default().clone()
        // The std guard drops here, before anyone awaits.
    }
}

#[async_trait]
impl SellTickets for PerTicketStrategy {
    fn name(&self) -> &'static str {
        "per-ticket"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        let lock = self.lock_for(purchase.ticket);
        let waiting = Instant::now();
        let _guard = lock.lock().await;
        self.metrics.lock_wait(waiting.elapsed());
        // As with `mutex`: the guard lives past the COMMIT.
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
        let lock = self.lock_for(ticket);
        let _guard = lock.lock().await;
        Some(db::cancel_order(&self.pool, ticket, order, user).await)
    }
}

//! Exercise 1, solved: Level 1's `mutex` (see
//! `levels/level1-local-lock/src/mutex.rs`) in the exercise's shape.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use ticket_core::strategy::StrategyContext;
use ticket_core::{Order, Purchase, PurchaseError, SellTickets};

use crate::kit::Config;

/// Your strategy. It sells exactly like Level 0: read the stock, check it,
/// (think), write `stock - 1` and the order.
pub struct OneLock {
    pool: PgPool,
    think_time: Duration,
    /// One lock for the whole server. It protects no data of its own:
    /// it protects the *sequence* read-check-write-commit, which
    /// `read_check_write` runs to the end (commit included) before the guard
    /// drops. Tokio's mutex, because the guard is held across `.await`.
    lock: tokio::sync::Mutex<()>,
}

/// Builds your strategy when the server starts (one per server).
pub fn build(ctx: &StrategyContext, _: &Config) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(OneLock {
        pool: ctx.pool.clone(),
        think_time: ctx.think_time,
        lock: tokio::sync::Mutex::new(()),
    }))
}

#[async_trait]
impl SellTickets for OneLock {
    fn name(&self) -> &'static str {
        "one-lock"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        let _guard = self.lock.lock().await;
        level0::naive::read_check_write(&self.pool, self.think_time, &purchase).await
    }
}

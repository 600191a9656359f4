//! Exercise 1: one lock around the sale. Read the statement first:
//! `exercises/01-one-lock/README.md`. Check your work with
//! `cargo run -p load -- exercise check 1`.

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
}

/// Builds your strategy when the server starts (one per server).
pub fn build(ctx: &StrategyContext, _: &Config) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(OneLock {
        pool: ctx.pool.clone(),
        think_time: ctx.think_time,
    }))
}

#[async_trait]
impl SellTickets for OneLock {
    fn name(&self) -> &'static str {
        "one-lock"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        level0::naive::read_check_write(&self.pool, self.think_time, &purchase).await
    }
}

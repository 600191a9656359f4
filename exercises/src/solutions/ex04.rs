//! Exercise 4, solved: Level 2's `optimistic` with its bounded retries
//! (`levels/level2-db-lock/src/optimistic.rs`, `retry.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ticket_core::backoff::Backoff;
use ticket_core::strategy::StrategyContext;
use ticket_core::{db, Order, Purchase, PurchaseError, SellTickets};

use crate::kit::Config;

/// Fresh attempts after the first one lost its race, before giving up.
/// One, so that giving up shows in a rush of this size; a real service
/// would allow a few more.
pub const MAX_RETRIES: u32 = 1;

/// The pause before retry number n (1, 2, 3): random, growing.
pub const BACKOFF: Backoff =
    Backoff::full_jitter(Duration::from_millis(2), Duration::from_millis(50));

/// How one attempt ended when it did not sell.
pub enum Attempt {
    /// Somebody changed the ticket between our read and our write: nothing
    /// was written, and a fresh attempt may win.
    Lost,
    /// A final answer (sold out, already purchased, a fault).
    Answer(PurchaseError),
}

impl From<PurchaseError> for Attempt {
    fn from(err: PurchaseError) -> Self {
        Self::Answer(err)
    }
}

impl From<sqlx::Error> for Attempt {
    fn from(err: sqlx::Error) -> Self {
        Self::Answer(err.into())
    }
}

/// Your strategy: optimistic concurrency with a version column.
pub struct OptimisticRetry {
    ctx: StrategyContext,
}

/// Builds your strategy when the server starts.
pub fn build(ctx: &StrategyContext, _: &Config) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(OptimisticRetry { ctx: ctx.clone() }))
}

#[async_trait]
impl SellTickets for OptimisticRetry {
    fn name(&self) -> &'static str {
        "optimistic-retry"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        // Each call of `attempt` is a fresh transaction with a fresh read.
        let mut retries = 0;
        loop {
            match self.attempt(&purchase).await {
                Ok(order) => return Ok(order),
                Err(Attempt::Answer(err)) => return Err(err),
                Err(Attempt::Lost) if retries >= MAX_RETRIES => {
                    return Err(PurchaseError::busy(
                        "other buyers kept changing the ticket first; retries ran out",
                    ))
                }
                Err(Attempt::Lost) => {
                    retries += 1;
                    tokio::time::sleep(BACKOFF.delay(retries)).await;
                }
            }
        }
    }
}

impl OptimisticRetry {
    /// One attempt, in its own transaction: read stock and version, check,
    /// think, then write only if the version is still the one we read.
    /// Correct as it is.
    async fn attempt(&self, purchase: &Purchase) -> Result<Order, Attempt> {
        let ticket = purchase.ticket;
        let mut tx = self.ctx.pool.begin().await?;
        let (stock, version): (i32, i64) =
            sqlx::query_as("SELECT stock, version FROM tickets WHERE id = $1")
                .bind(ticket.get())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(PurchaseError::NotFound)?;
        if stock <= 0 {
            return Err(PurchaseError::SoldOut.into());
        }
        self.ctx.think().await;
        let updated = sqlx::query(
            "UPDATE tickets SET stock = $3, version = version + 1 WHERE id = $1 AND version = $2",
        )
        .bind(ticket.get())
        .bind(version)
        .bind(stock - 1)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(Attempt::Lost); // dropping `tx` rolls it back
        }
        let order = db::insert_order(&mut tx, purchase).await?;
        tx.commit().await?;
        Ok(order)
    }
}

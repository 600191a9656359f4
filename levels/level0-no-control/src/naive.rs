//! `naive`: read, check, think, write. No lock, no version, no isolation
//! beyond PostgreSQL's default READ COMMITTED.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use ticket_core::strategy::{think, StrategyContext};
use ticket_core::{db, Order, Purchase, PurchaseError, SellTickets};

/// Sells with no concurrency control at all.
pub struct Naive {
    pool: PgPool,
    think_time: Duration,
}

/// Builds [`Naive`] from the server's context.
pub fn build(context: &StrategyContext, _: &()) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(Naive {
        pool: context.pool.clone(),
        think_time: context.think_time,
    }))
}

#[async_trait]
impl SellTickets for Naive {
    fn name(&self) -> &'static str {
        "naive"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        read_check_write(&self.pool, self.think_time, &purchase).await
    }
}

/// The unprotected sale, step by step. Level 1 runs this very function inside
/// a lock, so the *only* difference between the levels is the lock.
pub async fn read_check_write(
    pool: &PgPool,
    think_time: Duration,
    purchase: &Purchase,
) -> Result<Order, PurchaseError> {
    let ticket = purchase.ticket;
    // 1. Read. This statement runs on its own and returns its connection to
    //    the pool: nothing is held while we think.
    let stock: i32 = sqlx::query_scalar("SELECT stock FROM tickets WHERE id = $1")
        .bind(ticket.get())
        .fetch_optional(pool)
        .await?
        .ok_or(PurchaseError::NotFound)?;

    // 2. Check, against a value that may already be stale.
    if stock <= 0 {
        return Err(PurchaseError::SoldOut);
    }

    // 3. The race window. Every other buyer who read the same `stock` is now
    //    on their way to write the same `stock - 1`.
    think(think_time).await;

    // 4. Write what we computed from our stale read. The order insert comes
    //    first so that a buyer who already holds the ticket fails on UNIQUE
    //    before touching stock; both statements commit together.
    let mut tx = pool.begin().await?;
    let order = db::insert_order(&mut tx, purchase).await?;
    sqlx::query("UPDATE tickets SET stock = $2, version = version + 1 WHERE id = $1")
        .bind(ticket.get())
        .bind(stock - 1)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(order)
}

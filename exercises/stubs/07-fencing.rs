//! Exercise 7: a fencing check in SQL. Read the statement first:
//! `exercises/07-fencing/README.md`. Check your work with
//! `cargo run -p load -- exercise check 7`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;
use sqlx::PgConnection;
use ticket_core::strategy::StrategyContext;
use ticket_core::{db, Order, Purchase, PurchaseError, SellTickets, TicketId};

use crate::kit::{lock_key, next_fencing_token, owner_token, run_release, try_lock, Config};

/// Writes the new stock for the holder of fencing token `token`, who read
/// the row when its `fence` column was `fence_read`. Returns whether the
/// write was applied; `false` makes the caller roll the sale back and
/// answer 503 busy, and the buyer tries again.
///
/// This is the only part to change.
async fn write_stock(
    tx: &mut PgConnection,
    ticket: TicketId,
    new_stock: i32,
    fence_read: i64,
    token: i64,
) -> Result<bool, sqlx::Error> {
    let _ = (fence_read, token);
    sqlx::query("UPDATE tickets SET stock = $2, version = version + 1 WHERE id = $1")
        .bind(ticket.get())
        .bind(new_stock)
        .execute(&mut *tx)
        .await?;
    Ok(true)
}

/// How long a buyer waits for the lock before answering 503 busy.
const WAIT: Duration = Duration::from_secs(2);
/// The lease: shorter than a sale on purpose. It stands for a holder that
/// stalls past its lease (a GC pause, a frozen VM): Redis gives the lock to
/// the next buyer while this one still works.
const LEASE: Duration = Duration::from_millis(10);
/// The owner-checked release (exercise 6's answer).
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// Your strategy: a Redis lock whose holders carry a fencing token.
pub struct Fenced {
    ctx: StrategyContext,
    redis: ConnectionManager,
    release: Script,
}

/// Builds your strategy when the server starts.
pub fn build(ctx: &StrategyContext, config: &Config) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(Fenced {
        ctx: ctx.clone(),
        redis: config.redis()?,
        release: Script::new(RELEASE_LUA),
    }))
}

#[async_trait]
impl SellTickets for Fenced {
    fn name(&self) -> &'static str {
        "fenced"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        let mut redis = self.redis.clone();
        let (key, me) = (lock_key(purchase.ticket), owner_token());
        if !try_lock(&mut redis, &key, &me, LEASE, WAIT).await? {
            return Err(PurchaseError::busy("waited too long for the ticket's lock"));
        }
        let token = next_fencing_token(&mut redis).await?;
        let sold = self.sell(&purchase, token).await;
        run_release(&mut redis, &self.release, &key, &me).await?;
        sold
    }
}

impl Fenced {
    /// Read, check, think, write: under the lock, as long as it lasts.
    async fn sell(&self, purchase: &Purchase, token: i64) -> Result<Order, PurchaseError> {
        let ticket = purchase.ticket;
        let mut tx = self.ctx.pool.begin().await?;
        let (stock, fence): (i32, i64) =
            sqlx::query_as("SELECT stock, fence FROM tickets WHERE id = $1")
                .bind(ticket.get())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(PurchaseError::NotFound)?;
        if stock <= 0 {
            return Err(PurchaseError::SoldOut);
        }
        self.ctx.think().await;
        if !write_stock(&mut tx, ticket, stock - 1, fence, token).await? {
            return Err(PurchaseError::busy(
                "a newer holder of the lock wrote first",
            ));
        }
        let order = db::insert_order(&mut tx, purchase).await?;
        tx.commit().await?;
        Ok(order)
    }
}

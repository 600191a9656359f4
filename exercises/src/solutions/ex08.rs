//! Exercise 8, solved: the design of `docs/04-idempotency.md` (ticket-core's
//! `idempotent_purchase` and `db::insert_order`): claim the key first with
//! `INSERT ... ON CONFLICT DO NOTHING`, in the order's own transaction, and
//! record the answer there too. A twin's INSERT waits on the key's unique
//! index until the first commits, then finds the key taken and replays it.

use std::sync::Arc;

use async_trait::async_trait;
use ticket_core::strategy::StrategyContext;
use ticket_core::{Order, Purchase, PurchaseError, SellTickets};

use crate::kit::{answer_of, idempotency_key, replay, sell_in, Config, KeyTable};

/// Your strategy: sells one unit, and answers a repeated
/// `Idempotency-Key` exactly as it answered the key the first time.
pub struct PurchaseOnce {
    ctx: StrategyContext,
    keys: KeyTable,
}

/// Builds your strategy when the server starts.
pub fn build(ctx: &StrategyContext, _config: &Config) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(PurchaseOnce {
        ctx: ctx.clone(),
        keys: KeyTable::default(),
    }))
}

#[async_trait]
impl SellTickets for PurchaseOnce {
    fn name(&self) -> &'static str {
        "purchase-once"
    }

    /// This is the part to change.
    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        let pool = &self.ctx.pool;
        let Some(key) = idempotency_key(&purchase) else {
            let mut tx = pool.begin().await?;
            let order = sell_in(&mut tx, &purchase).await?;
            tx.commit().await?;
            return Ok(order);
        };
        self.keys.ensure(pool).await?;
        let mut tx = pool.begin().await?;
        // Claim: exactly one request inserts the row. A twin's INSERT waits
        // here until the first transaction ends, then inserts nothing.
        let claimed = sqlx::query(
            "INSERT INTO exercise_keys (user_id, key, ticket_id) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(purchase.user.get())
        .bind(key)
        .bind(purchase.ticket.get())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !claimed {
            tx.rollback().await?;
            let (answer, order_id): (Option<String>, Option<i64>) = sqlx::query_as(
                "SELECT answer, order_id FROM exercise_keys WHERE user_id = $1 AND key = $2",
            )
            .bind(purchase.user.get())
            .bind(key)
            .fetch_one(pool)
            .await?;
            return replay(&purchase, answer.as_deref().unwrap_or_default(), order_id);
        }
        self.ctx.think().await;
        let outcome = sell_in(&mut tx, &purchase).await;
        // Record the answer in the same transaction: the order and its
        // answer commit together. Busy and errors are not recorded: the
        // rollback frees the key for the next click.
        let Some((answer, order_id)) = answer_of(&outcome) else {
            tx.rollback().await?;
            return outcome;
        };
        sqlx::query(
            "UPDATE exercise_keys SET answer = $3, order_id = $4 \
             WHERE user_id = $1 AND key = $2",
        )
        .bind(purchase.user.get())
        .bind(key)
        .bind(answer)
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        outcome
    }
}

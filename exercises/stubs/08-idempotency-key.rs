//! Exercise 8: an idempotency key recorded in the order's transaction.
//! Read the statement first: `exercises/08-idempotency-key/README.md`.
//! Check your work with `cargo run -p load -- exercise check 8`.

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
        // Check: was this key answered before?
        let stored: Option<(Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT answer, order_id FROM exercise_keys WHERE user_id = $1 AND key = $2",
        )
        .bind(purchase.user.get())
        .bind(key)
        .fetch_optional(pool)
        .await?;
        if let Some((Some(answer), order_id)) = stored {
            return replay(&purchase, &answer, order_id);
        }
        self.ctx.think().await;
        // Act: sell, in a transaction of its own.
        let outcome = async {
            let mut tx = pool.begin().await?;
            let order = sell_in(&mut tx, &purchase).await?;
            tx.commit().await?;
            Ok(order)
        }
        .await;
        // Then write the key's answer down, after the sale committed.
        if let Some((answer, order_id)) = answer_of(&outcome) {
            sqlx::query(
                "INSERT INTO exercise_keys (user_id, key, ticket_id, answer, order_id) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(purchase.user.get())
            .bind(key)
            .bind(purchase.ticket.get())
            .bind(answer)
            .bind(order_id)
            .execute(pool)
            .await?;
        }
        outcome
    }
}

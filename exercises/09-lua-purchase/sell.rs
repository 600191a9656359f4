//! Exercise 9: the Level 4 purchase in one Lua script. Read the statement
//! first: `exercises/09-lua-purchase/README.md`. Check your work with
//! `cargo run -p load -- exercise check 9`.

use std::sync::Arc;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;
use ticket_core::strategy::StrategyContext;
use ticket_core::{db, Order, Purchase, PurchaseError, SellTickets};

use crate::kit::{redis_down, Config, StockLoader, KEY_PREFIX};

/// The sale, decided in Redis. `KEYS[1]` holds the stock left (a number),
/// `KEYS[2]` is the set of buyers who got one, `ARGV[1]` is this buyer.
/// Return 1 (sold), 0 (sold out) or -1 (this buyer already has one).
///
/// This is the only part to change.
pub const PURCHASE_LUA: &str = r"
local left = redis.call('DECR', KEYS[1])
if left < 0 then
  redis.call('INCR', KEYS[1])
  return 0
end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then
  return -1
end
return 1
";

/// Your strategy: Redis decides, PostgreSQL records.
pub struct LuaPurchase {
    ctx: StrategyContext,
    redis: ConnectionManager,
    script: Script,
    stock: StockLoader,
}

/// Builds your strategy when the server starts.
pub fn build(ctx: &StrategyContext, config: &Config) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(LuaPurchase {
        ctx: ctx.clone(),
        redis: config.redis()?,
        script: Script::new(PURCHASE_LUA),
        stock: StockLoader::default(),
    }))
}

#[async_trait]
impl SellTickets for LuaPurchase {
    fn name(&self) -> &'static str {
        "lua-purchase"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        let ticket = purchase.ticket;
        let mut redis = self.redis.clone();
        let stock_key = format!("{KEY_PREFIX}stock:{ticket}");
        let buyers_key = format!("{KEY_PREFIX}buyers:{ticket}");
        self.stock
            .ensure(&self.ctx.pool, &mut redis, ticket, &stock_key)
            .await?;
        let decided: i64 = self
            .script
            .key(&stock_key)
            .key(&buyers_key)
            .arg(purchase.user.get())
            .invoke_async(&mut redis)
            .await
            .map_err(redis_down)?;
        match decided {
            1 => {}
            0 => return Err(PurchaseError::SoldOut),
            _ => return Err(PurchaseError::AlreadyPurchased),
        }
        // Decided. Record it in PostgreSQL (Level 4 does this later, through
        // a stream; here at once, to keep the exercise small).
        self.ctx.think().await;
        let mut tx = self.ctx.pool.begin().await?;
        let order = db::insert_order(&mut tx, &purchase).await?;
        sqlx::query("UPDATE tickets SET stock = stock - 1, version = version + 1 WHERE id = $1")
            .bind(ticket.get())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(order)
    }
}

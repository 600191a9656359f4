//! Exercise 6, solved: the owner check of Level 3's `release.lua`
//! (`levels/level3-redis-lock/src/lock/release.lua`), without reentrancy.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;
use ticket_core::strategy::StrategyContext;
use ticket_core::{Order, Purchase, PurchaseError, SellTickets};

use crate::kit::{lock_key, owner_token, read_stock, run_release, try_lock, Config};

/// Releases the lock. Redis runs a script with nothing in between, and
/// gives it `KEYS[1]` (the lock's key) and `ARGV[1]` (the token of the
/// buyer who calls it). Return 1 if the lock was deleted, 0 if not.
///
/// This is the only part to change.
pub const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// How long a buyer waits for the lock before answering 503 busy.
const WAIT: Duration = Duration::from_millis(500);
/// How long a hold lasts if its holder vanished: far longer than a sale.
const LEASE: Duration = Duration::from_secs(10);

/// Your strategy: Level 0's sale under a lock held in Redis.
pub struct OwnerRelease {
    ctx: StrategyContext,
    redis: ConnectionManager,
    release: Script,
}

/// Builds your strategy when the server starts.
pub fn build(ctx: &StrategyContext, config: &Config) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(OwnerRelease {
        ctx: ctx.clone(),
        redis: config.redis()?,
        release: Script::new(RELEASE_LUA),
    }))
}

#[async_trait]
impl SellTickets for OwnerRelease {
    fn name(&self) -> &'static str {
        "owner-release"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        // A look without the lock: "sold out" needs no lock to be true.
        if read_stock(&mut *self.ctx.pool.acquire().await?, purchase.ticket).await? <= 0 {
            return Err(PurchaseError::SoldOut);
        }
        let mut redis = self.redis.clone();
        let key = lock_key(purchase.ticket);
        let me = owner_token();
        let taken = try_lock(&mut redis, &key, &me, LEASE, WAIT).await?;
        let sold = if taken {
            level0::naive::read_check_write(&self.ctx.pool, self.ctx.think_time, &purchase).await
        } else {
            Err(PurchaseError::busy("waited too long for the ticket's lock"))
        };
        // Like a `finally`: whatever happened, release. Many codebases do.
        run_release(&mut redis, &self.release, &key, &me).await?;
        sold
    }
}

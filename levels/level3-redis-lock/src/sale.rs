//! The sale under a Redis lock, shared by both strategies: they differ only
//! in how a buyer waits for the lock (see [`crate::lock`]).
//!
//! The order of the steps is the lesson:
//!
//! ```text
//! take the ticket's lock  ->  BEGIN  ->  read, check, (think), write  ->  COMMIT  ->  release
//! ```
//!
//! - **The lock comes before BEGIN.** A buyer waits in Redis holding no
//!   database connection: 1000 buyers cost 1000 sleeping tasks, not 1000
//!   connections (compare Level 2's `pessimistic`, where every waiter holds a
//!   connection inside PostgreSQL's lock queue).
//! - **The release comes after COMMIT.** Release before it, and the next
//!   buyer reads the stock as it was before our uncommitted write: Level 1's
//!   rule, still true when the lock lives in Redis. `--release-before-commit`
//!   swaps the two on purpose, to reproduce the oversell one of the original
//!   projects shipped.
//! - **Before COMMIT, the guard is asked whether it still holds the lock**
//!   ([`LockGuard::is_lost`]), and the write itself carries the lock's
//!   fencing token (`--fencing on`), so that a buyer whose lease ran out in
//!   the middle cannot oversell even if the check passes a moment too early.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::PgConnection;
use ticket_core::services::Redis;
use ticket_core::strategy::StrategyContext;
use ticket_core::{
    db, CancelError, Cancellation, Order, OrderId, Purchase, PurchaseError, TicketId, UserId,
};

use crate::lock::{Lease, LockClient, LockError, LockGuard, LockOptions, Waiting};
use crate::{Fencing, Level3Config};

/// A sale guarded by a Redis lock, one lock per ticket (`ticket:<id>`).
pub struct LockedSale {
    /// The strategy's name in the level's table (`pubsub`, `spin`).
    name: &'static str,
    ctx: StrategyContext,
    locks: LockClient,
    wait: Duration,
    lease: Lease,
    fencing: Fencing,
    release_before_commit: bool,
    pause_before_commit: Duration,
    /// A throwaway Redis started for this server, if any: kept running for
    /// as long as the strategy lives.
    _redis: Option<Arc<Redis>>,
}

impl LockedSale {
    /// Sets up the lock client (it connects on first use) for the strategy
    /// `name`, whose buyers wait the `waiting` way.
    pub fn new(
        name: &'static str,
        ctx: &StrategyContext,
        config: &Level3Config,
        waiting: Waiting,
    ) -> anyhow::Result<Self> {
        let options = LockOptions {
            waiting,
            watchdog_lease: config.watchdog_lease,
            replicas: config.replicas,
            ..LockOptions::default()
        };
        let locks = LockClient::new(&config.redis_url, ctx.instance.clone(), options)
            .with_context(|| format!("cannot use the Redis at {}", config.redis_url))?;
        Ok(Self {
            name,
            ctx: ctx.clone(),
            locks,
            wait: config.wait,
            lease: config.lease,
            fencing: config.fencing,
            release_before_commit: config.release_before_commit,
            pause_before_commit: config.pause_before_commit,
            _redis: config.throwaway_redis.clone(),
        })
    }

    /// Sells one unit of `purchase.ticket` to `purchase.user`.
    pub async fn purchase(&self, purchase: &Purchase) -> Result<Order, PurchaseError> {
        let ticket = purchase.ticket;
        // 0. A look without the lock. It can only ever say "no": stock never
        //    grows during a sale, so 0 now is 0 for good, and the late crowd
        //    is answered without queueing for the lock. "Some left" proves
        //    nothing; the real check happens under the lock.
        let stock: i32 = sqlx::query_scalar("SELECT stock FROM tickets WHERE id = $1")
            .bind(ticket.get())
            .fetch_optional(&self.ctx.pool)
            .await?
            .ok_or(PurchaseError::NotFound)?;
        if stock <= 0 {
            return Err(PurchaseError::SoldOut);
        }

        // 1. The lock. Waiting holds no database connection.
        let waiting = Instant::now();
        let guard = self
            .locks
            .lock(&format!("ticket:{ticket}"))
            .try_lock(self.wait, self.lease)
            .await
            .map_err(|err| self.lock_failed(err))?;
        self.ctx.metrics.lock_wait(waiting.elapsed());

        // 2-4. BEGIN, read-check-write, COMMIT; then 5. release.
        let sold = self.sell(&guard, purchase).await;
        match sold {
            Ok(Sold { order, tx }) if self.release_before_commit => {
                // THE BROKEN ORDER, on purpose. The lock is gone while our
                // write is still invisible to everyone else; the next buyer
                // takes the lock and reads the stock from before our sale.
                // The think time widens this window too, so that the bug
                // shows up every time instead of once in a while.
                self.release(guard).await;
                self.ctx.think().await;
                tx.commit().await?;
                Ok(order)
            }
            Ok(Sold { order, tx }) => {
                // The last moment to notice that our lease ran out (a pause,
                // a failed renewal). Fencing still guards the moment after.
                if guard.is_lost() {
                    drop(tx); // rolls back
                    self.ctx.metrics.event("lock_lost");
                    self.release(guard).await;
                    return Err(PurchaseError::busy(
                        "the ticket's lock expired before the sale could commit",
                    ));
                }
                // `--pause-before-commit-ms`: the process stalls right here,
                // after the check said "still yours". Only fencing can help
                // now: our lease may run out and the next buyer may sell from
                // the stock we have not committed yet.
                if !self.pause_before_commit.is_zero() {
                    tokio::time::sleep(self.pause_before_commit).await;
                }
                let committed = tx.commit().await;
                self.release(guard).await;
                committed?;
                Ok(order)
            }
            Err(err) => {
                self.release(guard).await;
                Err(err)
            }
        }
    }

    /// Cancels an order under the ticket's lock.
    ///
    /// Sales write an absolute stock (`what I read - 1`) under this lock, so
    /// a restock that slipped in between a sale's read and its write would be
    /// overwritten: cancellations queue on the same lock, and are fenced
    /// like a sale (see [`LockedSale::cancel_holding`]).
    pub async fn cancel(
        &self,
        ticket: TicketId,
        order: OrderId,
        user: UserId,
    ) -> Result<Cancellation, CancelError> {
        let guard = self
            .locks
            .lock(&format!("ticket:{ticket}"))
            .try_lock(self.wait, self.lease)
            .await
            .map_err(|err| CancelError::Purchase(self.lock_failed(err)))?;
        let cancelled = self.cancel_holding(&guard, ticket, order, user).await;
        self.release(guard).await;
        cancelled
    }

    /// Cancels an order while the caller holds the ticket's lock with
    /// `guard`: one transaction that moves the fence to the guard's token,
    /// moves the order out and puts its unit back, committed only while the
    /// guard still holds the lock.
    ///
    /// Moving the fence is what makes the restock safe against a sale that
    /// read the stock before it: that sale's `fence = $fence_read` no longer
    /// matches, so it is refused instead of writing its stale stock over the
    /// restock. And like a sale, a cancel whose own hold is stale (a newer
    /// hold already wrote the row, or the guard is lost) is refused with
    /// `busy` and changes nothing. Public so that a test can hand it a stale
    /// guard; a server calls [`LockedSale::cancel`].
    pub async fn cancel_holding(
        &self,
        guard: &LockGuard,
        ticket: TicketId,
        order: OrderId,
        user: UserId,
    ) -> Result<Cancellation, CancelError> {
        let mut tx = self.ctx.pool.begin().await.map_err(PurchaseError::from)?;
        // Behind a busy ticket row a cancel waits like a buyer does, but not
        // forever (as in `db::cancel_order`).
        sqlx::query("SET LOCAL lock_timeout = '5s'")
            .execute(&mut *tx)
            .await
            .map_err(PurchaseError::from)?;
        if self.fencing == Fencing::On {
            self.move_fence(&mut tx, guard, ticket).await?;
        }
        let owner = db::lock_order_owner(&mut tx, ticket, order)
            .await
            .map_err(PurchaseError::from)?;
        match owner {
            Some(owner) if owner != user.get() => return Err(CancelError::Forbidden),
            Some(_) => {}
            None => {
                // Not (or no longer) a live order: a repeated cancel gets
                // the first one's answer, and nothing is written.
                drop(tx);
                return match db::cancelled_order_owner(&self.ctx.pool, ticket, order)
                    .await
                    .map_err(PurchaseError::from)?
                {
                    Some(owner) if owner == user.get() => Ok(cancellation(ticket, order, user)),
                    Some(_) => Err(CancelError::Forbidden),
                    None => Err(CancelError::NotFound),
                };
            }
        }
        db::move_to_cancelled(&mut tx, ticket, order)
            .await
            .map_err(PurchaseError::from)?;
        // The same last look as a sale's: a lease that ran out means the
        // restock could land beside a newer holder's sale.
        if guard.is_lost() {
            drop(tx); // rolls back
            self.ctx.metrics.event("lock_lost");
            return Err(PurchaseError::busy(
                "the ticket's lock expired before the cancellation could commit",
            )
            .into());
        }
        tx.commit().await.map_err(PurchaseError::from)?;
        Ok(cancellation(ticket, order, user))
    }

    /// Moves the ticket row's fence to `token`, inside the cancel's
    /// transaction. Refused (`busy`, nothing written) when a newer hold has
    /// already written the row: then our hold is stale.
    async fn move_fence(
        &self,
        tx: &mut PgConnection,
        guard: &LockGuard,
        ticket: TicketId,
    ) -> Result<(), CancelError> {
        let token = fencing_token(guard);
        let moved = sqlx::query("UPDATE tickets SET fence = $2 WHERE id = $1 AND fence < $2")
            .bind(ticket.get())
            .bind(token)
            .execute(&mut *tx)
            .await
            .map_err(PurchaseError::from)?;
        if moved.rows_affected() == 1 {
            return Ok(());
        }
        let fence: Option<i64> = sqlx::query_scalar("SELECT fence FROM tickets WHERE id = $1")
            .bind(ticket.get())
            .fetch_optional(&mut *tx)
            .await
            .map_err(PurchaseError::from)?;
        let Some(fence) = fence else {
            return Err(CancelError::NotFound);
        };
        self.ctx.metrics.event("fence_refused");
        self.raise_token_floor(guard, fence).await;
        Err(stale_holder().into())
    }

    /// BEGIN and read-check-write, under the lock. Returns the transaction
    /// uncommitted: the caller decides when to commit relative to releasing.
    async fn sell(&self, guard: &LockGuard, purchase: &Purchase) -> Result<Sold, PurchaseError> {
        let (ticket, user) = (purchase.ticket, purchase.user);
        let mut tx = self.ctx.pool.begin().await?;

        // Read and check. Under the lock nobody else is between these lines
        // and our COMMIT, as long as the lock is really ours. Stock first:
        // once the ticket is sold out, that is the only answer anyone gets.
        let (stock, fence): (i32, i64) =
            sqlx::query_as("SELECT stock, fence FROM tickets WHERE id = $1")
                .bind(ticket.get())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(PurchaseError::NotFound)?;
        if stock <= 0 {
            return Err(PurchaseError::SoldOut);
        }
        // Asked under the lock, so that a second click by a buyer who already
        // holds the ticket does not spend a unit of stock.
        if db::has_order(&mut tx, ticket, user).await? {
            return Err(PurchaseError::AlreadyPurchased);
        }
        let token = fencing_token(guard);
        if self.fencing == Fencing::On && fence >= token {
            // A hold with this token or a newer one already wrote this row:
            // our lease ran out before we even started, or Redis lost its
            // newest writes and handed our token out a second time. Do not
            // bother thinking; make sure the next holder gets a larger one.
            self.ctx.metrics.event("fence_refused");
            self.raise_token_floor(guard, fence).await;
            return Err(stale_holder());
        }

        // The race window: with --think-time-ms, the time a slow sale takes.
        self.ctx.think().await;

        // Write. The order first, so that a duplicate fails on UNIQUE before
        // the stock is touched; both land together at COMMIT.
        let order = db::insert_order(&mut tx, purchase).await?;
        self.write_stock(&mut tx, ticket, stock - 1, fence, token)
            .await?;
        Ok(Sold { order, tx })
    }

    /// Writes the new stock.
    ///
    /// With fencing, the row remembers the token of the hold that wrote it
    /// last, and the UPDATE only applies if:
    ///
    /// - `fence < $token`: no hold *newer* than ours, nor one with the same
    ///   token, has written the row. A buyer whose lease ran out while it
    ///   thought (a GC pause, a stopped VM) and who was overtaken cannot
    ///   write over the newer sale; and a token that Redis handed out twice
    ///   (it lost its newest writes, and its counter went back) is accepted
    ///   once at most. Each hold writes the row once, so strict is right.
    /// - `fence = $fence_read`: nobody wrote the row since we read it. This
    ///   catches the other order of events: the stale holder wrote *first*,
    ///   while we, the new holder, were already working from the stock as it
    ///   was before. Without it, our write would silently undo theirs, one of
    ///   the two sales would vanish from the stock, and the ticket would be
    ///   oversold by one.
    ///
    /// Zero rows updated means a stale hold was caught: roll back, answer
    /// busy, and the buyer tries again under a fresh lock.
    async fn write_stock(
        &self,
        tx: &mut PgConnection,
        ticket: TicketId,
        stock: i32,
        fence_read: i64,
        token: i64,
    ) -> Result<(), PurchaseError> {
        match self.fencing {
            Fencing::Off => {
                sqlx::query("UPDATE tickets SET stock = $2, version = version + 1 WHERE id = $1")
                    .bind(ticket.get())
                    .bind(stock)
                    .execute(&mut *tx)
                    .await?;
            }
            Fencing::On => {
                let written = sqlx::query(
                    "UPDATE tickets SET stock = $2, fence = $3, version = version + 1 \
                     WHERE id = $1 AND fence < $3 AND fence = $4",
                )
                .bind(ticket.get())
                .bind(stock)
                .bind(token)
                .bind(fence_read)
                .execute(&mut *tx)
                .await?;
                if written.rows_affected() == 0 {
                    self.ctx.metrics.event("fence_refused");
                    return Err(stale_holder());
                }
            }
        }
        Ok(())
    }

    /// After the database refused `guard`'s token because the row already
    /// carries `seen`: makes the lock's next token larger than `seen` (see
    /// [`crate::lock::RedisLock::raise_token_floor`]). A failure only costs
    /// the next holder the same refusal, so it is logged, not returned.
    async fn raise_token_floor(&self, guard: &LockGuard, seen: i64) {
        let seen = u64::try_from(seen).unwrap_or_default();
        if let Err(err) = self.locks.lock(guard.name()).raise_token_floor(seen).await {
            tracing::warn!(%err, "could not raise the lock's fencing counter");
        }
    }

    /// Releases the lock after the sale. A failure here does not undo a sale
    /// that committed: the lock ends with its lease, and the error is logged.
    async fn release(&self, guard: LockGuard) {
        if let Err(err) = guard.release().await {
            self.ctx.metrics.event("lock_release_failed");
            tracing::warn!(%err, "releasing a ticket lock failed");
        }
    }

    /// Translates a failed `try_lock` into the answer the buyer gets.
    fn lock_failed(&self, err: LockError) -> PurchaseError {
        match err {
            LockError::Timeout { .. } => {
                self.ctx.metrics.event("lock_timeout");
                PurchaseError::busy("waited too long for the ticket's lock")
            }
            LockError::NotReplicated { .. } => {
                self.ctx.metrics.event("lock_not_replicated");
                PurchaseError::busy("the ticket's lock did not reach a replica in time")
            }
            LockError::Unavailable(err) => {
                self.ctx.metrics.event("redis_unavailable");
                PurchaseError::Unavailable(
                    anyhow::Error::new(err).context("Redis, which holds the ticket locks"),
                )
            }
            other => PurchaseError::Unexpected(
                anyhow::Error::new(other).context("taking the ticket's lock"),
            ),
        }
    }

    /// Pings Redis, for `/health`.
    pub async fn check_health(&self) -> anyhow::Result<()> {
        self.locks.ping().await.context("Redis does not answer")
    }
}

/// A Level 3 strategy is this sale with its own way of waiting: `pubsub.rs`
/// and `spin.rs` differ only in the [`Waiting`] they build it with.
#[async_trait::async_trait]
impl ticket_core::SellTickets for LockedSale {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        LockedSale::purchase(self, &purchase).await
    }

    async fn check_health(&self) -> anyhow::Result<()> {
        LockedSale::check_health(self).await
    }

    async fn cancel(
        &self,
        ticket: TicketId,
        order: OrderId,
        user: UserId,
    ) -> Option<Result<Cancellation, CancelError>> {
        Some(LockedSale::cancel(self, ticket, order, user).await)
    }
}

/// A sale written but not committed.
struct Sold {
    order: Order,
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
}

/// The guard's token as PostgreSQL's BIGINT. Tokens are microseconds since
/// 1970 plus a count, far below `i64::MAX`.
fn fencing_token(guard: &LockGuard) -> i64 {
    i64::try_from(guard.fencing_token()).unwrap_or(i64::MAX)
}

/// The answer to a cancellation that went through.
fn cancellation(ticket: TicketId, order: OrderId, user: UserId) -> Cancellation {
    Cancellation {
        order_id: order,
        ticket_id: ticket,
        user_id: user,
        status: "cancelled",
    }
}

fn stale_holder() -> PurchaseError {
    PurchaseError::busy(
        "a newer holder of the ticket's lock wrote first; this request's lock had expired",
    )
}

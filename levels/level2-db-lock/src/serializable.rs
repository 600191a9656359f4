//! `serializable`: keep Level 0's naive read-check-write, word for word, and
//! ask PostgreSQL to make it safe.
//!
//! SERIALIZABLE isolation promises that concurrent transactions end as if
//! they had run one after another. Two buyers who both read `stock = 65` and
//! both write `64` cannot be put in any one-after-the-other order, so
//! PostgreSQL refuses one of them: its UPDATE (or its COMMIT) fails with
//! SQLSTATE 40001, `serialization_failure`, and the whole transaction is
//! rolled back. The loser runs again from the start, in a fresh transaction
//! with a fresh snapshot, after a jittered pause (see [`crate::retry`]), at
//! most `--max-retries` times; then it is answered 503 busy.
//!
//! Where the locks are:
//!
//! - The read takes an **SIRead "lock"**: not a lock anyone waits for, but a
//!   note PostgreSQL keeps of what each serializable transaction read, so it
//!   can spot a write that would have changed it. Our `has_order` read notes
//!   the range of the orders index it looked at, too.
//! - The UPDATE takes the ticket's **row lock**, as every UPDATE does. A
//!   second writer waits for it; when the first commits, the second finds
//!   that the row changed after its snapshot and fails with 40001 ("could not
//!   serialize access due to concurrent update") instead of writing a value
//!   computed from a stale read.
//!
//! What it costs: the same wasted work as `optimistic`, with the bookkeeping
//! done by PostgreSQL instead of a `version` column, and with no code to get
//! wrong: the sale below is the naive one. The catch is that *every*
//! transaction on the data must be prepared to be retried, and that
//! PostgreSQL may refuse more than is strictly necessary (its tracking is
//! coarse, by index page), so retries must be bounded.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use sqlx::PgConnection;
use ticket_core::strategy::StrategyContext;
use ticket_core::{db, Order, Purchase, PurchaseError, SellTickets};

use crate::retry::{finish, insert_order_retryable, with_retries, Failure, RetryPolicy};
use crate::Level2Config;

/// Sells with read-check-write under SERIALIZABLE, retrying SQLSTATE 40001.
pub struct Serializable {
    ctx: StrategyContext,
    retry: RetryPolicy,
}

/// Builds [`Serializable`].
pub fn build(
    context: &StrategyContext,
    config: &Level2Config,
) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(Serializable {
        ctx: context.clone(),
        retry: config.retry_policy(),
    }))
}

#[async_trait]
impl SellTickets for Serializable {
    fn name(&self) -> &'static str {
        "serializable"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        with_retries(self.retry, &self.ctx.metrics, || self.attempt(&purchase)).await
    }
}

impl Serializable {
    /// One try, in its own transaction: a retry never reuses an aborted one.
    async fn attempt(&self, purchase: &Purchase) -> Result<Order, Failure> {
        let mut tx = self
            .ctx
            .pool
            .begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE")
            .await?;
        let sale = self.sell(&mut tx, purchase).await;
        // The COMMIT may be where PostgreSQL notices the conflict; `finish`
        // sorts a 40001 there like anywhere else.
        finish(tx, sale).await
    }

    /// Level 0's sale, unchanged but for the isolation level it runs in.
    async fn sell(&self, tx: &mut PgConnection, purchase: &Purchase) -> Result<Order, Failure> {
        let (ticket, user) = (purchase.ticket, purchase.user);
        // 1. Read. The snapshot is taken here, at the first statement.
        let stock: i32 = sqlx::query_scalar("SELECT stock FROM tickets WHERE id = $1")
            .bind(ticket.get())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(PurchaseError::NotFound)?;

        // 2. Check.
        if db::has_order(tx, ticket, user).await? {
            return Err(PurchaseError::AlreadyPurchased.into());
        }
        if stock <= 0 {
            return Err(PurchaseError::SoldOut.into());
        }

        // 3. The race window. Other buyers may read the same stock now; the
        //    isolation level will make all but one of them start over.
        self.ctx.think().await;

        // 4. Write what we computed. If someone committed a change to this
        //    row since our snapshot, this fails with 40001 (after waiting for
        //    their row lock, if they have not committed yet).
        let waiting = Instant::now();
        sqlx::query("UPDATE tickets SET stock = $2, version = version + 1 WHERE id = $1")
            .bind(ticket.get())
            .bind(stock - 1)
            .execute(&mut *tx)
            .await?;
        self.ctx.metrics.lock_wait(waiting.elapsed());
        insert_order_retryable(tx, purchase).await
    }
}

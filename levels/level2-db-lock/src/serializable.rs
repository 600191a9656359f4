//! `serializable`: keep Level 0's read-check-write, and ask PostgreSQL to
//! make it safe.
//!
//! SERIALIZABLE isolation promises that concurrent transactions end as if
//! they had run one after another. Two buyers who both read `stock = 65` and
//! both write `64` cannot be put in any one-after-the-other order, so
//! PostgreSQL refuses one of them with SQLSTATE 40001,
//! `serialization_failure`, and rolls the whole transaction back. The loser
//! runs again from the start, in a fresh transaction with a fresh snapshot,
//! after a jittered pause (see [`crate::retry`]), at most `--max-retries`
//! times; then it is answered 503 busy.
//!
//! **Which rule refuses the loser here, honestly.** In this sale both
//! buyers UPDATE the same row, and the error the loser gets is "could not
//! serialize access due to concurrent update": PostgreSQL's
//! *first-updater-wins* rule. That rule is not SERIALIZABLE's own: REPEATABLE
//! READ applies it too. In PostgreSQL, REPEATABLE READ already prevents the
//! lost update of Level 0 (a transaction may not update a row that another
//! transaction changed and committed after its snapshot was taken), as well
//! as dirty reads, non-repeatable reads and phantoms. So for *this* sale,
//! REPEATABLE READ would be just as correct (the test
//! `repeatable_read_already_refuses_a_lost_update_first_updater_wins`
//! shows it).
//!
//! What only SERIALIZABLE prevents is **write skew**: two transactions each
//! read a set of rows, decide, and each write a *different* row, so no row is
//! updated twice and first-updater-wins never fires. A sale that keeps no
//! stock counter and checks `count(*)` of the orders before inserting its
//! own is such a case: under REPEATABLE READ two buyers of the last ticket
//! both count the orders, both see one left, and both insert (`write_skew_sells_one_ticket_twice_under_repeatable_read`);
//! under SERIALIZABLE one of them is refused with 40001 "due to read/write
//! dependencies among transactions"
//! (`serializable_refuses_the_write_skew_that_repeatable_read_lets_through`).
//! Choose SERIALIZABLE when the check reads rows the write does not touch.
//!
//! Where the locks are:
//!
//! - The reads take **SIRead "locks"**: not locks anyone waits for, but notes
//!   PostgreSQL keeps of what each serializable transaction read, so it can
//!   spot a write that would have changed it. Their grain depends on the
//!   plan: a tuple, an index page, or the *whole relation* when the planner
//!   scans the table sequentially (as it does on a small table), and many
//!   fine notes are promoted to coarser ones when memory runs short
//!   (`max_pred_locks_per_transaction`). The coarser the note, the more
//!   transactions are refused that did not really conflict.
//! - The UPDATE takes the ticket's **row lock**, as every UPDATE does. A
//!   second writer waits for it; when the first commits, the second fails
//!   with 40001 (first-updater-wins) instead of writing a value computed
//!   from a stale read.
//!
//! What it costs: the same wasted work as `optimistic`, with the bookkeeping
//! done by PostgreSQL instead of a `version` column, and with no concurrency
//! code to get wrong. The catch is that *every* transaction on the data must
//! be prepared to be retried, and that PostgreSQL may refuse more than is
//! strictly necessary (the coarse notes above), so retries must be bounded.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use sqlx::PgConnection;
use ticket_core::strategy::StrategyContext;
use ticket_core::{db, Order, Purchase, PurchaseError, SellTickets};

use crate::retry::{insert_order_retryable, with_retries, Failure, RetryPolicy};
use crate::transaction::{in_transaction, Opening};
use crate::Level2Config;

/// Sells with read-check-write under SERIALIZABLE, retrying SQLSTATE 40001.
pub struct Serializable {
    ctx: StrategyContext,
    /// How each attempt's transaction begins.
    opening: Opening,
    retry: RetryPolicy,
}

/// Builds [`Serializable`].
pub fn build(
    context: &StrategyContext,
    config: &Level2Config,
) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(Serializable {
        ctx: context.clone(),
        opening: Opening::serializable(context, config)?,
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
        // The COMMIT may be where PostgreSQL notices the conflict; `finish`
        // sorts a 40001 there like anywhere else.
        in_transaction(&self.ctx, &self.opening, async |tx| {
            self.sell(tx, purchase).await
        })
        .await
    }

    /// Level 0's read-check-write, in one transaction at the isolation level
    /// above.
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
        //    their row lock, if they have not committed yet): first-updater-
        //    wins, as under REPEATABLE READ.
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

//! `pessimistic`: lock the ticket's row first, then read, decide and write
//! while nobody else can.
//!
//! This is Level 1's mutex moved into PostgreSQL. `SELECT ... FOR NO KEY
//! UPDATE` takes the row's exclusive lock *as it reads*, so the stock we
//! read cannot change under us: every other buyer of this ticket, on this
//! server or any other, stops at the same statement and waits in
//! PostgreSQL's queue until we COMMIT. Read-check-write becomes one
//! indivisible step again.
//!
//! Where the lock is:
//!
//! - **Kind:** PostgreSQL's row-level `FOR NO KEY UPDATE` lock on the one
//!   `tickets` row being sold. Plain SELECTs (the `GET /tickets/{id}` page)
//!   are not blocked by it; only other writers and lockers of that row wait.
//! - **Why not `FOR UPDATE`:** PostgreSQL has four row-lock strengths, and
//!   `FOR UPDATE`, the strongest, is for deleting the row or changing its
//!   key. It also blocks `FOR KEY SHARE`, the lock a foreign-key check takes
//!   on the referenced row: every `INSERT INTO ticket_orders` for this
//!   ticket, by any *other* transaction (a cancellation, an import, Level
//!   4's writer), would wait for our whole sale, think time included. We
//!   change `stock` and `version`, not the key, so the lock that matches is
//!   `FOR NO KEY UPDATE`: the one our own UPDATE takes anyway. It conflicts
//!   with every other `FOR NO KEY UPDATE`, `FOR UPDATE` and UPDATE of the
//!   row, so the sale is exactly as exclusive, and it lets foreign-key
//!   checks through (the test
//!   `pessimistic_row_lock_lets_other_transactions_insert_orders_for_the_ticket`).
//! - **What it protects:** the sequence read stock, check, write `stock - 1`,
//!   insert the order, *commit*.
//! - **Why that scope:** PostgreSQL holds row locks until the transaction
//!   ends; there is no way to let go earlier, and that is exactly right. A
//!   lock released before COMMIT (Level 1's rule) would let the next buyer
//!   read the stock we have not committed yet. Because the lock is one row,
//!   a rush on ticket 1 does not slow down ticket 2.
//!
//! What it costs: buyers of one ticket are served one at a time, each
//! holding the lock for a whole transaction (plus `--think-time-ms`). The
//! waiters each hold a database connection while they wait, so with a pool
//! of 10 per server, 10 buyers per server queue inside PostgreSQL and the
//! rest queue inside the server for a connection. Buyers who arrive after
//! the last ticket is sold do not queue for the row at all: a plain read
//! before the lock tells them (see [`look_before_locking`]).
//!
//! A waiter does not wait forever. `--lock-timeout-ms` is set, with `SET
//! LOCAL` for this transaction only, as two PostgreSQL settings:
//!
//! - `lock_timeout`: cancels a wait for one lock with SQLSTATE 55P03. It
//!   catches a holder that is stuck (a slow transaction, a test holding the
//!   row), but on its own it does **not** bound the wait in a rush.
//!   PostgreSQL's documentation says the limit "applies separately to each
//!   lock acquisition attempt", and behind a hot row a `FOR UPDATE` makes
//!   many short attempts: every time a holder commits, the row has a new
//!   version, and each waiter queues again for that version (measured in
//!   `docs/02-db-locks.md`: waits of seconds under a 300 ms `lock_timeout`,
//!   and not one timed out).
//! - `statement_timeout`, set to the same value: cancels any statement of
//!   this transaction that runs longer (SQLSTATE 57014), so it bounds the
//!   *whole* wait of the row-locking statement. The other statements take
//!   milliseconds, so for them it is only a safety net.
//!
//! Either way the buyer is answered 503 busy (counted as `lock_timeout`),
//! and the connection goes back to the pool instead of sitting in a queue.
//! Size the timeout for the queue a full pool can build: with `N` waiting
//! connections each holding the row for `t`, the last one waits about
//! `N x t`.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use sqlx::PgConnection;
use ticket_core::strategy::StrategyContext;
use ticket_core::{db, Order, Purchase, PurchaseError, SellTickets, TicketId};

use crate::retry::{settle, Failure};
use crate::transaction::{in_transaction, Opening};
use crate::Level2Config;

/// Sells under `SELECT ... FOR NO KEY UPDATE`, waiting at most
/// `lock_timeout`.
pub struct Pessimistic {
    ctx: StrategyContext,
    /// How its transaction begins.
    opening: Opening,
    /// PostgreSQL's spelling of the timeout, for example `"1000ms"`; `"0ms"`
    /// waits forever.
    lock_timeout: String,
}

/// Builds [`Pessimistic`].
pub fn build(
    context: &StrategyContext,
    config: &Level2Config,
) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(Pessimistic {
        ctx: context.clone(),
        opening: Opening::read_committed(context, config)?,
        lock_timeout: format!("{}ms", config.lock_timeout_ms),
    }))
}

#[async_trait]
impl SellTickets for Pessimistic {
    fn name(&self) -> &'static str {
        "pessimistic"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        let sale = in_transaction(&self.ctx, &self.opening, async |tx| {
            self.sell(tx, &purchase).await
        });
        settle(&self.ctx.metrics, sale.await)
    }
}

impl Pessimistic {
    async fn sell(&self, tx: &mut PgConnection, purchase: &Purchase) -> Result<Order, Failure> {
        let ticket = purchase.ticket;
        // `SET LOCAL lock_timeout = '...'` and the same for
        // statement_timeout (see the module comment for why both), in
        // function form because SET takes no bind parameters. `true` makes
        // them LOCAL: they end with this transaction and never leak to the
        // next user of the connection.
        sqlx::query(
            "SELECT set_config('lock_timeout', $1, true), \
                    set_config('statement_timeout', $1, true)",
        )
        .bind(&self.lock_timeout)
        .execute(&mut *tx)
        .await?;

        // 0. A look before the lock: a buyer who arrives after the sale
        //    need not queue to be told so.
        look_before_locking(tx, ticket).await?;

        // 1. Lock, then read. Waiting happens here, in PostgreSQL's queue
        //    for this row, for at most the timeout.
        let waiting = Instant::now();
        let stock: Option<i32> =
            sqlx::query_scalar("SELECT stock FROM tickets WHERE id = $1 FOR NO KEY UPDATE")
                .bind(ticket.get())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|err| match db::sqlstate(&err).as_deref() {
                    // 55P03: lock_timeout; 57014: statement_timeout.
                    Some("55P03" | "57014") => Failure::Busy {
                        event: "lock_timeout",
                        reason: "waited --lock-timeout-ms for the ticket row without getting it",
                    },
                    _ => Failure::from(err),
                })?;
        self.ctx.metrics.lock_wait(waiting.elapsed());
        let stock = stock.ok_or(PurchaseError::NotFound)?;

        // 2-4. Check, think, write: see `sell_locked_row`. Every other buyer
        //      of this ticket waits for the whole of it in the row's queue.
        sell_locked_row(&self.ctx, tx, purchase, stock).await
        // 5. `finish` commits, and the lock is released with the commit.
    }
}

/// A plain read of the stock, taken *before* queueing for the row lock, to
/// answer "sold out" (or "no such ticket") without the lock.
///
/// A zero seen without the lock is as good an answer as a zero seen with
/// it: either way nothing could be sold at that moment, and we write
/// nothing on it, so this look can never sell what is not there. A positive
/// stock, on the other hand, decides nothing (it may be gone by
/// the time we hold the lock), and the sale reads it again under the lock.
/// Without this look, the 900 buyers who come too late in a rush would all
/// queue for the row (`pessimistic`) or be refused by it over and over
/// (`nowait`) just to learn that nothing is left. Level 1's `rwlock` does
/// the same: a shared look first, the exclusive lock only to sell.
pub async fn look_before_locking(tx: &mut PgConnection, ticket: TicketId) -> Result<(), Failure> {
    let stock: i32 = sqlx::query_scalar("SELECT stock FROM tickets WHERE id = $1")
        .bind(ticket.get())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(PurchaseError::NotFound)?;
    if stock <= 0 {
        return Err(PurchaseError::SoldOut.into());
    }
    Ok(())
}

/// What `pessimistic` and `nowait` do once the ticket row is theirs: they
/// differ only in how they take the lock.
///
/// 2. Check, against a value nobody can change until we commit. The order
///    check is exact too: another click by the same buyer waits behind us on
///    the same row lock.
/// 3. The race window (`--think-time-ms`): harmless now, only slow.
/// 4. Write what we decided. Still holding the lock, so `stock - 1` computed
///    from our read is safe.
pub(crate) async fn sell_locked_row(
    ctx: &StrategyContext,
    tx: &mut PgConnection,
    purchase: &Purchase,
    stock: i32,
) -> Result<Order, Failure> {
    let (ticket, user) = (purchase.ticket, purchase.user);
    if db::has_order(tx, ticket, user).await? {
        return Err(PurchaseError::AlreadyPurchased.into());
    }
    if stock <= 0 {
        return Err(PurchaseError::SoldOut.into());
    }
    ctx.think().await;
    sqlx::query("UPDATE tickets SET stock = $2, version = version + 1 WHERE id = $1")
        .bind(ticket.get())
        .bind(stock - 1)
        .execute(&mut *tx)
        .await?;
    Ok(db::insert_order(tx, purchase).await?)
}

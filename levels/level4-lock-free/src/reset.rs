//! Putting a Level 4 ticket on sale again, with no moment in which a buyer
//! is sold a unit of the sale being thrown away.
//!
//! A reset deletes the ticket's orders in PostgreSQL and sets its stock back
//! to the total. A purchase never reads PostgreSQL, so Redis goes on selling
//! from the old sale until someone replaces it. Done in PostgreSQL alone
//! ([`ticket_core::db::reset_ticket`]), that leaves a window: a buyer between
//! the reset's COMMIT and the reload is sold a unit of the old sale, is
//! answered 201, and the worker later finds the order belongs to a sale that
//! no longer exists. A 201 that never becomes an order.
//!
//! [`SaleStore::reset_sale`] closes the window by **fencing Redis before
//! PostgreSQL commits**:
//!
//! 1. Take the ticket's row lock (the loader and the worker queue on it).
//! 2. Draw a new epoch number `N` from `level4_sale_epoch`, higher than every
//!    sale so far, and raise the fence in Redis (`lua/fence.lua`): from now
//!    on Redis sells nothing from a sale older than `N`, and loads no such
//!    sale. Buyers are answered as if the sale were not loaded; they load it
//!    (step 4), and wait on the row lock meanwhile.
//! 3. Reset the ticket in the same transaction, with `sale_epoch = N` and
//!    `version = 0`, and COMMIT.
//! 4. The first buyer (or the reset listener) loads the new sale, whose
//!    epoch is above `N`: it replaces the fenced hash.
//!
//! Every sale the old epoch made was therefore decided before step 2, so
//! before the reset: the reset voids it as it voids the orders PostgreSQL
//! already holds. The worker acknowledges such entries as *voided* (their
//! epoch is below the ticket's), never as dead letters.
//!
//! If the reset fails after step 2, Redis stays fenced with nothing to load:
//! the ticket answers 503 `busy`, which is safe. The next load lifts the
//! fence: under the row lock, a fence above the epoch PostgreSQL names
//! current, with the ticket loaded, can only come from a reset that rolled
//! back (a reset in progress would hold the lock).
//!
//! A reset made in PostgreSQL alone is still noticed (the trigger and
//! [`crate::listen`]), but with the window above; the worker then
//! dead-letters the old sale's orders it finds in the new sale, and reconcile
//! reports them.

use ticket_core::TicketId;

use crate::store::{SaleStore, StoreError};

impl SaleStore {
    /// Puts `ticket` on sale afresh with `stock` units (deleting its orders,
    /// creating the row if needed), fencing Redis first (see the module's
    /// doc). Returns the fence: every sale from now on has a higher epoch.
    pub async fn reset_sale(
        &self,
        ticket: TicketId,
        name: &str,
        stock: i32,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool().begin().await?;
        // The row lock first: no loader and no worker batch of this ticket
        // runs between the fence and the COMMIT.
        sqlx::query("SELECT 1 FROM tickets WHERE id = $1 FOR UPDATE")
            .bind(ticket.get())
            .fetch_optional(&mut *tx)
            .await?;
        let fence: i64 = sqlx::query_scalar("SELECT nextval('level4_sale_epoch')")
            .fetch_one(&mut *tx)
            .await?;
        let _: i64 = self
            .redis()
            .invoke(
                self.scripts()
                    .fence
                    .key(self.keys().sale(ticket))
                    .arg("raise")
                    .arg(fence),
            )
            .await?;
        ticket_core::db::reset_ticket_in(&mut tx, ticket, name, stock).await?;
        // The epoch that closed the old sale: orders of any older epoch are
        // void, and the next load starts a newer one (version = 0).
        sqlx::query("UPDATE tickets SET sale_epoch = $2 WHERE id = $1")
            .bind(ticket.get())
            .bind(fence)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(fence)
    }

    /// Lifts a fence above `epoch`, the epoch PostgreSQL names current for a
    /// loaded ticket. Called by the loader under the ticket's row lock only,
    /// where such a fence can only be left by a reset that rolled back.
    pub(crate) async fn lift_stale_fence(
        &self,
        ticket: TicketId,
        epoch: i64,
    ) -> Result<bool, StoreError> {
        let lifted: i64 = self
            .redis()
            .invoke(
                self.scripts()
                    .fence
                    .key(self.keys().sale(ticket))
                    .arg("lift")
                    .arg(epoch),
            )
            .await?;
        if lifted == 1 {
            tracing::warn!(%ticket, epoch, "lifted the fence of a reset that never committed");
        }
        Ok(lifted == 1)
    }
}

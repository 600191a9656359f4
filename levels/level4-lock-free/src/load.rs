//! Loading a sale from PostgreSQL into Redis: exactly once per sale, however
//! many servers try at the same moment.
//!
//! Redis decides every sale, so Redis must start from the truth: the stock
//! PostgreSQL holds when the sale opens. Load it twice and the second load
//! would overwrite every sale made since the first with a stale copy, selling
//! the same units again. The rule that prevents it has two halves.
//!
//! **Which sale is current is decided in PostgreSQL, under the ticket's row
//! lock.** `SELECT ... FOR UPDATE` on the ticket row lines up every loader of
//! every server (and the persistence worker, which takes the same lock).
//! The first one in sees the ticket *put on sale and not loaded since*
//! (`version = 0`, which is what [`ticket_core::db::reset_ticket`] writes, or
//! `sale_epoch = 0`, never loaded by Level 4) and starts a new **epoch**: a
//! number from the `level4_sale_epoch` sequence, stored in `sale_epoch` with
//! `version` bumped to 1. Everyone after it finds that epoch already current
//! and starts nothing.
//!
//! **Redis accepts each epoch once.** `load.lua` writes the sale only if
//! Redis holds no sale of that epoch or a newer one. Two loaders of the same
//! epoch: the first writes, the second changes nothing, and the sales made
//! in between survive.
//!
//! PostgreSQL commits first, then Redis is written. If Redis cannot be
//! written, PostgreSQL already names the new epoch and the next attempt (a
//! buyer's, or the reset listener's) writes it; the other order would leave
//! Redis selling in an epoch PostgreSQL never heard of, and every order of it
//! would be refused later as stale.
//!
//! What Redis gets: the stock, and the buyers PostgreSQL already has orders
//! for (none, right after a reset). The stock is `min(stock, total - orders)`
//! so that Redis never offers a unit PostgreSQL does not have, even when the
//! two columns disagree.
//!
//! **A Redis that went back in time.** Redis signs each sale it loads with
//! its process's `run_id` (new at every start of `redis-server`), and the
//! purchase script sells only from a sale signed by the process it runs in.
//! A Redis restarted from an old RDB snapshot, or from an AOF missing its
//! last second, or a replica promoted after a failover, still holds the
//! current epoch, so nothing looks unloaded; but its stock is too high and
//! the buyers of its lost writes are missing, while PostgreSQL may already
//! hold their orders. Unsigned, that sale answers `not_loaded`; the buyer
//! comes here, and `load.lua` puts PostgreSQL's orders back among Redis's
//! buyers, recomputes the stock from them and signs the sale. What it
//! cannot bring back are sales lost from both stores: answered 201, never
//! persisted (see `docs/05-lock-free.md`).
//!
//! A reset of a ticket whose previous sale is still in Redis is noticed by
//! [`crate::listen`] (PostgreSQL announces it), not by buyers: a purchase
//! never reads PostgreSQL, which is the point of this level.

use std::time::Instant;

use ticket_core::TicketId;

use crate::store::{SaleStore, StoreError};

/// What [`SaleStore::ensure_loaded`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// The sale's epoch, now current in both stores.
    pub epoch: i64,
    /// This call started the epoch (the ticket had been put on sale afresh).
    pub started: bool,
    /// This call wrote the sale into Redis (false: it was already there).
    pub wrote_redis: bool,
    /// The stock Redis was given (when `wrote_redis`).
    pub stock: i64,
    /// This call checked a sale that the running Redis process had not
    /// loaded itself (it restarted, or was promoted, since), and put back
    /// this many buyers it had forgotten, whose orders PostgreSQL holds.
    pub rechecked: Option<i64>,
}

impl SaleStore {
    /// Makes sure Redis serves the ticket's current sale, loading it from
    /// PostgreSQL if needed. Safe to call from any number of tasks and
    /// servers at once; a no-op (one PostgreSQL round trip, one script) when
    /// the sale is already loaded.
    pub async fn ensure_loaded(&self, ticket: TicketId) -> Result<Loaded, StoreError> {
        let started_at = Instant::now();
        let mut tx = self.pool().begin().await?;

        // Every loader of every server, and every persistence batch of this
        // ticket, queues on this row lock: the decision below is taken by
        // one of them at a time. Held until COMMIT, a few milliseconds.
        let row: Option<(i32, i32, i64, i64)> = sqlx::query_as(
            "SELECT total, stock, version, sale_epoch FROM tickets WHERE id = $1 FOR UPDATE",
        )
        .bind(ticket.get())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((total, stock, version, sale_epoch)) = row else {
            return Err(StoreError::NotFound);
        };
        let orders: Vec<(i64, i64)> =
            sqlx::query_as("SELECT user_id, id FROM ticket_orders WHERE ticket_id = $1")
                .bind(ticket.get())
                .fetch_all(&mut *tx)
                .await?;
        let sold = orders.len() as i64;
        let max_order_id = orders.iter().map(|&(_, id)| id).max().unwrap_or(0);
        // Never offer a unit PostgreSQL does not have: if the stock column
        // and the orders disagree, the smaller figure wins.
        let available = i64::from(stock).min(i64::from(total) - sold).max(0);

        let starts_new_sale = version == 0 || sale_epoch == 0;
        let epoch = if starts_new_sale {
            let epoch: i64 = sqlx::query_scalar("SELECT nextval('level4_sale_epoch')")
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE tickets SET sale_epoch = $2, stock = $3, version = version + 1 WHERE id = $1",
            )
            .bind(ticket.get())
            .bind(epoch)
            .bind(i32::try_from(available).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
            epoch
        } else {
            // Still under the row lock, so no reset is between its fence
            // and its COMMIT: a fence above the current sale was left by a
            // reset that rolled back (see `reset.rs`).
            self.lift_stale_fence(ticket, sale_epoch).await?;
            sale_epoch
        };
        tx.commit().await?;

        let (outcome, restored) = self
            .write_sale(ticket, epoch, total, available, max_order_id, &orders)
            .await?;
        let loaded = Loaded {
            epoch,
            started: starts_new_sale,
            wrote_redis: outcome == 1,
            stock: available,
            rechecked: (outcome == 2).then_some(restored),
        };
        log_loaded(ticket, &loaded, orders.len(), started_at);
        Ok(loaded)
    }

    /// `load.lua`: writes the sale into Redis unless it holds this epoch (or
    /// a newer one, or a fence above it) already; checks a sale of this
    /// epoch that the running Redis process has not signed. Returns (1, 0)
    /// when it wrote, (2, buyers put back) when it checked, (0, 0) else.
    async fn write_sale(
        &self,
        ticket: TicketId,
        epoch: i64,
        total: i32,
        available: i64,
        max_order_id: i64,
        orders: &[(i64, i64)],
    ) -> Result<(i64, i64), StoreError> {
        let keys = self.keys();
        let mut invocation = self.scripts().load.prepare_invoke();
        invocation
            .key(keys.sale(ticket))
            .key(keys.buyers(ticket))
            .key(keys.order_id())
            .key(keys.idempotency(ticket))
            .arg(epoch)
            .arg(total)
            .arg(available)
            .arg(max_order_id);
        for (user, id) in orders {
            invocation.arg(*user).arg(*id);
        }
        Ok(self.redis().invoke(&invocation).await?)
    }
}

/// Says what a load did: a warning when Redis had to be checked against
/// PostgreSQL after a restart, an info line when the sale was written.
fn log_loaded(ticket: TicketId, loaded: &Loaded, buyers: usize, started_at: Instant) {
    let epoch = loaded.epoch;
    if let Some(restored) = loaded.rechecked {
        tracing::warn!(
            %ticket,
            epoch,
            restored,
            "Redis held this sale from before its restart; checked it against PostgreSQL \
             and put back the buyers it had forgotten"
        );
    }
    if loaded.wrote_redis {
        tracing::info!(
            %ticket,
            epoch,
            stock = loaded.stock,
            buyers,
            started = loaded.started,
            took_ms = started_at.elapsed().as_secs_f64() * 1000.0,
            "loaded the sale into Redis"
        );
    }
}

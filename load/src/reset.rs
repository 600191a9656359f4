//! A level's own steps around a rush: putting the ticket on sale afresh
//! before it ([`Reset`]), and waiting for asynchronous persistence after
//! it ([`Settle`]).
//!
//! For most levels PostgreSQL is the whole sale, and a reset is
//! [`ticket_core::db::reset_ticket`]. Level 4 sells from Redis: a reset in
//! PostgreSQL alone leaves a window in which a buyer is sold a unit of the
//! old sale, answered 201, and the order is then voided. Its own reset
//! (`SaleStore::reset_sale`) fences Redis before PostgreSQL commits, so the
//! load tool resets through it: the same path as Level 4's, not a second one.

use std::sync::Arc;

use anyhow::Context as _;
use sqlx::PgPool;
use ticket_core::{db, TicketId};

/// A step that waits until every answered sale is in PostgreSQL (see
/// [`crate::levels::SettleFn`]).
#[derive(Clone)]
pub struct Settle(pub Arc<dyn Fn() -> SettleFuture + Send + Sync>);

/// What a [`Settle`] step returns.
pub type SettleFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Settle(..)")
    }
}

impl Settle {
    /// Runs the step, and measures the persistence lag: from the last 201
    /// to the newest order row in PostgreSQL.
    pub async fn run(
        &self,
        pool: &PgPool,
        ticket: TicketId,
        last_success: Option<std::time::SystemTime>,
    ) -> anyhow::Result<Option<f64>> {
        (self.0)().await.context("waiting for persistence")?;
        let newest: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM max(created_at))::float8 FROM ticket_orders WHERE ticket_id = $1",
        )
        .bind(ticket.get())
        .fetch_one(pool)
        .await
        .context("read the newest order")?;
        Ok(match (newest, last_success) {
            (Some(newest), Some(last)) => {
                let last = last
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                Some(((newest - last) * 1000.0).max(0.0))
            }
            _ => None,
        })
    }
}

/// A level's own reset: puts the run's ticket on sale as `name` with
/// `stock` units (see [`crate::levels::ResetFn`]). `None` in a plan means
/// PostgreSQL alone.
#[derive(Clone)]
pub struct Reset(pub Arc<dyn Fn(&'static str, i32) -> SettleFuture + Send + Sync>);

impl std::fmt::Debug for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reset(..)")
    }
}

/// Resets `ticket` to `stock` units: through the level's `reset` when it has
/// one, else in PostgreSQL alone.
pub async fn reset_ticket(
    pool: &PgPool,
    reset: Option<&Reset>,
    ticket: TicketId,
    name: &'static str,
    stock: i32,
) -> anyhow::Result<()> {
    match reset {
        Some(reset) => (reset.0)(name, stock).await,
        None => db::reset_ticket(pool, ticket, name, stock).await,
    }
}

//! Putting the ticket on sale afresh before a rush, the way its level does.
//!
//! For most levels PostgreSQL is the whole sale, and a reset is
//! [`ticket_core::db::reset_ticket`]. Level 4 sells from Redis: a reset in
//! PostgreSQL alone leaves a window in which a buyer is sold a unit of the
//! old sale, answered 201, and the order is then voided. Its own reset
//! (`SaleStore::reset_sale`) fences Redis before PostgreSQL commits, so the
//! load tool resets through it: the same path as Level 4's, not a second one.

use std::sync::Arc;

use sqlx::PgPool;
use ticket_core::{db, TicketId};

use crate::rush::SettleFuture;

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

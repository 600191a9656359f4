//! What every handler of the box office can reach ([`AppState`]), and the
//! body every handler reads ([`Body`]): here, not in `api.rs`, so that the
//! waiting room's routes (`queue_routes.rs`) and the rest of the API both
//! depend on it and not on each other.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use sqlx::PgPool;
use ticket_core::idempotency;
use ticket_core::metrics::Metrics;

use crate::cache::Cache;
use crate::holds::HoldSeats;
use crate::queue::Queue;
use crate::Settings;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The hold strategy chosen at start-up.
    pub holds: Arc<dyn HoldSeats>,
    /// The database.
    pub pool: PgPool,
    /// The server's settings.
    pub settings: Settings,
    /// The waiting room; `None` with `--queue off`.
    pub queue: Option<Arc<Queue>>,
    /// The read cache (without Redis, or `--cache off`, a pass-through).
    pub cache: Arc<Cache>,
    /// `--admin-token`, if configured.
    pub admin_token: Option<Arc<str>>,
    /// How `Idempotency-Key` is handled.
    pub idempotency: idempotency::Settings,
    /// This server's counters (`GET /metrics`), ticket-core's as on every level.
    pub metrics: Metrics,
}

/// A request body as handlers take it: the bytes, or why they could not be read.
pub type Body = Result<Bytes, BytesRejection>;

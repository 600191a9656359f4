//! The HTTP API every level serves (the contract: docs/api.md):
//!
//! | request | success |
//! | --- | --- |
//! | `POST /tickets/{ticket_id}/orders` `{"user_id": 42}` | 201 `{"order_id", "ticket_id", "user_id"}` |
//! | `DELETE /tickets/{ticket_id}/orders/{order_id}` `{"user_id": 42}` | 200 `{"order_id", "ticket_id", "user_id", "status": "cancelled"}` |
//! | `GET /tickets/{ticket_id}` | 200 `{"id", "name", "total", "stock", "sold"}` |
//! | `GET /health` | 200 when the database (and Redis, where used) answer |
//! | `GET /livez` | 200 as long as the process serves HTTP; does no work at all |
//! | `GET /metrics` | Prometheus text |
//!
//! A purchase may carry an `Idempotency-Key` header: see [`crate::idempotency`].
//! Every answer carries an `x-request-id` (the request's own, or a new one),
//! and the server's log lines for that request name it: see [`observe`].
//! Every answer also carries `Server-Timing: app;dur=<ms>`: see [`timing`].
//!
//! The module is split by concern, in the axum style:
//!
//! | module | role |
//! | --- | --- |
//! | [`problem`] | [`Problem`] (RFC 9457 problem+json), and the one mapping from each domain error to its status |
//! | [`input`] | extractors that parse and reject paths, bodies and headers before a handler runs |
//! | `purchase` | the purchase handler and its idempotency flows |
//! | [`observe`] | request ids and tracing, on every level's router |
//! | [`limit`] | at most a few hundred requests worked on at once; the rest wait their turn |
//! | [`timing`] | `Server-Timing` on every answer: the time the server spent on it |
//! | `routes` | [`app`], and the other handlers, which return `Result<_, Problem>` and use `?` |
//!
//! Input is checked completely *before* a strategy is called, so bad input
//! is always a 4xx and never changes a row.

pub mod input;
pub mod limit;
pub mod listed;
pub mod observe;
pub mod problem;
mod purchase;
mod routes;
pub mod timing;

use std::sync::Arc;

use sqlx::PgPool;

use crate::domain::SellTickets;
use crate::idempotency;
use crate::metrics::Metrics;

pub use input::{parse_purchase_body, parse_ticket_id, MAX_BODY_BYTES};
pub use observe::{observed, REQUEST_ID};
pub use problem::Problem;
pub use purchase::replay_response;
pub use routes::{app, listed};
pub use timing::SERVER_TIMING;

/// What every handler can reach: the strategy that sells, the pool that
/// reads, and this server's metrics.
#[derive(Clone)]
pub struct AppState {
    /// The strategy chosen at start-up (`--strategy`).
    pub strategy: Arc<dyn SellTickets>,
    /// The database pool, for reads and health checks.
    pub pool: PgPool,
    /// This server's counters.
    pub metrics: Metrics,
    /// How `Idempotency-Key` is handled.
    pub idempotency: idempotency::Settings,
}

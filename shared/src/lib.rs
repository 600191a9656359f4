//! # ticket-core: what every level of ticket-rush shares
//!
//! A first-come-first-served sale looks trivial: read the stock, if some is
//! left write `stock - 1` and record an order. Run it for 1000 buyers at once
//! and it oversells. Each level of this workspace fixes that differently; this
//! crate is what stays the same, so that the *only* difference between two
//! levels is how they control concurrency.
//!
//! | module | role |
//! | --- | --- |
//! | [`domain`] | tickets, orders, purchase outcomes, and the [`SellTickets`] trait every strategy implements; knows nothing of HTTP, SQL or Redis |
//! | [`db`] | the PostgreSQL adapter: pool, migrations, shared queries, error translation |
//! | [`api`] | the axum HTTP API and its RFC 9457 problem+json errors |
//! | [`backoff`] | bounded exponential backoff with jitter, for everything that retries |
//! | [`idempotency`] | `Idempotency-Key`: claim, record with the order, replay |
//! | [`strategy`] | a level's table of strategies, and what each may use |
//! | [`server`] | the start-up every level binary shares: bind, migrate, serve, shut down |
//! | [`services`] | PostgreSQL and Redis from a URL, or throwaway servers started from local binaries |
//! | [`verify`] | judging a rush from the database: correct, oversold, undersold, inconsistent |
//! | [`metrics`] | per-server Prometheus counters (`GET /metrics`) |
//! | [`redis_conn`] | one Redis connection for a single Redis or a Redis Cluster (`redis+cluster://` URLs), and hash slots |
//! | [`redis_checks`] | for the levels that keep state in Redis: is an error an outage, may Redis evict keys |

pub mod api;
pub mod backoff;
pub mod db;
pub mod domain;
pub mod idempotency;
pub mod metrics;
pub mod redis_checks;
pub mod redis_conn;
pub mod server;
pub mod services;
pub mod strategy;
pub mod verify;

pub use domain::{
    CancelError, Cancellation, Claim, InvalidId, Order, OrderId, Purchase, PurchaseError,
    SellTickets, Ticket, TicketId, UserId,
};
pub use server::{RunningServer, ServerArgs};
pub use strategy::{Expected, StrategyContext, StrategyEntry};
pub use verify::Verdict;

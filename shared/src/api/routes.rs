//! The router, and the handlers other than the purchase: cancel, read a
//! ticket, health, liveness, metrics, and the 404/405 fallbacks. Each
//! returns `Result<_, Problem>` and lets `?` map a domain error to its
//! status ([`super::problem`]).

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Json, Router};

use super::input::{BuyerBody, OrderPath, TicketPath, MAX_BODY_BYTES};
use super::listed::ListedRouter;
use super::problem::Problem;
use super::purchase::purchase;
use super::AppState;
use crate::db;
use crate::domain::{Cancellation, PurchaseError, Ticket};

/// The API's routes, each added through [`ListedRouter`] so that the list
/// (and the OpenAPI test that reads it) cannot drift from what is served.
pub fn listed() -> ListedRouter<AppState> {
    ListedRouter::new()
        .post("/tickets/{ticket_id}/orders", purchase)
        .delete("/tickets/{ticket_id}/orders/{order_id}", cancel)
        .get("/tickets/{ticket_id}", ticket)
        .get("/health", health)
        .get("/livez", livez)
        .get("/metrics", metrics)
}

/// Builds the router, traced and with request ids ([`super::observe`]).
/// Kept apart from `main` so tests can serve it on port 0.
pub fn app(state: AppState) -> Router {
    let router = listed()
        .into_router()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    super::observe::observed(router).with_state(state)
}

/// `DELETE /tickets/{ticket_id}/orders/{order_id}`: the strategy's own
/// cancellation if it has one, the shared database one otherwise.
async fn cancel(
    State(state): State<AppState>,
    OrderPath { ticket, order }: OrderPath,
    BuyerBody(user): BuyerBody,
) -> Result<Json<Cancellation>, Problem> {
    let outcome = match state.strategy.cancel(ticket, order, user).await {
        Some(outcome) => outcome,
        None => db::cancel_order(&state.pool, ticket, order, user).await,
    };
    Ok(Json(outcome?))
}

/// `GET /tickets/{ticket_id}`.
async fn ticket(
    State(state): State<AppState>,
    TicketPath(id): TicketPath,
) -> Result<Json<Ticket>, Problem> {
    let ticket = db::fetch_ticket(&state.pool, id).await?;
    Ok(Json(ticket.ok_or(PurchaseError::NotFound)?))
}

/// How long `/health` waits for each dependency before calling it down.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /health`: 200 when the database and the strategy's own services
/// (Redis, where used) answer, 503 otherwise.
async fn health(State(state): State<AppState>) -> Result<Json<serde_json::Value>, Problem> {
    let database =
        tokio::time::timeout(HEALTH_TIMEOUT, sqlx::query("SELECT 1").execute(&state.pool)).await;
    let database = match database {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(format!("database: {err}")),
        Err(_) => Err("database: no answer within 2 s".to_owned()),
    };
    let others = match tokio::time::timeout(HEALTH_TIMEOUT, state.strategy.check_health()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("{err:#}")),
        Err(_) => Err("no answer within 2 s".to_owned()),
    };
    database
        .and(others)
        .map_err(|why| Problem::unavailable("unavailable", why, Duration::from_secs(1)))?;
    Ok(Json(serde_json::json!({
        "status": "ok",
        "strategy": state.strategy.name(),
    })))
}

/// Liveness: answers without touching anything. The load tool hammers it to
/// measure the HTTP ceiling (what the server costs with no work behind it).
async fn livez() -> &'static str {
    "ok"
}

/// `GET /metrics`: this server's counters, as Prometheus text.
async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.response(&state.pool)
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this resource does not answer that method",
    )
}

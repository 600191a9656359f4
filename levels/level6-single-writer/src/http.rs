//! Level 6's HTTP API: the shared one ([`ticket_core::api::app`]), with
//! purchases and cancellations going over the log, and one more route:
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /tickets/{id}/orders` | as every level, or 202 `{"request_id", "status": "pending"}` with `Location: /requests/{request_id}` when the decider's answer did not come in time |
//! | `DELETE /tickets/{id}/orders/{order_id}` | as every level (503 busy if no answer in time: a cancel may be repeated) |
//! | `GET /requests/{request_id}` | the recorded answer once decided (same status and body the purchase would have had), 202 pending before |
//! | `GET /partitions` | which partitions this server decides, and how many of its batches the fence refused |

use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use ticket_core::api::input::{BuyerBody, IdempotencyKey, OrderPath, TicketPath};
use ticket_core::api::listed::ListedRouter;
use ticket_core::api::{AppState, Problem};
use ticket_core::metrics::Metrics;
use ticket_core::{PurchaseError, TicketId, UserId};

use crate::engine::Engine;
use crate::log::{Answer, Command, Request};

/// What Level 6's own handlers reach.
#[derive(Clone)]
pub struct Level6State {
    /// The engine that appends and waits.
    pub engine: Engine,
    /// This server's counters.
    pub metrics: Metrics,
}

/// Level 6's own routes, each added through
/// [`ticket_core::api::listed::ListedRouter`]; together with
/// [`ticket_core::api::listed()`], which answers everything else, they are
/// the routes the OpenAPI test compares with the document.
pub fn listed() -> ListedRouter<Level6State> {
    ListedRouter::new()
        .post("/tickets/{ticket_id}/orders", purchase)
        .delete("/tickets/{ticket_id}/orders/{order_id}", cancel)
        .get("/requests/{request_id}", poll)
        .get("/partitions", partitions)
}

/// The router: Level 6's routes, and the shared API for everything else.
pub fn app(engine: Engine, shared: AppState) -> Router {
    let state = Level6State {
        engine,
        metrics: shared.metrics.clone(),
    };
    let own = listed()
        .into_router()
        .layer(axum::extract::DefaultBodyLimit::max(
            ticket_core::api::MAX_BODY_BYTES,
        ));
    // Request ids and traces on Level 6's own routes; the fallback (the
    // shared API) has its own.
    ticket_core::api::observed(own)
        .with_state(state)
        .fallback_service(ticket_core::api::app(shared))
}

/// A request id for a purchase: derived from the Idempotency-Key when there
/// is one (so that a repeat is the *same* request, decided once), random
/// otherwise.
pub fn request_id(ticket: TicketId, user: UserId, key: Option<&str>) -> String {
    match key {
        Some(key) => {
            let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
            format!("k{ticket}-{user}-{hex}")
        }
        None => random_id(),
    }
}

fn random_id() -> String {
    format!("r{:032x}", rand::random::<u128>())
}

/// `POST /tickets/{ticket_id}/orders`.
async fn purchase(
    State(state): State<Level6State>,
    TicketPath(ticket): TicketPath,
    IdempotencyKey(key): IdempotencyKey,
    BuyerBody(user): BuyerBody,
) -> Response {
    let started = Instant::now();
    if let Some(key) = &key {
        match replay_for_key(&state, ticket, user, key).await {
            Ok(Some(response)) => return response,
            Ok(None) => {}
            Err(problem) => return problem.into_response(),
        }
    }
    let request = Request {
        id: request_id(ticket, user, key.as_deref()),
        command: Command::Buy { ticket, user },
        key,
        reply_to: state.engine.instance().to_owned(),
    };
    let (outcome, response) = match state.engine.submit(request.clone()).await {
        Ok(Some(answer)) => (outcome_of(&answer), respond(&answer, false)),
        Ok(None) => ("pending", pending(&request.id)),
        Err(err) => {
            let problem = Problem::from(err);
            (problem.code, problem.into_response())
        }
    };
    state.metrics.purchase(outcome, started.elapsed());
    response
}

/// A keyed purchase answered before is replayed at once; a key used for
/// another ticket is refused.
async fn replay_for_key(
    state: &Level6State,
    ticket: TicketId,
    user: UserId,
    key: &str,
) -> Result<Option<Response>, Problem> {
    let row: Option<(i64, String, i16, String, Option<String>)> = sqlx::query_as(
        "SELECT ticket_id, request_id, status, body, location FROM level6_requests \
         WHERE user_id = $1 AND idem_key = $2 LIMIT 1",
    )
    .bind(user.get())
    .bind(key)
    .fetch_optional(state.engine.pool())
    .await
    .map_err(|err| Problem::from(PurchaseError::from(err)))?;
    Ok(match row {
        None => None,
        Some((other, ..)) if other != ticket.get() => {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_mismatch",
                "this Idempotency-Key was used for another ticket",
            ))
        }
        Some((_, id, status, body, location)) => {
            let answer = Answer {
                id,
                status: u16::try_from(status).unwrap_or(500),
                body,
                location,
            };
            Some(respond(&answer, true))
        }
    })
}

/// `DELETE /tickets/{ticket_id}/orders/{order_id}`.
async fn cancel(
    State(state): State<Level6State>,
    OrderPath { ticket, order }: OrderPath,
    BuyerBody(user): BuyerBody,
) -> Response {
    let request = Request {
        id: random_id(),
        command: Command::Cancel {
            ticket,
            user,
            order,
        },
        key: None,
        reply_to: state.engine.instance().to_owned(),
    };
    match state.engine.submit(request).await {
        Ok(Some(answer)) => respond(&answer, false),
        // Cancelling is idempotent by order id: asking again is safe.
        Ok(None) => Problem::from(PurchaseError::Busy {
            reason: "the cancellation was not decided in time; ask again",
            retry_after: Duration::from_millis(200),
        })
        .into_response(),
        Err(err) => Problem::from(err).into_response(),
    }
}

/// `GET /requests/{request_id}`: the recorded answer, or 202 while the
/// request waits in the log.
async fn poll(State(state): State<Level6State>, Path(id): Path<String>) -> Response {
    if id.is_empty()
        || id.len() > 600
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Problem::new(StatusCode::NOT_FOUND, "not_found", "no such request").into_response();
    }
    let row: Result<Option<(i16, String, Option<String>)>, sqlx::Error> =
        sqlx::query_as("SELECT status, body, location FROM level6_requests WHERE request_id = $1")
            .bind(&id)
            .fetch_optional(state.engine.pool())
            .await;
    match row {
        Ok(Some((status, body, location))) => respond(
            &Answer {
                id,
                status: u16::try_from(status).unwrap_or(500),
                body,
                location,
            },
            false,
        ),
        Ok(None) => pending(&id),
        Err(err) => Problem::from(PurchaseError::from(err)).into_response(),
    }
}

/// `GET /partitions`.
async fn partitions(State(state): State<Level6State>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "instance": state.engine.instance(),
        "owned": state.engine.owned(),
        "fenced_batches": state.engine.fenced_batches(),
    }))
}

/// 202: the request is in the log and will be decided; poll here.
fn pending(id: &str) -> Response {
    let location = format!("/requests/{id}");
    let body = serde_json::json!({"request_id": id, "status": "pending"});
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The recorded answer, byte for byte, as every level replays one.
fn respond(answer: &Answer, replayed: bool) -> Response {
    let recorded = ticket_core::idempotency::Recorded {
        status: answer.status,
        body: answer.body.clone(),
        location: answer.location.clone(),
    };
    ticket_core::api::replay_response(&recorded, replayed)
}

/// The metrics' outcome label for an answer.
fn outcome_of(answer: &Answer) -> &'static str {
    if answer.status == 201 {
        return "created";
    }
    let code = serde_json::from_str::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("code")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    match code.as_str() {
        "sold_out" => "sold_out",
        "already_purchased" => "already_purchased",
        "not_found" => "not_found",
        _ => "other",
    }
}

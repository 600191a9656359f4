//! The HTTP API every level serves, exactly as DESIGN.md fixes it:
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
//!
//! Every failure is `application/problem+json` (RFC 9457) with an extra
//! `code` field. Input is checked completely *before* a strategy is called,
//! so bad input is always a 4xx and never changes a row.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use sqlx::PgPool;

use crate::db;
use crate::domain::{
    CancelError, InvalidId, OrderId, Purchase, PurchaseError, SellTickets, TicketId, UserId,
};
use crate::idempotency::{self, Begin, Recorded};
use crate::metrics::Metrics;

/// The largest request body accepted. `{"user_id": 9223372036854775807}` is
/// 32 bytes; anything near this limit is not a purchase.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

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

/// Builds the router. Kept apart from `main` so tests can serve it on port 0.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/tickets/{ticket_id}/orders", post(purchase))
        .route(
            "/tickets/{ticket_id}/orders/{order_id}",
            axum::routing::delete(cancel),
        )
        .route("/tickets/{ticket_id}", get(ticket))
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// An RFC 9457 problem: the one shape every failure takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable snake_case code clients branch on (`sold_out`, `busy`...).
    pub code: &'static str,
    /// A sentence for the person reading it.
    pub detail: String,
    /// For 503: when to try again.
    pub retry_after: Option<Duration>,
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u128>,
}

impl Problem {
    /// A problem with no retry hint.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    fn malformed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_request", detail)
    }

    fn invalid_id(err: InvalidId) -> Self {
        let code = match err.field {
            "ticket_id" => "invalid_ticket_id",
            _ => "invalid_user_id",
        };
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, err.to_string())
    }
}

impl Problem {
    /// The JSON body, as sent (and, for idempotent replays, as recorded).
    pub fn body(&self) -> String {
        let body = ProblemBody {
            kind: format!("urn:ticket-rush:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
            retry_after_ms: self.retry_after.map(|d| d.as_millis()),
        };
        serde_json::to_string(&body).expect("a problem always serializes")
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let json = self.body();
        let mut response = (self.status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(after) = self.retry_after {
            // Retry-After only speaks whole seconds; `retry_after_ms` in the
            // body carries the finer hint that the load tool honours.
            let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<PurchaseError> for Problem {
    fn from(err: PurchaseError) -> Self {
        let code = err.code();
        match err {
            PurchaseError::SoldOut => {
                Problem::new(StatusCode::CONFLICT, code, "the ticket is sold out")
            }
            PurchaseError::AlreadyPurchased => Problem::new(
                StatusCode::CONFLICT,
                code,
                "this user already holds this ticket; one per buyer",
            ),
            PurchaseError::NotFound => Problem::new(StatusCode::NOT_FOUND, code, "no such ticket"),
            PurchaseError::Busy {
                reason,
                retry_after,
            } => Problem {
                retry_after: Some(retry_after),
                ..Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    format!("{reason}; please try again"),
                )
            },
            PurchaseError::Unavailable(err) => {
                tracing::warn!(error = format!("{err:#}"), "a service is unavailable");
                Problem {
                    retry_after: Some(Duration::from_secs(1)),
                    ..Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        code,
                        "a service this server needs is not answering; please try again",
                    )
                }
            }
            PurchaseError::Unexpected(err) => {
                // Log the cause here; the client gets an opaque body.
                tracing::error!(error = format!("{err:#}"), "purchase failed unexpectedly");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    code,
                    "the server failed unexpectedly; this is a bug",
                )
            }
        }
    }
}

/// Parses the `{ticket_id}` path segment: not a number is 400, a number out
/// of range is 422.
pub fn parse_ticket_id(raw: &str) -> Result<TicketId, Problem> {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Problem::malformed(format!(
            "ticket id {raw:?} is not a number"
        )));
    }
    // More digits than an i128 holds is certainly out of range.
    let value = raw.parse::<i128>().unwrap_or(if raw.starts_with('-') {
        i128::MIN
    } else {
        i128::MAX
    });
    TicketId::parse(value).map_err(Problem::invalid_id)
}

/// Parses a purchase body: a JSON object with a positive integer `user_id`.
pub fn parse_purchase_body(headers: &HeaderMap, body: &[u8]) -> Result<UserId, Problem> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false);
    if !is_json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Problem::malformed(format!("the body is not valid JSON: {e}")))?;
    let object = value.as_object().ok_or_else(|| {
        Problem::malformed("the body must be a JSON object like {\"user_id\": 42}")
    })?;
    let invalid = |detail: &str| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_user_id",
            detail.to_owned(),
        )
    };
    let raw = object
        .get("user_id")
        .ok_or_else(|| invalid("user_id is required, for example {\"user_id\": 42}"))?;
    let number = raw
        .as_number()
        .ok_or_else(|| invalid("user_id must be a JSON number, not a string or other value"))?;
    let whole = if let Some(n) = number.as_i64() {
        i128::from(n)
    } else if let Some(n) = number.as_u64() {
        i128::from(n)
    } else {
        // A fraction, or a number too large for 64 bits (parsed as a float).
        return Err(invalid(&format!(
            "user_id must be a whole number from 1 to {}, got {number}",
            i64::MAX
        )));
    };
    UserId::parse(whole).map_err(Problem::invalid_id)
}

async fn purchase(
    State(state): State<AppState>,
    Path(raw_ticket): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ticket = match parse_ticket_id(&raw_ticket) {
        Ok(ticket) => ticket,
        Err(problem) => return problem.into_response(),
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body must be at most {MAX_BODY_BYTES} bytes"),
            )
            .into_response()
        }
        Err(rejection) => return Problem::malformed(rejection.body_text()).into_response(),
    };
    let user = match parse_purchase_body(&headers, &body) {
        Ok(user) => user,
        Err(problem) => return problem.into_response(),
    };

    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(raw) => match idempotency::parse_key(raw.as_bytes()) {
            Some(key) => Some(key),
            None => {
                return Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                )
                .into_response()
            }
        },
    };
    let started = Instant::now();
    let answer = match key {
        None => answer_of(state.strategy.purchase(Purchase::new(ticket, user)).await),
        Some(key) => match state.idempotency.mode {
            idempotency::Mode::Atomic => idempotent_purchase(&state, &key, ticket, user).await,
            idempotency::Mode::CheckThenInsert => {
                check_then_insert_purchase(&state, &key, ticket, user).await
            }
        },
    };
    state.metrics.purchase(answer.outcome, started.elapsed());
    answer.response
}

/// A purchase's answer, with the outcome label the metrics count.
struct Answer {
    outcome: &'static str,
    response: Response,
}

/// The header the IETF draft names.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Marks an answer that was recorded earlier and is being replayed.
const REPLAYED: &str = "idempotent-replayed";

/// The answer to a purchase, and what to record of it for its key (`None`
/// for retryable failures, which are not recorded).
fn answer_of(outcome: Result<crate::domain::Order, PurchaseError>) -> Answer {
    let (answer, _) = answer_and_record(outcome);
    answer
}

fn answer_and_record(
    outcome: Result<crate::domain::Order, PurchaseError>,
) -> (Answer, Option<Recorded>) {
    match outcome {
        Ok(order) => {
            let (body, location) = idempotency::created_body(&order);
            let recorded = Recorded {
                status: 201,
                body,
                location: Some(location),
            };
            (
                Answer {
                    outcome: "created",
                    response: replay_response(&recorded, false),
                },
                Some(recorded),
            )
        }
        Err(err) => {
            let outcome = err.code();
            let retryable = matches!(
                err,
                PurchaseError::Busy { .. }
                    | PurchaseError::Unavailable(_)
                    | PurchaseError::Unexpected(_)
            );
            let problem = Problem::from(err);
            let recorded = (!retryable).then(|| Recorded {
                status: problem.status.as_u16(),
                body: problem.body(),
                location: None,
            });
            (
                Answer {
                    outcome,
                    response: problem.into_response(),
                },
                recorded,
            )
        }
    }
}

/// Builds the response for a recorded answer, byte for byte.
fn replay_response(recorded: &Recorded, replayed: bool) -> Response {
    let status = StatusCode::from_u16(recorded.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    let mut response = (status, recorded.body.clone()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(location) = recorded
        .location
        .as_deref()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert(REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

fn outcome_of(status: u16, body: &str) -> &'static str {
    if status == 201 {
        return "created";
    }
    let code = serde_json::from_str::<serde_json::Value>(body)
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

/// The correct design: claim the key, do the work inside the claim (the
/// order's transaction records the answer), or wait and replay.
async fn idempotent_purchase(
    state: &AppState,
    key: &str,
    ticket: TicketId,
    user: UserId,
) -> Answer {
    let begun = match idempotency::begin(&state.pool, &state.idempotency, key, ticket, user).await {
        Ok(begun) => begun,
        Err(err) => return answer_of(Err(err)),
    };
    match begun {
        Begin::Replay(recorded) => Answer {
            outcome: outcome_of(recorded.status, &recorded.body),
            response: replay_response(&recorded, true),
        },
        Begin::Mismatch => Answer {
            outcome: "idempotency_key_mismatch",
            response: Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_mismatch",
                "this Idempotency-Key was used for another ticket",
            )
            .into_response(),
        },
        Begin::InProgress => Answer {
            outcome: "request_in_progress",
            response: Problem::new(
                StatusCode::CONFLICT,
                "request_in_progress",
                "a request with this Idempotency-Key is still being processed; try again shortly",
            )
            .into_response(),
        },
        Begin::Owner(claim) => {
            let purchase = Purchase {
                ticket,
                user,
                claim: Some(claim.clone()),
            };
            let (answer, recorded) = answer_and_record(state.strategy.purchase(purchase).await);
            let kept = match recorded {
                // A 201 whose order went through `insert_order` is recorded
                // already, in the order's transaction, and `finish` leaves it
                // alone; one decided elsewhere (Level 4) is recorded now.
                Some(recorded) => idempotency::finish(&state.pool, &claim, &recorded).await,
                None => idempotency::release(&state.pool, &claim).await,
            };
            if let Err(err) = kept {
                tracing::warn!(error = %err, "could not record an idempotency key's answer");
            }
            answer
        }
    }
}

/// The broken design, kept on purpose: look the key up, do the work, then
/// insert the key. Concurrent duplicates all miss the lookup and all do the
/// work; all but one then fail to insert the key.
async fn check_then_insert_purchase(
    state: &AppState,
    key: &str,
    ticket: TicketId,
    user: UserId,
) -> Answer {
    match idempotency::lookup(&state.pool, key, user).await {
        Ok(Some((t, recorded))) if t == ticket.get() => {
            return Answer {
                outcome: outcome_of(recorded.status, &recorded.body),
                response: replay_response(&recorded, true),
            }
        }
        Ok(Some(_)) => {
            return Answer {
                outcome: "idempotency_key_mismatch",
                response: Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_mismatch",
                    "this Idempotency-Key was used for another ticket",
                )
                .into_response(),
            }
        }
        Ok(None) => {}
        Err(err) => return answer_of(Err(err)),
    }
    let (answer, recorded) =
        answer_and_record(state.strategy.purchase(Purchase::new(ticket, user)).await);
    if let Some(recorded) = recorded {
        if let Err(err) = idempotency::insert_after(
            &state.pool,
            &state.idempotency,
            key,
            ticket,
            user,
            &recorded,
        )
        .await
        {
            return answer_of(Err(err));
        }
    }
    answer
}

async fn cancel(
    State(state): State<AppState>,
    Path((raw_ticket, raw_order)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ticket = match parse_ticket_id(&raw_ticket) {
        Ok(ticket) => ticket,
        Err(problem) => return problem.into_response(),
    };
    let order = match parse_order_id(&raw_order) {
        Ok(order) => order,
        Err(problem) => return problem.into_response(),
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return Problem::malformed(rejection.body_text()).into_response(),
    };
    let user = match parse_purchase_body(&headers, &body) {
        Ok(user) => user,
        Err(problem) => return problem.into_response(),
    };
    let outcome = match state.strategy.cancel(ticket, order, user).await {
        Some(outcome) => outcome,
        None => db::cancel_order(&state.pool, ticket, order, user).await,
    };
    match outcome {
        Ok(cancellation) => Json(cancellation).into_response(),
        Err(CancelError::NotFound) => Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such order for this ticket",
        )
        .into_response(),
        Err(CancelError::Forbidden) => Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this order belongs to another user",
        )
        .into_response(),
        Err(CancelError::Purchase(err)) => Problem::from(err).into_response(),
    }
}

/// Parses the `{order_id}` path segment like a ticket id.
fn parse_order_id(raw: &str) -> Result<OrderId, Problem> {
    parse_ticket_id(raw)
        .map(|id| OrderId(id.get()))
        .map_err(|problem| Problem {
            code: if problem.code == "invalid_ticket_id" {
                "invalid_order_id"
            } else {
                problem.code
            },
            detail: problem.detail.replace("ticket", "order"),
            ..problem
        })
}

async fn ticket(State(state): State<AppState>, Path(raw_ticket): Path<String>) -> Response {
    let id = match parse_ticket_id(&raw_ticket) {
        Ok(id) => id,
        Err(problem) => return problem.into_response(),
    };
    match db::fetch_ticket(&state.pool, id).await {
        Ok(Some(ticket)) => Json(ticket).into_response(),
        Ok(None) => Problem::from(PurchaseError::NotFound).into_response(),
        Err(err) => Problem::from(err).into_response(),
    }
}

/// How long `/health` waits for each dependency before calling it down.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

async fn health(State(state): State<AppState>) -> Response {
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
    match database.and(others) {
        Ok(()) => Json(serde_json::json!({
            "status": "ok",
            "strategy": state.strategy.name(),
        }))
        .into_response(),
        Err(why) => Problem {
            retry_after: Some(Duration::from_secs(1)),
            ..Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why)
        }
        .into_response(),
    }
}

/// Liveness: answers without touching anything. The load tool hammers it to
/// measure the HTTP ceiling (what the server costs with no work behind it).
async fn livez() -> &'static str {
    "ok"
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = state
        .metrics
        .render(state.pool.size(), state.pool.num_idle());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn json_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers
    }

    #[test]
    fn ticket_ids_are_numbers_in_range() {
        assert_eq!(parse_ticket_id("7").unwrap().get(), 7);
        assert_eq!(
            parse_ticket_id("abc").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            parse_ticket_id("").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        for out_of_range in ["0", "-3", "9223372036854775808", &"9".repeat(60)] {
            let problem = parse_ticket_id(out_of_range).unwrap_err();
            assert_eq!(
                problem.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{out_of_range}"
            );
            assert_eq!(problem.code, "invalid_ticket_id");
        }
    }

    #[test]
    fn purchase_bodies_need_a_positive_integer_user_id() {
        let headers = json_headers();
        assert_eq!(
            parse_purchase_body(&headers, br#"{"user_id": 42}"#)
                .unwrap()
                .get(),
            42
        );
        let cases: &[(&[u8], StatusCode, &str)] = &[
            (b"{not json", StatusCode::BAD_REQUEST, "malformed_request"),
            (b"[1, 2]", StatusCode::BAD_REQUEST, "malformed_request"),
            (b"{}", StatusCode::UNPROCESSABLE_ENTITY, "invalid_user_id"),
            (
                br#"{"user_id": "42"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_user_id",
            ),
            (
                br#"{"user_id": 0}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_user_id",
            ),
            (
                br#"{"user_id": -5}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_user_id",
            ),
            (
                br#"{"user_id": 4.5}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_user_id",
            ),
            (
                br#"{"user_id": 9223372036854775808}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_user_id",
            ),
            (
                br#"{"user_id": 1e400}"#,
                StatusCode::BAD_REQUEST,
                "malformed_request",
            ),
        ];
        for (body, status, code) in cases {
            let problem = parse_purchase_body(&headers, body).unwrap_err();
            assert_eq!(
                (problem.status, problem.code),
                (*status, *code),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn purchase_bodies_must_be_declared_json() {
        let mut headers = HeaderMap::new();
        let problem = parse_purchase_body(&headers, br#"{"user_id": 1}"#).unwrap_err();
        assert_eq!(problem.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(parse_purchase_body(&headers, br#"{"user_id": 1}"#).is_err());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(parse_purchase_body(&headers, br#"{"user_id": 1}"#).is_ok());
    }

    #[test]
    fn busy_problems_carry_retry_after() {
        let response = Problem::from(PurchaseError::busy("test")).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}

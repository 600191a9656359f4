//! The HTTP API every level serves, exactly as DESIGN.md fixes it:
//!
//! | request | success |
//! | --- | --- |
//! | `POST /tickets/{ticket_id}/orders` `{"user_id": 42}` | 201 `{"order_id", "ticket_id", "user_id"}` |
//! | `GET /tickets/{ticket_id}` | 200 `{"id", "name", "total", "stock", "sold"}` |
//! | `GET /health` | 200 when the database (and Redis, where used) answer |
//! | `GET /livez` | 200 as long as the process serves HTTP; does no work at all |
//! | `GET /metrics` | Prometheus text |
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
use crate::domain::{InvalidId, PurchaseError, SellTickets, TicketId, UserId};
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
}

/// Builds the router. Kept apart from `main` so tests can serve it on port 0.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/tickets/{ticket_id}/orders", post(purchase))
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

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = ProblemBody {
            kind: format!("urn:ticket-rush:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
            retry_after_ms: self.retry_after.map(|d| d.as_millis()),
        };
        let json = serde_json::to_vec(&body).expect("a problem always serializes");
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

    let started = Instant::now();
    let outcome = state.strategy.purchase(ticket, user).await;
    let took = started.elapsed();
    match outcome {
        Ok(order) => {
            state.metrics.purchase("created", took);
            let location = format!("/tickets/{}/orders/{}", order.ticket_id, order.order_id);
            (
                StatusCode::CREATED,
                [(header::LOCATION, location)],
                Json(order),
            )
                .into_response()
        }
        Err(err) => {
            state.metrics.purchase(err.code(), took);
            Problem::from(err).into_response()
        }
    }
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

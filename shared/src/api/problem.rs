//! RFC 9457 problems: the one shape every failure takes, and the one mapping
//! from each domain error ([`PurchaseError`], [`CancelError`]) to its status.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::{CancelError, InvalidId, PurchaseError};

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

    /// 503 with a retry hint.
    pub fn unavailable(code: &'static str, detail: impl Into<String>, after: Duration) -> Self {
        Self {
            retry_after: Some(after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
        }
    }

    /// 400 `malformed_request`: the request cannot be read at all.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_request", detail)
    }

    /// 422 for an id out of range, naming the field.
    pub fn invalid_id(err: InvalidId) -> Self {
        let code = match err.field {
            "ticket_id" => "invalid_ticket_id",
            _ => "invalid_user_id",
        };
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, err.to_string())
    }

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
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The body was refused unread, so the connection is closed after
            // this answer; saying so keeps a client from sending its next
            // request on it (it would fail half-sent: IncompleteMessage).
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
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
            } => Problem::unavailable(code, format!("{reason}; please try again"), retry_after),
            PurchaseError::Unavailable(err) => {
                tracing::warn!(error = format!("{err:#}"), "a service is unavailable");
                Problem::unavailable(
                    code,
                    "a service this server needs is not answering; please try again",
                    Duration::from_secs(1),
                )
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

impl From<CancelError> for Problem {
    fn from(err: CancelError) -> Self {
        match err {
            CancelError::NotFound => Problem::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such order for this ticket",
            ),
            CancelError::Forbidden => Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this order belongs to another user",
            ),
            CancelError::Purchase(err) => Problem::from(err),
        }
    }
}

impl From<sqlx::Error> for Problem {
    fn from(err: sqlx::Error) -> Self {
        Problem::from(PurchaseError::from(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_body_closes_the_connection_and_says_so() {
        let too_large = Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "big");
        assert_eq!(
            too_large.into_response().headers()[header::CONNECTION],
            "close"
        );
        let other = Problem::malformed("bad").into_response();
        assert!(other.headers().get(header::CONNECTION).is_none());
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

    #[test]
    fn every_cancel_outcome_has_its_status() {
        let status = |err| Problem::from(err).status;
        assert_eq!(status(CancelError::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(status(CancelError::Forbidden), StatusCode::FORBIDDEN);
        assert_eq!(
            status(CancelError::Purchase(PurchaseError::busy("test"))),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}

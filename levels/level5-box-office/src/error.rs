//! Every outcome a box-office request can end in that is not a success, and
//! the one mapping from each to its HTTP status and problem+json `code`.
//!
//! Handlers and the domain functions return [`BoxError`]; the API turns it
//! into a [`Reply`] with `?`. The mapping lives here, next to the type, so a
//! reader sees in one place that a deadlock is a 503 and never a 500.

use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ticket_core::api::Problem;
use ticket_core::db;

/// Why a box-office request did not succeed. Callers branch on the variant;
/// the load tool and tests branch on the `code` it becomes.
#[derive(Debug, thiserror::Error)]
pub enum BoxError {
    /// Bad input: a 4xx that changes nothing. `status` is 400, 415 or 422.
    #[error("{detail}")]
    Invalid {
        /// 400 malformed, 415 not JSON, 422 invalid value.
        status: StatusCode,
        /// The problem's code, for example `invalid_seats`.
        code: &'static str,
        /// What was wrong, for the person reading it.
        detail: String,
    },
    /// No such show, hold or seat map.
    #[error("no such {0}")]
    NotFound(&'static str),
    /// The hold belongs to another user.
    #[error("this hold belongs to another user")]
    Forbidden,
    /// No or wrong admin token.
    #[error("a valid admin token is required")]
    Unauthorized,
    /// The server runs without `--admin-token`: there is no admin API.
    #[error("the admin API is off")]
    AdminDisabled,
    /// Some of the seats asked for are held or sold: nothing was held.
    #[error("seats {0:?} are not available")]
    SeatsUnavailable(Vec<i32>),
    /// The user already holds as many seats as one user may.
    #[error("a user may hold at most {max} seats at once")]
    HoldLimit {
        /// `--max-seats`.
        max: usize,
    },
    /// The hold is paid already; nothing is charged twice.
    #[error("this hold is already paid")]
    AlreadyPaid,
    /// The hold ran out of time before it was paid; its seats went back on sale.
    #[error("this hold has expired")]
    HoldExpired,
    /// The holder released the hold.
    #[error("this hold was released")]
    HoldReleased,
    /// The wallet holds less than the hold costs.
    #[error("the balance {balance} is less than the amount {amount}")]
    InsufficientBalance {
        /// The wallet's balance now.
        balance: i64,
        /// What the hold costs.
        amount: i64,
    },
    /// A hold or payment without `Queue-Token` while the waiting room is on.
    #[error("this request needs a Queue-Token: join the queue first (POST /queue)")]
    TokenRequired,
    /// A `Queue-Token` that was never issued, or not to this user for this
    /// show (or Redis forgot it: a restart).
    #[error("this Queue-Token is not valid for this user and show")]
    TokenInvalid,
    /// A real token whose holder is still waiting, or whose turn is over.
    #[error("this user is not admitted: wait for your turn (GET /queue/{{token}})")]
    NotAdmitted,
    /// The server runs with `--queue off`: there is no waiting room.
    #[error("the waiting room is off on this server (--queue off)")]
    QueueOff,
    /// An `Idempotency-Key` reused for another request.
    #[error("this Idempotency-Key was used for another request")]
    KeyMismatch,
    /// A request with the same `Idempotency-Key` is still running.
    #[error("a request with this Idempotency-Key is still being processed")]
    InProgress,
    /// Retryable: a lock wait timed out, a deadlock was broken, retries ran
    /// out, no free connection. 503 with `Retry-After`; nothing was written.
    #[error("busy: {0}")]
    Busy(&'static str),
    /// The database (or Redis) does not answer. 503.
    #[error("a service is unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// A bug. 500, logged, opaque to the client.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl BoxError {
    /// A 422 with `code`.
    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code,
            detail: detail.into(),
        }
    }

    /// A 400 `malformed_request`.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::Invalid {
            status: StatusCode::BAD_REQUEST,
            code: "malformed_request",
            detail: detail.into(),
        }
    }

    /// Whether a retry may succeed (so an idempotency key must not record it).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Busy(_) | Self::Unavailable(_) | Self::Unexpected(_) | Self::InProgress
        )
    }
}

/// Database errors, translated the way every level does it
/// ([`ticket_core::db::classify`]): a deadlock (40P01), a serialization
/// failure (40001), a lock or statement timeout, an exhausted pool are all
/// `busy`; a lost connection is `unavailable`; anything else is a bug.
impl From<sqlx::Error> for BoxError {
    fn from(err: sqlx::Error) -> Self {
        if db::sqlstate(&err).as_deref() == Some("40P01") {
            return Self::Busy("a deadlock between two buyers was broken by the database");
        }
        match db::classify(err) {
            ticket_core::PurchaseError::Busy { reason, .. } => Self::Busy(reason),
            ticket_core::PurchaseError::Unavailable(err) => Self::Unavailable(err),
            ticket_core::PurchaseError::Unexpected(err) => Self::Unexpected(err),
            // A UNIQUE or foreign-key violation nobody expected.
            other => Self::Unexpected(anyhow::anyhow!("{other}")),
        }
    }
}

/// Redis not answering is 503 `unavailable`; anything else is a bug.
pub fn redis_error(err: redis::RedisError) -> BoxError {
    if err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
    {
        BoxError::Unavailable(anyhow::Error::new(err).context("Redis"))
    } else {
        BoxError::Unexpected(anyhow::Error::new(err).context("Redis"))
    }
}

/// A failure as the client receives it: a problem+json body with `code`,
/// plus `seats` for `seats_unavailable`.
#[derive(Debug, Clone)]
pub struct Reply {
    problem: Problem,
    seats: Option<Vec<i32>>,
}

impl Reply {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.problem.status
    }

    /// The JSON body, exactly as sent (and as recorded for an idempotent
    /// replay).
    pub fn body(&self) -> String {
        let body = self.problem.body();
        let Some(seats) = &self.seats else {
            return body;
        };
        let mut value: serde_json::Value =
            serde_json::from_str(&body).expect("a problem body is JSON");
        value["seats"] = serde_json::json!(seats);
        value.to_string()
    }
}

impl From<BoxError> for Reply {
    fn from(err: BoxError) -> Self {
        let detail = err.to_string();
        let (status, code) = match &err {
            BoxError::Invalid { status, code, .. } => (*status, *code),
            BoxError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            BoxError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            BoxError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            BoxError::AdminDisabled => (StatusCode::FORBIDDEN, "admin_disabled"),
            BoxError::SeatsUnavailable(_) => (StatusCode::CONFLICT, "seats_unavailable"),
            BoxError::HoldLimit { .. } => (StatusCode::CONFLICT, "hold_limit"),
            BoxError::AlreadyPaid => (StatusCode::CONFLICT, "already_paid"),
            BoxError::HoldExpired => (StatusCode::GONE, "hold_expired"),
            BoxError::HoldReleased => (StatusCode::GONE, "hold_released"),
            BoxError::InsufficientBalance { .. } => {
                (StatusCode::PAYMENT_REQUIRED, "insufficient_balance")
            }
            BoxError::TokenRequired => (StatusCode::UNAUTHORIZED, "token_required"),
            BoxError::TokenInvalid => (StatusCode::UNAUTHORIZED, "token_invalid"),
            BoxError::NotAdmitted => (StatusCode::FORBIDDEN, "not_admitted"),
            BoxError::QueueOff => (StatusCode::NOT_FOUND, "queue_off"),
            BoxError::KeyMismatch => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_mismatch"),
            BoxError::InProgress => (StatusCode::CONFLICT, "request_in_progress"),
            BoxError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            BoxError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            BoxError::Unexpected(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let detail = match &err {
            BoxError::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "a service is unavailable");
                "a service this server needs is not answering; please try again".to_owned()
            }
            BoxError::Unexpected(cause) => {
                // Logged here; the client gets an opaque body.
                tracing::error!(error = format!("{cause:#}"), "request failed unexpectedly");
                "the server failed unexpectedly; this is a bug".to_owned()
            }
            _ => detail,
        };
        let retry_after = (status == StatusCode::SERVICE_UNAVAILABLE).then(|| match err {
            BoxError::Busy(_) => Duration::from_millis(50),
            _ => Duration::from_secs(1),
        });
        let seats = match err {
            BoxError::SeatsUnavailable(seats) => Some(seats),
            _ => None,
        };
        Reply {
            problem: Problem {
                retry_after,
                ..Problem::new(status, code, detail)
            },
            seats,
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let body = self.body();
        // ticket-core's problem sets the status, Content-Type and
        // Retry-After; only the body is ours (it may carry `seats`).
        let (parts, _) = self.problem.into_response().into_parts();
        Response::from_parts(parts, Body::from(body))
    }
}

impl IntoResponse for BoxError {
    fn into_response(self) -> Response {
        Reply::from(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seats_unavailable_names_the_taken_seats() {
        let reply = Reply::from(BoxError::SeatsUnavailable(vec![3, 4]));
        assert_eq!(reply.status(), StatusCode::CONFLICT);
        let body: serde_json::Value = serde_json::from_str(&reply.body()).unwrap();
        assert_eq!(body["code"], "seats_unavailable");
        assert_eq!(body["seats"], serde_json::json!([3, 4]));
    }

    #[test]
    fn busy_is_a_503_with_a_retry_hint_and_bugs_are_opaque() {
        let busy = Reply::from(BoxError::Busy("test")).into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(busy.headers().contains_key("retry-after"));
        let bug = Reply::from(BoxError::Unexpected(anyhow::anyhow!("secret detail")));
        assert!(!bug.body().contains("secret"));
    }
}

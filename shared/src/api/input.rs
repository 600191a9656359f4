//! Input: every path segment, header and body is parsed and checked here,
//! by extractors, *before* a handler runs. A handler therefore only ever
//! sees valid ids, and bad input is always a 4xx [`Problem`] that changed
//! nothing.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};

use super::problem::Problem;
use crate::domain::{OrderId, TicketId, UserId};
use crate::idempotency;

/// The largest request body accepted. `{"user_id": 9223372036854775807}` is
/// 32 bytes; anything near this limit is not a purchase.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The header the IETF draft names.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The `{ticket_id}` of `/tickets/{ticket_id}` and `.../orders`.
#[derive(Debug, Clone, Copy)]
pub struct TicketPath(pub TicketId);

/// The `{ticket_id}` and `{order_id}` of `/tickets/{ticket_id}/orders/{order_id}`.
#[derive(Debug, Clone, Copy)]
pub struct OrderPath {
    /// The ticket.
    pub ticket: TicketId,
    /// The order.
    pub order: OrderId,
}

/// The buyer named by a purchase's or a cancel's JSON body
/// (`{"user_id": 42}`), with the same limits for both.
#[derive(Debug, Clone, Copy)]
pub struct BuyerBody(pub UserId);

/// The request's `Idempotency-Key`, if it sent one (checked: 1 to 255
/// visible ASCII characters).
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for TicketPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| Problem::malformed(rejection.body_text()))?;
        Ok(Self(parse_ticket_id(&raw)?))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for OrderPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Path((ticket, order)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| Problem::malformed(rejection.body_text()))?;
        Ok(Self {
            ticket: parse_ticket_id(&ticket)?,
            order: parse_order_id(&order)?,
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let Some(raw) = parts.headers.get(IDEMPOTENCY_KEY) else {
            return Ok(Self(None));
        };
        idempotency::parse_key(raw.as_bytes())
            .map(|key| Self(Some(key)))
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                )
            })
    }
}

impl<S: Send + Sync> FromRequest<S> for BuyerBody {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let headers = request.headers().clone();
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Problem::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("the body must be at most {MAX_BODY_BYTES} bytes"),
                    )
                } else {
                    Problem::malformed(rejection.body_text())
                }
            })?;
        Ok(Self(parse_purchase_body(&headers, &body)?))
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

/// Whether the Content-Type says JSON (`application/json` or
/// `application/*+json`, any parameters).
fn declares_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// Parses a purchase (or cancel) body: a JSON object with a positive
/// integer `user_id`.
pub fn parse_purchase_body(headers: &HeaderMap, body: &[u8]) -> Result<UserId, Problem> {
    if !declares_json(headers) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

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
}

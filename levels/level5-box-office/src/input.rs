//! Reading requests: path ids, JSON bodies and their fields, headers.
//!
//! Everything is checked here, completely, before any SQL runs: bad input is
//! a 4xx that cannot have changed a row. Not JSON is 415, broken JSON 400,
//! a wrong value 422 with a code that names the field (`invalid_user_id`).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};
use serde_json::{Map, Value};
use ticket_core::UserId;

use crate::error::BoxError;

/// Parses a path id such as `{show_id}`: not a number is 400, a number out
/// of range (0, negative, beyond BIGINT) is 422 `invalid_<field>`.
pub fn path_id(raw: &str, field: &'static str) -> Result<i64, BoxError> {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BoxError::malformed(format!(
            "{field} {raw:?} is not a number"
        )));
    }
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(invalid_field(
            field,
            format!("{field} must be from 1 to {}", i64::MAX),
        )),
    }
}

/// Parses a path `{user_id}`.
pub fn path_user(raw: &str) -> Result<UserId, BoxError> {
    let id = path_id(raw, "user_id")?;
    UserId::parse(id.into()).map_err(|e| invalid_field("user_id", e.to_string()))
}

fn invalid_field(field: &'static str, detail: String) -> BoxError {
    let code = match field {
        "show_id" => "invalid_show_id",
        "hold_id" => "invalid_hold_id",
        "user_id" => "invalid_user_id",
        "amount" => "invalid_amount",
        "seats" => "invalid_seats",
        "title" => "invalid_title",
        "starts_at" => "invalid_starts_at",
        "grades" => "invalid_grades",
        "grade" => "invalid_grade",
        "price" => "invalid_price",
        _ => "invalid_request",
    };
    BoxError::invalid(code, detail)
}

/// A request body as a JSON object, after the checks every body gets:
/// declared JSON (415), within the size limit (413), parseable (400), an
/// object (400).
pub fn json_object(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Map<String, Value>, BoxError> {
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
        return Err(BoxError::Invalid {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            detail: "send the body as Content-Type: application/json".to_owned(),
        });
    }
    let body = body.map_err(|rejection| BoxError::Invalid {
        status: rejection.status(),
        code: if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "malformed_request"
        },
        detail: rejection.body_text(),
    })?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| BoxError::malformed(format!("the body is not valid JSON: {e}")))?;
    match value {
        Value::Object(object) => Ok(object),
        _ => Err(BoxError::malformed("the body must be a JSON object")),
    }
}

/// A whole number field within `min..=max`; anything else is 422.
pub fn integer(
    object: &Map<String, Value>,
    field: &'static str,
    min: i64,
    max: i64,
) -> Result<i64, BoxError> {
    let raw = object
        .get(field)
        .ok_or_else(|| invalid_field(field, format!("{field} is required")))?;
    integer_value(raw, field, min, max)
}

fn integer_value(raw: &Value, field: &'static str, min: i64, max: i64) -> Result<i64, BoxError> {
    raw.as_i64()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            invalid_field(
                field,
                format!("{field} must be a whole number from {min} to {max}, got {raw}"),
            )
        })
}

/// The `user_id` field: a positive BIGINT.
pub fn user(object: &Map<String, Value>) -> Result<UserId, BoxError> {
    let id = integer(object, "user_id", 1, i64::MAX)?;
    UserId::parse(id.into()).map_err(|e| invalid_field("user_id", e.to_string()))
}

/// A non-empty string field of at most `max_chars` characters.
pub fn text(
    object: &Map<String, Value>,
    field: &'static str,
    max_chars: usize,
) -> Result<String, BoxError> {
    let text = object
        .get(field)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.chars().count() <= max_chars)
        .ok_or_else(|| {
            invalid_field(
                field,
                format!("{field} must be a string of 1 to {max_chars} characters"),
            )
        })?;
    Ok(text.to_owned())
}

/// The seats of a hold: 1 to `max_seats` distinct positive seat numbers.
/// Whether they exist is the database's to say (also a 422).
pub fn seat_list(object: &Map<String, Value>, max_seats: usize) -> Result<Vec<i32>, BoxError> {
    let list = object
        .get("seats")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid_field("seats", "seats must be a list like [3, 4]".to_owned()))?;
    if list.is_empty() || list.len() > max_seats {
        return Err(invalid_field(
            "seats",
            format!("hold 1 to {max_seats} seats at once, not {}", list.len()),
        ));
    }
    let mut seats = Vec::with_capacity(list.len());
    for raw in list {
        let seat = integer_value(raw, "seats", 1, i64::from(i32::MAX))? as i32;
        if seats.contains(&seat) {
            return Err(invalid_field(
                "seats",
                format!("seat {seat} is listed twice"),
            ));
        }
        seats.push(seat);
    }
    Ok(seats)
}

/// The `Idempotency-Key` header, if any: 1 to 255 visible ASCII characters,
/// else 400.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, BoxError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(raw) => crate::keys::parse(raw.as_bytes())
            .map(Some)
            .ok_or(BoxError::Invalid {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_idempotency_key",
                detail: "Idempotency-Key must be 1 to 255 visible ASCII characters".to_owned(),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn seat_lists_are_short_distinct_and_positive() {
        assert_eq!(seat_list(&object(r#"{"seats":[3,4]}"#), 4).unwrap(), [3, 4]);
        for bad in [
            r#"{"seats":[]}"#,
            r#"{"seats":[1,1]}"#,
            r#"{"seats":[1,2,3,4,5]}"#,
            r#"{"seats":[0]}"#,
            r#"{"seats":[-1]}"#,
            r#"{"seats":[1.5]}"#,
            r#"{"seats":["1"]}"#,
            r#"{"seats":[2147483648]}"#,
            r#"{"seats":3}"#,
            r#"{}"#,
        ] {
            let err = seat_list(&object(bad), 4).unwrap_err();
            assert!(
                matches!(
                    err,
                    BoxError::Invalid {
                        code: "invalid_seats",
                        ..
                    }
                ),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn path_ids_are_numbers_in_range() {
        assert_eq!(path_id("7", "show_id").unwrap(), 7);
        for (raw, status) in [
            ("x", StatusCode::BAD_REQUEST),
            ("", StatusCode::BAD_REQUEST),
            ("0", StatusCode::UNPROCESSABLE_ENTITY),
            ("-4", StatusCode::UNPROCESSABLE_ENTITY),
            ("99999999999999999999", StatusCode::UNPROCESSABLE_ENTITY),
        ] {
            match path_id(raw, "show_id").unwrap_err() {
                BoxError::Invalid { status: got, .. } => assert_eq!(got, status, "{raw}"),
                other => panic!("{raw}: {other:?}"),
            }
        }
    }
}

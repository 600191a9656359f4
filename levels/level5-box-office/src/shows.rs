//! Shows and their seats: creating one (admin), listing them, the seat map.
//!
//! The admin token is compared in constant time ([`subtle`]): a plain `==`
//! stops at the first differing byte, and how long it took tells an
//! attacker, byte by byte, how much of their guess was right. Without a
//! configured token there is no admin API at all, rather than one guarded
//! by an empty or default secret.

use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::{PgPool, Row as _};
use subtle::ConstantTimeEq as _;

use crate::error::BoxError;
use crate::input;

/// Most grades a show may have.
pub const MAX_GRADES: usize = 20;
/// Most seats a show may have, over all grades.
pub const MAX_SEATS_PER_SHOW: i64 = 100_000;
/// The highest price of one seat, in won.
pub const MAX_PRICE: i64 = 1_000_000_000;

/// Checks an `Authorization: Bearer <token>` header against the configured
/// token, in constant time.
pub fn authorize(configured: Option<&str>, header: Option<&[u8]>) -> Result<(), BoxError> {
    let configured = configured.ok_or(BoxError::AdminDisabled)?;
    let given = header
        .and_then(|h| h.strip_prefix(b"Bearer "))
        .ok_or(BoxError::Unauthorized)?;
    if bool::from(given.ct_eq(configured.as_bytes())) {
        Ok(())
    } else {
        Err(BoxError::Unauthorized)
    }
}

/// One grade of a new show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grade {
    /// Its name (`vip`, `r`, `s`).
    pub grade: String,
    /// The price of each seat, in won.
    pub price: i64,
    /// How many seats.
    pub seats: i64,
}

/// A validated `POST /admin/shows` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewShow {
    /// The title.
    pub title: String,
    /// When it starts, RFC 3339.
    pub starts_at: String,
    /// The grades, whose seats are numbered from 1 in this order.
    pub grades: Vec<Grade>,
}

impl NewShow {
    /// Validates a body; every mistake is a 422 naming the field.
    pub fn parse(object: &Map<String, Value>) -> Result<Self, BoxError> {
        let title = input::text(object, "title", 200)?;
        let starts_at = input::text(object, "starts_at", 64)?;
        chrono::DateTime::parse_from_rfc3339(&starts_at).map_err(|e| {
            BoxError::invalid(
                "invalid_starts_at",
                format!("starts_at must be RFC 3339, like 2026-12-24T19:00:00+09:00: {e}"),
            )
        })?;
        let list = object
            .get("grades")
            .and_then(Value::as_array)
            .filter(|l| (1..=MAX_GRADES).contains(&l.len()))
            .ok_or_else(|| {
                BoxError::invalid(
                    "invalid_grades",
                    format!("grades must be a list of 1 to {MAX_GRADES} grades"),
                )
            })?;
        let mut grades = Vec::with_capacity(list.len());
        for raw in list {
            let object = raw
                .as_object()
                .ok_or_else(|| BoxError::invalid("invalid_grades", "each grade is an object"))?;
            grades.push(Grade {
                grade: input::text(object, "grade", 32)?,
                price: input::integer(object, "price", 1, MAX_PRICE)?,
                seats: input::integer(object, "seats", 1, MAX_SEATS_PER_SHOW)?,
            });
        }
        if grades.iter().map(|g| g.seats).sum::<i64>() > MAX_SEATS_PER_SHOW {
            return Err(BoxError::invalid(
                "invalid_grades",
                format!("a show has at most {MAX_SEATS_PER_SHOW} seats"),
            ));
        }
        Ok(Self {
            title,
            starts_at,
            grades,
        })
    }
}

/// The answer to creating a show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Created {
    /// The new show's id.
    pub show_id: i64,
    /// How many seats it has.
    pub seats: i64,
}

/// Creates the show and all its seats in one transaction.
pub async fn create(pool: &PgPool, show: &NewShow) -> Result<Created, BoxError> {
    let mut tx = pool.begin().await?;
    let show_id: i64 = sqlx::query_scalar(
        "INSERT INTO shows (title, starts_at) VALUES ($1, $2::timestamptz) RETURNING id",
    )
    .bind(&show.title)
    .bind(&show.starts_at)
    .fetch_one(&mut *tx)
    .await?;
    let mut first = 1i64;
    let (mut names, mut prices, mut firsts, mut counts) = (vec![], vec![], vec![], vec![]);
    for grade in &show.grades {
        names.push(grade.grade.clone());
        prices.push(grade.price);
        firsts.push(first);
        counts.push(grade.seats);
        first += grade.seats;
    }
    sqlx::query(
        "INSERT INTO seats (show_id, seat_no, grade, price) \
         SELECT $1, (g.first + i)::int, g.grade, g.price \
         FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) AS g(grade, price, first, n), \
              generate_series(0, g.n - 1) AS i",
    )
    .bind(show_id)
    .bind(&names)
    .bind(&prices)
    .bind(&firsts)
    .bind(&counts)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Created {
        show_id,
        seats: first - 1,
    })
}

/// 404 unless `show_id` exists.
pub async fn require(pool: &PgPool, show_id: i64) -> Result<(), BoxError> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM shows WHERE id = $1")
        .bind(show_id)
        .fetch_optional(pool)
        .await?;
    found.map(|_| ()).ok_or(BoxError::NotFound("show"))
}

/// PostgreSQL's spelling of a TIMESTAMPTZ as RFC 3339 in UTC.
const RFC3339: &str = "to_char(starts_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";

/// `GET /shows`: every show with its count of seats on sale.
pub async fn list(pool: &PgPool) -> Result<Value, BoxError> {
    let rows = sqlx::query(&format!(
        "SELECT s.id, s.title, {RFC3339} AS starts_at, \
                (SELECT count(*) FROM seats WHERE show_id = s.id AND hold_id IS NULL) AS available \
         FROM shows s ORDER BY s.id"
    ))
    .fetch_all(pool)
    .await?;
    let shows: Vec<Value> = rows
        .iter()
        .map(|row| {
            serde_json::json!({
                "show_id": row.get::<i64, _>("id"),
                "title": row.get::<String, _>("title"),
                "starts_at": row.get::<String, _>("starts_at"),
                "available": row.get::<i64, _>("available"),
            })
        })
        .collect();
    Ok(serde_json::json!({ "shows": shows }))
}

/// `GET /shows/{id}/seats`: each seat with its grade, price and status
/// (`available`, `held`, `sold`), read in one snapshot.
pub async fn seat_map(pool: &PgPool, show_id: i64) -> Result<Value, BoxError> {
    let rows = sqlx::query(
        "SELECT s.seat_no, s.grade, s.price, h.status FROM shows sh \
         LEFT JOIN seats s ON s.show_id = sh.id \
         LEFT JOIN holds h ON h.id = s.hold_id \
         WHERE sh.id = $1 ORDER BY s.seat_no",
    )
    .bind(show_id)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Err(BoxError::NotFound("show"));
    }
    let seats: Vec<Value> = rows
        .iter()
        .filter_map(|row| {
            let seat: i32 = row.get::<Option<i32>, _>("seat_no")?;
            let status = match row.get::<Option<String>, _>("status").as_deref() {
                None => "available",
                Some("paid") => "sold",
                Some(_) => "held",
            };
            Some(serde_json::json!({
                "seat": seat,
                "grade": row.get::<String, _>("grade"),
                "price": row.get::<i64, _>("price"),
                "status": status,
            }))
        })
        .collect();
    Ok(serde_json::json!({ "show_id": show_id, "seats": seats }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_must_match_exactly() {
        assert!(authorize(Some("s3cret"), Some(b"Bearer s3cret")).is_ok());
        for wrong in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret2",
            b"s3cret",
            b"Bearer ",
            b"bearer s3cret",
        ] {
            assert!(matches!(
                authorize(Some("s3cret"), Some(wrong)),
                Err(BoxError::Unauthorized)
            ));
        }
        assert!(matches!(
            authorize(Some("s3cret"), None),
            Err(BoxError::Unauthorized)
        ));
        assert!(matches!(
            authorize(None, Some(b"Bearer anything")),
            Err(BoxError::AdminDisabled)
        ));
    }
}

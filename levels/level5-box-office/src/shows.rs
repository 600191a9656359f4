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

/// A validated `PATCH /admin/shows/{id}` body: a new title, new prices
/// per grade, or both. Holds already made keep their amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowChange {
    /// The new title, if any.
    pub title: Option<String>,
    /// (grade, new price) pairs.
    pub prices: Vec<(String, i64)>,
}

impl ShowChange {
    /// Validates a body; every mistake is a 422 naming the field.
    pub fn parse(object: &Map<String, Value>) -> Result<Self, BoxError> {
        let title = match object.get("title") {
            None => None,
            Some(_) => Some(input::text(object, "title", 200)?),
        };
        let mut prices = Vec::new();
        if let Some(raw) = object.get("prices") {
            let map = raw
                .as_object()
                .filter(|m| m.len() <= MAX_GRADES)
                .ok_or_else(|| {
                    BoxError::invalid(
                        "invalid_price",
                        "prices must be an object like {\"vip\": 150000}",
                    )
                })?;
            for grade in map.keys() {
                let price = input::integer(&single(map, grade), "price", 1, MAX_PRICE)?;
                prices.push((grade.clone(), price));
            }
        }
        if title.is_none() && prices.is_empty() {
            return Err(BoxError::invalid(
                "invalid_request",
                "change the title, prices, or both",
            ));
        }
        Ok(Self { title, prices })
    }
}

/// `{"price": map[grade]}`, so one grade's price is checked like any price.
fn single(map: &Map<String, Value>, grade: &str) -> Map<String, Value> {
    let mut one = Map::new();
    one.insert("price".to_owned(), map[grade].clone());
    one
}

/// Applies `change` to `show_id` in one transaction: 404 for no such show,
/// 422 `unknown_grade` for a grade the show does not have.
pub async fn change(pool: &PgPool, show_id: i64, change: &ShowChange) -> Result<(), BoxError> {
    let mut tx = pool.begin().await?;
    let found: Option<i64> = sqlx::query_scalar(
        "UPDATE shows SET title = coalesce($2, title) WHERE id = $1 RETURNING id",
    )
    .bind(show_id)
    .bind(&change.title)
    .fetch_optional(&mut *tx)
    .await?;
    found.ok_or(BoxError::NotFound("show"))?;
    for (grade, price) in &change.prices {
        let updated = sqlx::query("UPDATE seats SET price = $3 WHERE show_id = $1 AND grade = $2")
            .bind(show_id)
            .bind(grade)
            .bind(price)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(BoxError::invalid(
                "unknown_grade",
                format!("this show has no grade {grade:?}"),
            ));
        }
    }
    tx.commit().await?;
    Ok(())
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

/// A seat map's static part: each seat with its grade and price, in seat
/// order; 404 if there is no such show.
pub async fn seat_layout(pool: &PgPool, show_id: i64) -> Result<Vec<(i32, String, i64)>, BoxError> {
    let rows: Vec<(Option<i32>, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT s.seat_no, s.grade, s.price FROM shows sh \
         LEFT JOIN seats s ON s.show_id = sh.id WHERE sh.id = $1 ORDER BY s.seat_no",
    )
    .bind(show_id)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Err(BoxError::NotFound("show"));
    }
    Ok(rows
        .into_iter()
        .filter_map(|(seat, grade, price)| Some((seat?, grade?, price?)))
        .collect())
}

/// A seat map's live part: the seats that are taken, `held` or `sold`.
pub async fn taken_seats(
    pool: &PgPool,
    show_id: i64,
) -> Result<Vec<(i32, &'static str)>, BoxError> {
    let rows: Vec<(i32, String)> = sqlx::query_as(
        "SELECT s.seat_no, h.status FROM seats s JOIN holds h ON h.id = s.hold_id \
         WHERE s.show_id = $1",
    )
    .bind(show_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(seat, status)| (seat, if status == "paid" { "sold" } else { "held" }))
        .collect())
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

//! `GET /users/{user_id}/reservations`: every hold a user made, whatever
//! became of it, with its seats.

use serde_json::Value;
use sqlx::{PgPool, Row as _};
use ticket_core::UserId;

use crate::error::BoxError;

/// The user's holds, oldest first.
pub async fn of_user(pool: &PgPool, user: UserId) -> Result<Value, BoxError> {
    let rows = sqlx::query(
        "SELECT h.id, h.show_id, h.amount, h.status, \
                array_agg(hs.seat_no ORDER BY hs.seat_no) AS seats \
         FROM holds h JOIN hold_seats hs ON hs.hold_id = h.id \
         WHERE h.user_id = $1 GROUP BY h.id ORDER BY h.id",
    )
    .bind(user.get())
    .fetch_all(pool)
    .await?;
    let reservations: Vec<Value> = rows
        .iter()
        .map(|row| {
            serde_json::json!({
                "hold_id": row.get::<i64, _>("id"),
                "show_id": row.get::<i64, _>("show_id"),
                "seats": row.get::<Vec<i32>, _>("seats"),
                "amount": row.get::<i64, _>("amount"),
                "status": row.get::<String, _>("status"),
            })
        })
        .collect();
    Ok(serde_json::json!({ "reservations": reservations }))
}

//! Deliberately wrong servers that speak the HTTP API, to prove the verdict
//! cannot be fooled: each is right by every count and wrong in one way.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sqlx::PgPool;

/// How the server is wrong.
#[derive(Debug, Clone, Copy)]
pub enum Wrong {
    /// Answers 201 to the first 100 buyers, but writes each row for another
    /// user id; stock and counts come out right.
    RowsForOthers,
    /// Sells the first 100 correctly, answers 500 to everyone after.
    FiveHundreds,
}

struct Shop {
    pool: PgPool,
    answered: AtomicI64,
    wrong: Wrong,
}

/// How many units the wrong servers sell before they stop.
const STOCK: i64 = 100;

/// Starts a wrong server on a free loopback port, on `database` (migrated
/// here), and returns its base URL. It lives as long as the test's runtime.
pub async fn start(database: &str, wrong: Wrong) -> String {
    let pool = load::rush::open_database(database).await.unwrap();
    ticket_core::db::migrate(&pool).await.unwrap();
    let shop = Arc::new(Shop {
        pool,
        answered: AtomicI64::new(0),
        wrong,
    });
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/tickets/{id}/orders", post(buy))
        .with_state(shop);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn buy(
    State(shop): State<Arc<Shop>>,
    Path(ticket): Path<i64>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let user = body["user_id"].as_i64().unwrap();
    let n = shop.answered.fetch_add(1, Ordering::SeqCst);
    if n >= STOCK {
        return match shop.wrong {
            Wrong::RowsForOthers => (
                StatusCode::CONFLICT,
                Json(json!({ "code": "sold_out", "status": 409 })),
            ),
            Wrong::FiveHundreds => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({ "code": "internal", "status": 500 })),
            ),
        };
    }
    let holder = match shop.wrong {
        // Inside the buyers' block of ids, but never one of the 1000 buyers.
        Wrong::RowsForOthers => user + 500_000,
        Wrong::FiveHundreds => user,
    };
    let mut tx = shop.pool.begin().await.unwrap();
    sqlx::query("UPDATE tickets SET stock = stock - 1, version = version + 1 WHERE id = $1")
        .bind(ticket)
        .execute(&mut *tx)
        .await
        .unwrap();
    let order: i64 = sqlx::query_scalar(
        "INSERT INTO ticket_orders (ticket_id, user_id) VALUES ($1, $2) RETURNING id",
    )
    .bind(ticket)
    .bind(holder)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    (
        StatusCode::CREATED,
        Json(json!({ "order_id": order, "ticket_id": ticket, "user_id": user })),
    )
}

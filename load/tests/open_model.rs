//! The open model (`--rate`): arrivals on a fixed schedule, and latency
//! corrected for coordinated omission, against a server that stalls on
//! purpose.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use common::fresh_database;
use load::sustain::{sustain, SustainPlan};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::Mutex;

/// How long the server stalls, once.
const STALL: Duration = Duration::from_secs(3);

/// An honest server that stalls everything for [`STALL`] once: its 100th
/// purchase holds the shop's one lock that long, and every request takes
/// that lock.
struct Stalling {
    pool: PgPool,
    served: AtomicU64,
    shop: Mutex<()>,
}

async fn start_stalling(database: &str) -> String {
    let pool = load::rush::open_database(database).await.unwrap();
    ticket_core::db::migrate(&pool).await.unwrap();
    let state = Arc::new(Stalling {
        pool,
        served: AtomicU64::new(0),
        shop: Mutex::new(()),
    });
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/tickets/{id}/orders", post(buy))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn buy(
    State(state): State<Arc<Stalling>>,
    Path(ticket): Path<i64>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let user = body["user_id"].as_i64().unwrap();
    let _shop = state.shop.lock().await;
    if state.served.fetch_add(1, Ordering::SeqCst) == 100 {
        tokio::time::sleep(STALL).await;
    }
    let order: i64 = sqlx::query_scalar(
        "WITH sold AS (UPDATE tickets SET stock = stock - 1 WHERE id = $1 AND stock > 0 RETURNING id) \
         INSERT INTO ticket_orders (ticket_id, user_id) SELECT id, $2 FROM sold RETURNING id",
    )
    .bind(ticket)
    .bind(user)
    .fetch_one(&state.pool)
    .await
    .unwrap();
    let answer = json!({ "order_id": order, "ticket_id": ticket, "user_id": user });
    (StatusCode::CREATED, Json(answer))
}

/// 50 arrivals a second for 8 s, at most 2 in flight, against a server that
/// stalls 3 s once. Only the 2 requests in flight during the stall waited
/// 3 s from their send, so the uncorrected p99 misses it; the ~150 visitors
/// due during the stall waited for a slot, and the corrected p99, from
/// their due time, shows it. Every arrival is sent, and every sale is
/// judged from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corrected_p99_shows_a_stall_the_uncorrected_one_misses() {
    let database = fresh_database().await;
    let server = start_stalling(&database).await;

    let report = sustain(&SustainPlan {
        targets: vec![server],
        database_url: database,
        ticket_id: 1,
        concurrency: 2,
        duration: Duration::from_secs(8),
        rate: Some(50.0),
        progress: false,
        idempotency_keys: true,
        settle: None,
        resetter: None,
        cpu: Default::default(),
    })
    .await
    .expect("the run finishes");

    assert_eq!(report.verdict, ticket_core::Verdict::Correct, "{report:#?}");
    assert_eq!(report.succeeded, 400, "every scheduled arrival was sent");
    assert_eq!(report.rate, Some(50.0));
    let stall_ms = STALL.as_secs_f64() * 1000.0;
    let corrected = report.latency_ms;
    let uncorrected = report
        .latency_uncorrected_ms
        .expect("the open model keeps both");
    assert!(
        corrected.p99 >= stall_ms / 2.0,
        "corrected p99 {} ms hides a {stall_ms} ms stall",
        corrected.p99
    );
    assert!(
        uncorrected.p99 < stall_ms / 3.0,
        "uncorrected p99 {} ms: more than the 2 requests in flight waited",
        uncorrected.p99
    );
    assert!(uncorrected.max >= stall_ms, "{uncorrected:?}");
}

/// `load run --duration 2s --rate 40` through the command line: durations
/// read like k6's, the run is open-model, and the JSON says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_run_with_a_rate_and_a_k6_style_duration_reports_both_latencies() {
    let database = fresh_database().await;

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_load"))
        .args([
            "run",
            "--level",
            "2",
            "--strategy",
            "atomic",
            "--servers",
            "1",
        ])
        .args(["--duration", "2s", "--rate", "40", "--concurrency", "4"])
        .args(["--database-url", &database, "--json"])
        .env_remove("REDIS_URL")
        .output()
        .await
        .expect("the load binary runs");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
    assert_eq!(report["mode"], "sustained", "{report}");
    assert_eq!(report["rate"], 40.0, "{report}");
    assert_eq!(report["succeeded"], 80, "{report}");
    assert!(
        report["latency_uncorrected_ms"]["p99"].is_number(),
        "{report}"
    );
}

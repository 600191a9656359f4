//! How the load tool's buyers and resets behave against a server, seen from
//! the server's side: what a retrying buyer sends, and which path puts a
//! ticket on sale again.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::{fresh_database, servers, shared_redis_url, stop};
use load::levels::SettleArgs;
use load::rush::{rush, Reset, RushPlan};
use load::servers::{urls, ServerSpec};
use serde_json::{json, Value};
use sqlx::PgPool;
use ticket_core::{db, TicketId, Verdict};

/// An honest server whose every sale's first answer is lost: it sells, then
/// answers 503 (as Level 4 does when Redis's reply times out after the
/// script ran). A retry carrying the sale's `Idempotency-Key` is answered
/// the sale's 201; any other retry of the same person is `already_purchased`,
/// as the real servers answer.
struct Forgetful {
    pool: PgPool,
    /// Every key each user sent, attempt by attempt (`None`: no key).
    keys: Mutex<HashMap<i64, Vec<Option<String>>>>,
    /// The order and the key of every sale made.
    sold: Mutex<HashMap<i64, (i64, Option<String>)>>,
}

async fn start_forgetful(database: &str) -> (String, Arc<Forgetful>) {
    let pool = load::rush::open_database(database).await.unwrap();
    db::migrate(&pool).await.unwrap();
    let shop = Arc::new(Forgetful {
        pool,
        keys: Mutex::default(),
        sold: Mutex::default(),
    });
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/tickets/{id}/orders", post(forgetful_buy))
        .with_state(shop.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, shop)
}

async fn forgetful_buy(
    State(shop): State<Arc<Forgetful>>,
    Path(ticket): Path<i64>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let user = body["user_id"].as_i64().unwrap();
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    shop.keys
        .lock()
        .unwrap()
        .entry(user)
        .or_default()
        .push(key.clone());
    let earlier = shop.sold.lock().unwrap().get(&user).cloned();
    if let Some((order, sold_key)) = earlier {
        return if key.is_some() && key == sold_key {
            let answer = json!({ "order_id": order, "ticket_id": ticket, "user_id": user });
            (StatusCode::CREATED, Json(answer))
        } else {
            let problem = json!({ "code": "already_purchased", "status": 409 });
            (StatusCode::CONFLICT, Json(problem))
        };
    }
    let mut tx = shop.pool.begin().await.unwrap();
    let sold = sqlx::query("UPDATE tickets SET stock = stock - 1 WHERE id = $1 AND stock > 0")
        .bind(ticket)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    if sold == 0 {
        let problem = json!({ "code": "sold_out", "status": 409 });
        return (StatusCode::CONFLICT, Json(problem));
    }
    let order: i64 = sqlx::query_scalar(
        "INSERT INTO ticket_orders (ticket_id, user_id) VALUES ($1, $2) RETURNING id",
    )
    .bind(ticket)
    .bind(user)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    shop.sold.lock().unwrap().insert(user, (order, key));
    // The sale is made; its answer is lost.
    let problem = json!({ "code": "busy", "status": 503, "retry_after_ms": 1 });
    (StatusCode::SERVICE_UNAVAILABLE, Json(problem))
}

/// A buyer sends one `Idempotency-Key` on every attempt, the same each time
/// and different from every other buyer's: a sale whose answer was lost is
/// replayed as its 201 on the retry, and the run is judged correct, not
/// `inconsistent` with 10 buyers told `already_purchased` for tickets they
/// hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_retries_with_one_idempotency_key_so_a_lost_answer_is_replayed() {
    let database = fresh_database().await;
    let (server, shop) = start_forgetful(&database).await;

    let report = rush(&RushPlan {
        buyers: 40,
        tickets: 10,
        ..RushPlan::new(vec![server], &database)
    })
    .await
    .expect("the rush runs");

    assert_eq!(report.verdict, Verdict::Correct, "{report:#?}");
    assert_eq!(report.succeeded, 10);
    assert_eq!(report.already_purchased, 0);
    let keys = shop.keys.lock().unwrap();
    let mut firsts = std::collections::HashSet::new();
    for (user, sent) in keys.iter() {
        let first = sent[0].as_ref().expect("every attempt carries a key");
        assert!(
            sent.iter().all(|k| k.as_ref() == Some(first)),
            "user {user} sent {sent:?}"
        );
        assert!(firsts.insert(first.clone()), "two buyers share {first}");
    }
    let retried = keys.values().filter(|sent| sent.len() >= 2).count();
    assert_eq!(retried, 10, "every buyer who was sold retried once");
}

/// The rush resets the ticket through the plan's reset step when it has one,
/// once, before the buyers start, and not through PostgreSQL alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rush_resets_through_the_levels_own_reset() {
    let (servers, database) = servers(&ServerSpec::new(2, "atomic"), 1).await;
    let calls = Arc::new(AtomicU32::new(0));
    let counted = {
        let calls = calls.clone();
        let database = database.clone();
        Reset(Arc::new(move |name, stock| {
            calls.fetch_add(1, Ordering::SeqCst);
            let database = database.clone();
            Box::pin(async move {
                let pool = load::rush::open_database(&database).await?;
                let ticket = TicketId::parse(1)?;
                db::reset_ticket(&pool, ticket, name, stock).await?;
                // A mark only this step leaves: the name it was given, upper-cased.
                sqlx::query("UPDATE tickets SET name = upper(name) WHERE id = 1")
                    .execute(&pool)
                    .await?;
                pool.close().await;
                Ok(())
            })
        }))
    };

    let report = rush(&RushPlan {
        buyers: 20,
        tickets: 5,
        resetter: Some(counted),
        ..RushPlan::new(urls(&servers), &database)
    })
    .await
    .expect("the rush runs");

    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(report.verdict, Verdict::Correct, "{report:#?}");
    let pool = load::rush::open_database(&database).await.unwrap();
    let name: String = sqlx::query_scalar("SELECT name FROM tickets WHERE id = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name, "RUSH CONCERT");
    stop(servers).await;
}

/// Level 4's reset step, as `load run` binds it, is Level 4's own
/// `SaleStore::reset_sale`: it fences Redis and records the fence as the
/// ticket's epoch, above the sale Redis was selling. A reset in PostgreSQL
/// alone leaves the epoch where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level4_is_reset_by_its_own_fenced_reset() {
    let (servers, database) = servers(&ServerSpec::new(4, "redis-lua"), 1).await;
    let redis = shared_redis_url().await;
    let info = load::levels::level(4).unwrap();
    let args = SettleArgs {
        database_url: database.clone(),
        redis_url: Some(redis.clone()),
        ticket_id: 1,
    };
    let (settle, reset) = load::run::level_steps(&info, &args);
    let report = rush(&RushPlan {
        buyers: 20,
        tickets: 5,
        settle,
        ..RushPlan::new(urls(&servers), &database)
    })
    .await
    .expect("the rush runs");
    assert_eq!(report.verdict, Verdict::Correct, "{report:#?}");
    // No server left to load a new sale: what the reset wrote stays.
    stop(servers).await;
    let pool = load::rush::open_database(&database).await.unwrap();
    let epoch_of = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT sale_epoch FROM tickets WHERE id = 1")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let selling = epoch_of(pool.clone()).await;

    let reset = reset.expect("Level 4 has its own reset");
    (reset.0)("Rush concert", 5).await.expect("the reset runs");

    let fenced = epoch_of(pool.clone()).await;
    assert!(fenced > selling, "epoch {selling} -> {fenced}");
    let store = level4::store::SaleStore::connect(&database, &redis)
        .await
        .unwrap();
    let ticket = TicketId::parse(1).unwrap();
    assert!(
        !store.redis_serving(ticket).await.unwrap(),
        "Redis no longer sells the old sale"
    );
}

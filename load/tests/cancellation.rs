//! Cancellation through HTTP, verified from the database: a cancel restocks
//! once, a second cancel changes nothing, and cancels racing a rush never
//! oversell, for every correct strategy.

mod common;

use common::{servers, stop};
use futures::future::join_all;
use load::rush::{rush, RushPlan};
use load::servers::{urls, ServerSpec};
use reqwest::StatusCode;
use serde_json::{json, Value};
use ticket_core::{db, TicketId};

async fn cancel(
    client: &reqwest::Client,
    base: &str,
    ticket: i64,
    order: i64,
    user: i64,
) -> (StatusCode, Value) {
    let response = client
        .delete(format!("{base}/tickets/{ticket}/orders/{order}"))
        .json(&json!({ "user_id": user }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// Cancels like a person does: a 503 busy (the ticket's lock or row was
/// held too long) is tried again after the server's hint, a bounded number
/// of times. Returns the final status.
async fn cancel_until_answered(
    client: &reqwest::Client,
    base: &str,
    ticket: i64,
    order: i64,
    user: i64,
) -> StatusCode {
    for _ in 0..50 {
        let (status, body) = cancel(client, base, ticket, order, user).await;
        if status != StatusCode::SERVICE_UNAVAILABLE {
            return status;
        }
        let pause = body["retry_after_ms"].as_u64().unwrap_or(20);
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    }
    StatusCode::SERVICE_UNAVAILABLE
}

/// Buy, cancel (stock back up by one), cancel again (same answer, no second
/// restock), another user's cancel (403), an unknown order (404), and the
/// cancelled buyer buys again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_restocks_once_and_the_buyer_may_buy_again() {
    let (servers, database) = servers(&ServerSpec::new(2, "atomic"), 2).await;
    let pool = load::rush::open_database(&database).await.unwrap();
    let ticket = TicketId::parse(3).unwrap();
    db::reset_ticket(&pool, ticket, "Cancellable", 10)
        .await
        .unwrap();
    let (a, b) = (servers[0].url(), servers[1].url());
    let client = reqwest::Client::new();
    let order: Value = client
        .post(format!("{a}/tickets/3/orders"))
        .json(&json!({"user_id": 42}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let order_id = order["order_id"].as_i64().unwrap();

    let (status, forbidden) = cancel(&client, &b, 3, order_id, 43).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{forbidden}");
    assert_eq!(
        db::truth(&pool, ticket).await.unwrap().stock,
        9,
        "a refused cancel changes nothing"
    );

    let (status, first) = cancel(&client, &a, 3, order_id, 42).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(
        first,
        json!({"order_id": order_id, "ticket_id": 3, "user_id": 42, "status": "cancelled"})
    );
    let truth = db::truth(&pool, ticket).await.unwrap();
    assert_eq!((truth.orders, truth.stock), (0, 10));

    let (status, second) = cancel(&client, &b, 3, order_id, 42).await;
    assert_eq!(
        (status, &second),
        (StatusCode::OK, &first),
        "a second cancel is the same answer"
    );
    let truth = db::truth(&pool, ticket).await.unwrap();
    assert_eq!(
        (truth.orders, truth.stock),
        (0, 10),
        "and no second restock"
    );

    let (status, missing) = cancel(&client, &a, 3, 999_999, 42).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");

    let again = client
        .post(format!("{b}/tickets/3/orders"))
        .json(&json!({"user_id": 42}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    let truth = db::truth(&pool, ticket).await.unwrap();
    assert_eq!((truth.orders, truth.stock), (1, 9));
    stop(servers).await;
}

/// 100 tickets sold; then 50 buyers cancel while 500 new buyers rush, over
/// two servers: afterwards orders + stock == 100 exactly, never more than
/// 100 orders, every cancel answered 200 (after retrying a 503 busy, as a
/// person would), for every correct strategy.
///
/// The cancels and the new buyers are interleaved in time (a cancel every
/// 3 ms, ten new buyers with each), and every sale holds a 5 ms race window
/// between its read and its write, so restocks land in the middle of sales:
/// a strategy that let a sale overwrite a restock would end below 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_racing_a_rush_never_oversell() {
    for (level, strategy) in common::correct_db_strategies() {
        let spec = ServerSpec::new(level, strategy).think_time_ms(5);
        let (servers, database) = servers(&spec, 2).await;
        let targets = urls(&servers);
        let pool = load::rush::open_database(&database).await.unwrap();
        let ticket = TicketId::parse(1).unwrap();
        let sold = rush(&RushPlan {
            buyers: 100,
            ..RushPlan::new(targets.clone(), &database)
        })
        .await
        .unwrap();
        assert_eq!(sold.db_orders, 100, "level {level} {strategy}: {sold:?}");
        let orders: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT id, user_id FROM ticket_orders WHERE ticket_id = 1 ORDER BY id LIMIT 50",
        )
        .fetch_all(&pool)
        .await
        .unwrap();

        let client = reqwest::Client::new();
        let step = std::time::Duration::from_millis(3);
        let cancels = join_all(orders.iter().enumerate().map(|(i, &(order, user))| {
            let client = client.clone();
            let base = targets[i % targets.len()].clone();
            async move {
                tokio::time::sleep(step * i as u32).await;
                cancel_until_answered(&client, &base, 1, order, user).await
            }
        }));
        let newcomers = join_all((0..500).map(|j| {
            let client = client.clone();
            let base = targets[j % targets.len()].clone();
            async move {
                tokio::time::sleep(step * (j / 10) as u32).await;
                client
                    .post(format!("{base}/tickets/1/orders"))
                    .json(&json!({ "user_id": 5_000_000 + j as i64 }))
                    .send()
                    .await
                    .map(|r| r.status())
                    .unwrap_or(StatusCode::BAD_GATEWAY)
            }
        }));
        let (cancelled, bought) = tokio::join!(cancels, newcomers);

        let what = format!("level {level} {strategy}");
        assert!(
            cancelled.iter().all(|s| *s == StatusCode::OK),
            "{what}: {cancelled:?}"
        );
        assert!(
            bought.iter().all(|s| s.as_u16() < 500 || s.as_u16() == 503),
            "{what}: {bought:?}"
        );
        let created = bought.iter().filter(|s| **s == StatusCode::CREATED).count() as i64;
        let truth = db::truth(&pool, ticket).await.unwrap();
        assert!(
            truth.orders <= 100,
            "{what}: oversold, {} orders",
            truth.orders
        );
        assert_eq!(
            truth.orders + i64::from(truth.stock),
            100,
            "{what}: {truth:?}"
        );
        assert_eq!(truth.duplicate_orders(), 0, "{what}");
        assert_eq!(truth.orders, 50 + created, "{what}: every 201 is a row");
        stop(servers).await;
    }
}

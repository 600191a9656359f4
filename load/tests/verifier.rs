//! The verifier on crafted database states: rows written by hand, then read
//! back with `db::truth` and judged. The judge must not trust the schema.

mod common;

use common::fresh_database;
use sqlx::PgPool;
use ticket_core::verify::judge;
use ticket_core::{db, TicketId, Verdict};

async fn crafted(stock: i32, orders: &[i64], drop_unique: bool) -> (PgPool, TicketId) {
    let pool = load::rush::open_database(&fresh_database().await)
        .await
        .unwrap();
    db::migrate(&pool).await.unwrap();
    let ticket = TicketId::parse(7).unwrap();
    db::reset_ticket(&pool, ticket, "Crafted", 100)
        .await
        .unwrap();
    if drop_unique {
        sqlx::query(
            "ALTER TABLE ticket_orders DROP CONSTRAINT ticket_orders_ticket_id_user_id_key",
        )
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query("UPDATE tickets SET stock = $1 WHERE id = 7")
        .bind(stock)
        .execute(&pool)
        .await
        .unwrap();
    for user in orders {
        sqlx::query("INSERT INTO ticket_orders (ticket_id, user_id) VALUES (7, $1)")
            .bind(user)
            .execute(&pool)
            .await
            .unwrap();
    }
    (pool, ticket)
}

fn users(range: std::ops::Range<i64>) -> Vec<i64> {
    range.collect()
}

#[tokio::test]
async fn exactly_right_is_correct() {
    let (pool, ticket) = crafted(0, &users(1..101), false).await;
    let truth = db::truth(&pool, ticket).await.unwrap();
    assert_eq!(judge(100, 1000, 100, &truth).verdict, Verdict::Correct);
}

#[tokio::test]
async fn more_orders_than_tickets_is_oversold() {
    // The lost-update picture: 130 orders while stock still reads 12.
    let (pool, ticket) = crafted(12, &users(1..131), false).await;
    let truth = db::truth(&pool, ticket).await.unwrap();
    let judgement = judge(100, 1000, 130, &truth);
    assert_eq!(judgement.verdict, Verdict::Oversold);
    assert_eq!(judgement.oversold, 30);
}

#[tokio::test]
async fn fewer_orders_than_buyers_and_tickets_is_undersold() {
    let (pool, ticket) = crafted(20, &users(1..81), false).await;
    let truth = db::truth(&pool, ticket).await.unwrap();
    assert_eq!(judge(100, 1000, 80, &truth).verdict, Verdict::Undersold);
}

#[tokio::test]
async fn a_duplicate_ticket_user_pair_is_caught_even_without_the_constraint() {
    let mut orders = users(1..100);
    orders.push(1);
    let (pool, ticket) = crafted(0, &orders, true).await;
    let truth = db::truth(&pool, ticket).await.unwrap();
    let judgement = judge(100, 1000, 100, &truth);
    assert_eq!(judgement.verdict, Verdict::Inconsistent);
    assert_eq!(judgement.duplicate_orders, 1);
}

#[tokio::test]
async fn http_successes_that_disagree_with_the_database_are_inconsistent() {
    let (pool, ticket) = crafted(0, &users(1..101), false).await;
    let truth = db::truth(&pool, ticket).await.unwrap();
    let judgement = judge(100, 1000, 97, &truth);
    assert_eq!(judgement.verdict, Verdict::Inconsistent);
    assert!(judgement
        .problems
        .iter()
        .any(|p| p.contains("201 97 times")));
}

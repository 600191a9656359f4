//! Resetting a Level 4 sale while buyers buy: a 201 is kept, whatever the
//! moment of the reset; and the tools that repair drift never undo a reset.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{buy, ticket, two_stores};
use level4::persist::{PersistOptions, Worker};
use level4::store::Decision;
use ticket_core::db;
use ticket_core::metrics::Metrics;

const UNITS: i32 = 40;
const RESETS: u64 = 5;

/// Eight buyers on two servers buy without pause while the ticket is reset
/// five times, each time in the middle of a sale. Every buyer who asked
/// after the last reset and was answered 201 holds that order's row once
/// the stream is drained; every row is some buyer's 201; and no answered
/// sale ever lands in the dead letters: the old sales' unpersisted orders
/// were all decided before their reset, which voids them with the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_201_survives_a_reset_in_the_middle_of_the_rush() {
    let (a, b) = two_stores(UNITS).await;
    let worker = Worker::new(a.clone(), PersistOptions::new("reset"), Metrics::new()).unwrap();
    let stats = worker.stats();
    let worker = worker.spawn();

    let resets_done = Arc::new(AtomicU64::new(0));
    let sold = Arc::new(AtomicU64::new(0));
    let next_user = Arc::new(AtomicI64::new(1));
    // (user → order id, resets completed before the request was sent)
    let answered = Arc::new(Mutex::new(HashMap::<i64, (i64, u64)>::new()));
    let buyers: Vec<_> = (0..8)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (resets_done, sold, next_user, answered) = (
                resets_done.clone(),
                sold.clone(),
                next_user.clone(),
                answered.clone(),
            );
            tokio::spawn(async move {
                let mut after_last = 0;
                while after_last < 30 {
                    let before = resets_done.load(Ordering::SeqCst);
                    let buyer = next_user.fetch_add(1, Ordering::SeqCst);
                    if let Decision::Sold(order) = buy(&store, buyer).await {
                        sold.fetch_add(1, Ordering::SeqCst);
                        answered.lock().unwrap().insert(buyer, (order, before));
                    }
                    if before == RESETS {
                        after_last += 1;
                    }
                }
            })
        })
        .collect();

    for reset in 0..RESETS {
        // Half of the sale sold: the reset lands while it is selling.
        while sold.load(Ordering::SeqCst) < (reset + 1) * (UNITS as u64 / 2) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        a.reset_sale(ticket(), "Reset", UNITS).await.unwrap();
        resets_done.fetch_add(1, Ordering::SeqCst);
    }
    for buyer in buyers {
        buyer.await.unwrap();
    }
    level4::drain::wait_with(&a, ticket(), Duration::from_secs(60))
        .await
        .unwrap();
    worker.stop().await;

    let dead: u64 = a
        .redis()
        .query(redis::cmd("XLEN").arg(a.keys().dead_letters()))
        .await
        .unwrap();
    assert_eq!(
        dead,
        0,
        "answered sales were dead-lettered: {:?}",
        stats.snapshot()
    );
    assert_eq!(stats.snapshot().dead_lettered, 0);

    let rows: HashMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>(
        "SELECT user_id, id FROM ticket_orders WHERE ticket_id = 1",
    )
    .fetch_all(a.pool())
    .await
    .unwrap()
    .into_iter()
    .collect();
    let answered = answered.lock().unwrap().clone();
    let after_last: Vec<(i64, i64)> = answered
        .iter()
        .filter(|(_, &(_, before))| before == RESETS)
        .map(|(&user, &(order, _))| (user, order))
        .collect();
    assert!(!after_last.is_empty(), "nobody bought after the last reset");
    for (user, order) in &after_last {
        assert_eq!(
            rows.get(user),
            Some(order),
            "user {user} was answered 201 (order {order}) after the last reset and holds no such row"
        );
    }
    for (user, id) in &rows {
        assert_eq!(
            answered.get(user).map(|&(order, _)| order),
            Some(*id),
            "row of user {user} (order {id}) is nobody's 201"
        );
    }
    assert!(rows.len() <= UNITS as usize, "{} rows", rows.len());
    let truth = db::truth(a.pool(), ticket()).await.unwrap();
    assert_eq!(i64::from(truth.stock), i64::from(UNITS) - rows.len() as i64);
}

/// `reconcile --repair` recomputes PostgreSQL's stock under the ticket's row
/// lock. A reset that committed after reconcile read the sale (and before
/// the repair) has set `version = 0`, "put on sale, not loaded since": the
/// repair must leave it so, or the reset is lost and Redis goes on serving
/// the old sale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_repair_never_undoes_a_reset_it_did_not_see() {
    let (a, _) = two_stores(10).await;
    let loaded = a.ensure_loaded(ticket()).await.unwrap();
    db::reset_ticket(a.pool(), ticket(), "Again", 10)
        .await
        .unwrap();

    let repaired = level4::reconcile::repair_database_stock(&a, ticket(), loaded.epoch)
        .await
        .unwrap();

    assert!(!repaired, "the repair overwrote a reset");
    let version: i64 = sqlx::query_scalar("SELECT version FROM tickets WHERE id = 1")
        .fetch_one(a.pool())
        .await
        .unwrap();
    assert_eq!(version, 0, "the reset must still read as not loaded");
    let again = a.ensure_loaded(ticket()).await.unwrap();
    assert!(again.started && again.epoch > loaded.epoch, "{again:?}");
}

/// A reset that fenced Redis and then rolled back (its process died before
/// COMMIT) leaves a ticket that sells nothing; the next load, under the
/// ticket's row lock, sees PostgreSQL unchanged, lifts the fence, and the
/// old sale goes on where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_that_rolled_back_leaves_the_sale_selling() {
    let (a, _) = two_stores(10).await;
    let loaded = a.ensure_loaded(ticket()).await.unwrap();
    assert!(matches!(buy(&a, 1).await, Decision::Sold(_)));
    // What a reset leaves when it dies between its fence and its COMMIT.
    let _: i64 = a
        .redis()
        .query(
            redis::cmd("HSET")
                .arg(a.keys().sale(ticket()))
                .arg("fence")
                .arg(loaded.epoch + 1_000),
        )
        .await
        .unwrap();
    assert_eq!(
        a.decide(ticket(), common::user(2)).await.unwrap(),
        Decision::NotLoaded
    );

    assert!(matches!(buy(&a, 2).await, Decision::Sold(_)));
    let sale = a.status(ticket()).await.unwrap().redis.unwrap();
    assert_eq!((sale.epoch, sale.stock, sale.buyers), (loaded.epoch, 8, 2));
}

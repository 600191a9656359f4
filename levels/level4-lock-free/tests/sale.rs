//! The pieces of a Level 4 sale on their own, against real Redis and
//! PostgreSQL: the once-per-sale load under a crowd of loaders, the purchase
//! script's order of checks, and its order ids.

mod common;

use std::time::Duration;

use common::{ticket, two_stores, user};
use level4::store::Decision;

/// Forty loaders on two servers at the same instant: one starts the sale
/// and writes it into Redis; the others find it there. A load after sales
/// have been made changes nothing: the sales survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_loaders_loads_the_sale_exactly_once() {
    let (a, b) = two_stores(10).await;
    let loads = futures::future::join_all((0..40).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move { store.ensure_loaded(ticket()).await.unwrap() }
    }))
    .await;
    assert_eq!(loads.iter().filter(|l| l.started).count(), 1, "{loads:?}");
    assert_eq!(
        loads.iter().filter(|l| l.wrote_redis).count(),
        1,
        "{loads:?}"
    );
    let epoch = loads[0].epoch;
    assert!(loads.iter().all(|l| l.epoch == epoch));

    for id in 1..=3 {
        assert!(matches!(
            a.decide(ticket(), user(id)).await.unwrap(),
            Decision::Sold(_)
        ));
    }
    let again = b.ensure_loaded(ticket()).await.unwrap();
    assert!(!again.started && !again.wrote_redis, "{again:?}");
    let status = a.status(ticket()).await.unwrap();
    let sale = status.redis.unwrap();
    assert_eq!((sale.epoch, sale.stock, sale.buyers), (epoch, 7, 3));
}

/// The buyer check comes before the stock check: with one unit left, the
/// same buyer clicking twice at once gets one unit and one
/// `already_purchased`, and the unit is spent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_click_never_spends_a_unit() {
    let (a, b) = two_stores(2).await;
    a.ensure_loaded(ticket()).await.unwrap();
    assert!(matches!(
        a.decide(ticket(), user(1)).await.unwrap(),
        Decision::Sold(_)
    ));
    let clicks = futures::future::join_all((0..10).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move { store.decide(ticket(), user(2)).await.unwrap() }
    }))
    .await;
    let sold: Vec<i64> = clicks
        .iter()
        .filter_map(|d| match d {
            Decision::Sold(id) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(sold.len(), 1, "{clicks:?}");
    assert!(clicks
        .iter()
        .all(|d| matches!(d, Decision::Sold(_)) || *d == Decision::AlreadyPurchased(sold[0])));
    // Sold out now; the buyers who hold a unit are still told so.
    assert_eq!(
        a.decide(ticket(), user(3)).await.unwrap(),
        Decision::SoldOut
    );
    assert!(matches!(
        b.decide(ticket(), user(1)).await.unwrap(),
        Decision::AlreadyPurchased(_)
    ));
    let sale = a.status(ticket()).await.unwrap().redis.unwrap();
    assert_eq!((sale.stock, sale.buyers), (0, 2));
}

/// Order ids are the clock in microseconds or more: they grow, never
/// repeat, and sit far above any id PostgreSQL's BIGSERIAL hands the other
/// levels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_ids_grow_and_stay_clear_of_the_bigserial_range() {
    let (a, b) = two_stores(1_000).await;
    a.ensure_loaded(ticket()).await.unwrap();
    let ids = futures::future::join_all((1..=200).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            match store.decide(ticket(), user(i)).await.unwrap() {
                Decision::Sold(id) => id,
                other => panic!("{other:?}"),
            }
        }
    }))
    .await;
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 200, "no id twice");
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    assert!(sorted[0] > 1_000_000_000_000_000, "{}", sorted[0]);
    assert!(sorted[199] <= now_us + 1_000, "ids follow the clock");
}

/// A worker capped at 400 orders per second takes about half a second for
/// 200 orders, however fast PostgreSQL could take them: the database sees a
/// steady rate, and the backlog waits in the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_capped_worker_persists_at_its_pace() {
    use level4::persist::{PersistOptions, Worker};
    let (a, _) = two_stores(1_000).await;
    a.ensure_loaded(ticket()).await.unwrap();
    for i in 1..=200 {
        a.decide(ticket(), user(i)).await.unwrap();
    }
    let started = std::time::Instant::now();
    let worker = Worker::new(
        a.clone(),
        PersistOptions {
            max_rate: 400,
            batch_size: 50,
            ..PersistOptions::new("capped")
        },
        ticket_core::metrics::Metrics::new(),
    )
    .unwrap();
    let stats = worker.stats();
    let worker = worker.spawn();
    let status = level4::drain::wait_with(&a, ticket(), Duration::from_secs(30))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(status.database.unwrap().orders, 200);
    assert!(
        took >= Duration::from_millis(350),
        "200 orders at 400/s took only {took:?}"
    );
    // The worker counts a batch after its commit and acknowledgement, so
    // the rows can be there a moment before the count: stop it (it finishes
    // its batch first), then read.
    worker.stop().await;
    assert_eq!(stats.snapshot().persisted, 200);
}

/// A status that says "drained" holds every row of what was drained: a
/// batch that commits and is acknowledged while the status is being read
/// (here: exactly between its reads) is either still in the queue the
/// status reports, or among the rows it counts. Never "drained" beside a
/// row count from before that batch, which is what let the load tool's
/// drain return with 150 of 200 orders in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_status_counts_every_row_drained_while_it_was_read() {
    use level4::persist::{PersistOptions, Worker};
    let (a, _) = two_stores(10).await;
    a.ensure_loaded(ticket()).await.unwrap();
    for i in 1..=3 {
        a.decide(ticket(), user(i)).await.unwrap();
    }
    let worker = Worker::new(
        a.clone(),
        PersistOptions::new("between"),
        ticket_core::metrics::Metrics::new(),
    )
    .unwrap();
    let stats = worker.stats();
    let status = a
        .status_between(ticket(), async {
            // The worker persists and acknowledges all three sales, start
            // to finish, in the middle of the status read.
            let worker = worker.spawn();
            while stats.snapshot().persisted < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            worker.stop().await;
        })
        .await
        .unwrap();
    let orders = status.database.unwrap().orders;
    assert!(
        !status.settled() || orders == 3,
        "drained, yet only {orders} of 3 orders: {status:?}"
    );
    let drained = level4::drain::wait_with(&a, ticket(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(drained.database.unwrap().orders, 3);
}

/// A sale the worker dead-lettered counts as a dead letter, even while its
/// entry is still on the stream: the worker acknowledges the entry when it
/// writes the dead letter, but the entry stays on the stream until
/// maintenance trims it. Here no worker runs, so nothing is ever trimmed:
/// the state that a reconcile within that second sees, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_sale_still_on_the_stream_is_not_in_flight() {
    let (a, _b) = two_stores(10).await;
    a.ensure_loaded(ticket()).await.unwrap();
    let mut order = 0;
    for id in 1..=3 {
        match a.decide(ticket(), user(id)).await.unwrap() {
            Decision::Sold(id) => order = id,
            other => panic!("{other:?}"),
        }
    }
    let epoch = a.redis_epoch(ticket()).await.unwrap().expect("loaded");
    // What the worker writes for an entry PostgreSQL keeps refusing (user 3).
    let _: String = a
        .redis()
        .query(
            redis::cmd("XADD")
                .arg(a.keys().dead_letters())
                .arg("*")
                .arg("order")
                .arg(order)
                .arg("ticket")
                .arg(ticket().get())
                .arg("user")
                .arg(3)
                .arg("epoch")
                .arg(epoch)
                .arg("reason")
                .arg("refused by the test"),
        )
        .await
        .unwrap();

    let report = &level4::reconcile::reconcile(&a, &[ticket()], false)
        .await
        .unwrap()[0];
    assert_eq!((report.in_flight, report.dead_letters), (2, 1), "{report}");
    assert!(
        report
            .drift
            .iter()
            .any(|d| d.kind == level4::reconcile::DriftKind::DeadLettered),
        "{report}"
    );
}

//! The persistence worker when its holders keep stopping: entries that
//! were delivered too often are tried one by one before any is given up,
//! and the count of deliveries includes a restarted worker's own entries.

mod common;

use std::time::Duration;

use common::{ticket, two_stores, user};
use level4::keys::GROUP;
use level4::persist::{PersistOptions, Worker};
use level4::store::{Decision, SaleStore};
use ticket_core::metrics::Metrics;

/// Sells to `buyers` users and hands every entry to the consumer `holder`,
/// as if delivered `times` times: the state a worker that kept stopping
/// mid-batch leaves behind. Returns the entry ids.
async fn entries_delivered(
    store: &SaleStore,
    buyers: i64,
    holder: &str,
    times: u64,
) -> Vec<String> {
    store.ensure_loaded(ticket()).await.unwrap();
    for buyer in 1..=buyers {
        assert!(matches!(
            store.decide(ticket(), user(buyer)).await.unwrap(),
            Decision::Sold(_)
        ));
    }
    let orders = store.keys().orders();
    let _: () = store
        .redis()
        .query(
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&orders)
                .arg(GROUP)
                .arg("0"),
        )
        .await
        .unwrap();
    let read: redis::streams::StreamReadReply = store
        .redis()
        .query(
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(holder)
                .arg("COUNT")
                .arg(1000)
                .arg("STREAMS")
                .arg(&orders)
                .arg(">"),
        )
        .await
        .unwrap();
    let ids: Vec<String> = read.keys[0].ids.iter().map(|e| e.id.clone()).collect();
    let _: Vec<String> = store
        .redis()
        .query(
            redis::cmd("XCLAIM")
                .arg(&orders)
                .arg(GROUP)
                .arg(holder)
                .arg(0)
                .arg(&ids)
                .arg("RETRYCOUNT")
                .arg(times)
                .arg("JUSTID"),
        )
        .await
        .unwrap();
    ids
}

async fn dead_letters(store: &SaleStore) -> Vec<redis::streams::StreamId> {
    let reply: redis::streams::StreamRangeReply = store
        .redis()
        .query(
            redis::cmd("XRANGE")
                .arg(store.keys().dead_letters())
                .arg("-")
                .arg("+"),
        )
        .await
        .unwrap();
    reply.ids
}

/// Five good sales whose holders kept stopping (delivered 20 times, over
/// the limit of 10) are taken over by a live worker: it tries each alone,
/// each lands, and none is given up for having shared a batch with
/// trouble.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_holders_kept_stopping_is_retried_entry_by_entry() {
    let (a, _) = two_stores(10).await;
    entries_delivered(&a, 5, "gone", 20).await;
    let worker = Worker::new(
        a.clone(),
        PersistOptions {
            claim_idle: Duration::from_millis(100),
            ..PersistOptions::new("alive")
        },
        Metrics::new(),
    )
    .unwrap()
    .spawn();

    let status = level4::drain::wait_with(&a, ticket(), Duration::from_secs(60))
        .await
        .unwrap();
    worker.stop().await;

    assert_eq!(status.database.unwrap().orders, 5);
    assert!(dead_letters(&a).await.is_empty());
}

/// A worker restarted under its own name reads back its own pending
/// entries, and their deliveries count too. An entry over the limit is
/// tried alone, marked as such; the worker dies holding it alone (killed
/// inside its transaction); the restarted worker finds the mark and gives
/// up that entry, with the reason, instead of dying on it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_stopped_its_worker_while_alone_is_dead_lettered_after_a_restart() {
    let (a, _) = two_stores(10).await;
    let ids = entries_delivered(&a, 1, "same", 20).await;
    let stalled = Worker::new(
        a.clone(),
        PersistOptions {
            pause_before_commit: Duration::from_secs(600),
            ..PersistOptions::new("same")
        },
        Metrics::new(),
    )
    .unwrap()
    .spawn();
    let marked = async {
        loop {
            let marked: bool = a
                .redis()
                .query(redis::cmd("HEXISTS").arg(a.keys().isolated()).arg(&ids[0]))
                .await
                .unwrap();
            if marked {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), marked)
        .await
        .expect("the worker never tried the entry alone");
    stalled.kill().await;

    let restarted = Worker::new(a.clone(), PersistOptions::new("same"), Metrics::new())
        .unwrap()
        .spawn();
    let status = level4::drain::wait_with(&a, ticket(), Duration::from_secs(60))
        .await
        .unwrap();
    restarted.stop().await;

    assert_eq!(status.database.unwrap().orders, 0);
    let dead = dead_letters(&a).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let reason: String = dead[0].get("reason").unwrap();
    assert!(reason.contains("alone"), "{reason}");
}

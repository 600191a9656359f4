//! Level 3 on a Redis Cluster (3 masters, 3 replicas, started from local
//! `redis-server` binaries): the lock's keys share one hash slot, a release
//! wakes waiters of other processes through sharded pub/sub (`SPUBLISH` /
//! `SSUBSCRIBE`, routed to the master of the lock's slot), and both
//! strategies sell exactly the stock over two servers, judged from the
//! database by identity.

mod common;

use std::time::{Duration, Instant};

use level3::lock::{Lease, LockClient, LockOptions};
use ticket_core::redis_conn::assert_one_slot;
use ticket_core::services::RedisCluster;

/// The test binary's cluster, started off the async runtime.
async fn cluster() -> &'static RedisCluster {
    tokio::task::spawn_blocking(RedisCluster::shared)
        .await
        .expect("the start did not panic")
        .expect("a throwaway Redis Cluster (redis-server and redis-cli on PATH)")
}

fn options() -> LockOptions {
    LockOptions {
        key_prefix: format!("cluster-{:08x}", rand::random::<u32>()),
        ..LockOptions::default()
    }
}

/// Every key a lock's scripts touch, and its channel, hash to one slot: a
/// cluster would refuse the scripts with CROSSSLOT otherwise, and the
/// sharded channel must live on the master that runs them.
#[test]
fn every_key_and_the_channel_of_one_lock_share_a_slot() {
    let base = "ticket-rush:lock:{ticket:1}";
    assert_one_slot(
        "level3's lock",
        &[
            base.to_owned(),
            format!("{base}:fence"),
            format!("{base}:line"),
            format!("{base}:receipt:0123456789abcdef"),
            format!("{base}:released"),
        ],
    );
}

/// A waiter on one client is woken by a release from another client, on a
/// cluster, through sharded pub/sub. The holder's lease (60 s) is far
/// longer than the waiter's budget (20 s), so a waiter that did not hear
/// the release would only look again at the end of the lease, and time out.
/// While it waits, the master of the lock's slot reports one sharded
/// subscriber on the lock's channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_a_waiter_of_another_process_through_sharded_pub_sub() {
    let cluster = cluster().await;
    let options = options();
    let holder = LockClient::new(cluster.url(), "holder", options.clone()).unwrap();
    let waiter = LockClient::new(cluster.url(), "waiter", options.clone()).unwrap();
    assert!(holder.is_cluster());
    let guard = holder
        .lock("ticket:1")
        .try_lock(
            Duration::from_secs(5),
            Lease::Fixed(Duration::from_secs(60)),
        )
        .await
        .expect("the holder takes the free lock");

    let lock = waiter.lock("ticket:1");
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let guard = lock
            .try_lock(Duration::from_secs(20), Lease::Watchdog)
            .await;
        (guard, started.elapsed())
    });

    // Wait (bounded) until the waiter's sharded subscription exists on the
    // master that owns the lock's slot.
    let channel = format!("{}:{{ticket:1}}:released", options.key_prefix);
    let master = cluster.master_of_key(&channel).unwrap();
    let client = redis::Client::open(format!("redis://127.0.0.1:{master}/")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counts: Vec<redis::Value> = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(&channel)
            .query_async(&mut conn)
            .await
            .unwrap();
        let subscribers: i64 = redis::from_redis_value_ref(&counts[1]).unwrap();
        if subscribers == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the waiter never SSUBSCRIBEd");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    guard.release().await.expect("the holder releases");
    let (taken, waited) = waiting.await.unwrap();
    let taken = taken.expect("the waiter was woken by the release, well before the lease ended");
    assert!(waited < Duration::from_secs(20), "waited {waited:?}");
    taken.release().await.unwrap();
}

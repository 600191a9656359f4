//! The throwaway Redis Cluster and the one connection type, against a real
//! cluster of six `redis-server` (three masters, three replicas).

use redis::aio::ConnectionLike;
use redis::Script;
use std::time::Duration;
use ticket_core::redis_conn::{key_slot, RedisConnection, RedisOptions};
use ticket_core::services::{Redis, RedisCluster};

fn options() -> RedisOptions {
    RedisOptions::new(Duration::from_secs(2), Duration::from_secs(5))
}

fn cluster() -> &'static RedisCluster {
    RedisCluster::shared().expect("a throwaway Redis Cluster")
}

/// Three masters serve the 16384 slots between them, each slot once.
#[test]
fn three_masters_cover_every_slot_once() {
    let masters = cluster().masters().unwrap();
    assert_eq!(masters.len(), 3, "{masters:?}");
    for slot in [0, 5460, 5461, 10922, 10923, 16383] {
        let serving = masters.iter().filter(|m| m.serves(slot)).count();
        assert_eq!(serving, 1, "slot {slot}: {masters:?}");
    }
    assert_eq!(cluster().node_urls().len(), 6);
}

/// Keys land on the master their slot names, and the connection reaches
/// every one of them through one `redis+cluster://` URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_reaches_keys_on_every_master() {
    let mut conn = RedisConnection::connect(cluster().url(), options())
        .await
        .unwrap();
    assert!(conn.is_cluster());
    let mut masters_used = std::collections::BTreeSet::new();
    for i in 0..30 {
        let key = format!("spread:{i}");
        masters_used.insert(cluster().master_of_key(&key).unwrap());
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(i)
            .query_async(&mut conn)
            .await
            .unwrap();
        let back: i64 = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(back, i);
    }
    assert_eq!(masters_used.len(), 3, "30 keys should hit all 3 masters");
    assert_eq!(conn.get_db(), 0);
}

/// A script whose keys share a hash tag runs; the same script over two
/// slots is refused by Redis with CROSSSLOT: the mistake shows in a test,
/// not in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_over_two_slots_is_refused_with_crossslot() {
    let mut conn = RedisConnection::connect(cluster().url(), options())
        .await
        .unwrap();
    let script = Script::new("redis.call('SET', KEYS[1], 1); return redis.call('INCR', KEYS[2])");
    let (a, b) = ("crossslot:{t1}:a", "crossslot:{t1}:b");
    assert_eq!(key_slot(a.as_bytes()), key_slot(b.as_bytes()));
    let n: i64 = script.key(a).key(b).invoke_async(&mut conn).await.unwrap();
    assert_eq!(n, 1);

    let (a, b) = ("crossslot:1:a", "crossslot:2:b");
    assert_ne!(key_slot(a.as_bytes()), key_slot(b.as_bytes()));
    let err = script
        .key(a)
        .key(b)
        .invoke_async::<i64>(&mut conn)
        .await
        .expect_err("a cluster refuses a script over two slots");
    assert_eq!(err.code(), Some("CROSSSLOT"), "{err:?}");
    let untouched: Option<i64> = redis::cmd("GET")
        .arg(a)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(untouched, None, "the refused script ran nothing");
}

/// A MULTI/EXEC over two slots is refused too, before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_over_two_slots_is_refused() {
    let mut conn = RedisConnection::connect(cluster().url(), options())
        .await
        .unwrap();
    let err = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("tx:1")
        .arg(1)
        .cmd("SET")
        .arg("tx:2")
        .arg(2)
        .query_async::<()>(&mut conn)
        .await
        .expect_err("two slots in one transaction");
    assert_eq!(err.code(), Some("CROSSSLOT"), "{err:?}");
}

/// Our CRC16 agrees with Redis's own `CLUSTER KEYSLOT` on the keys the
/// levels use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_slot_agrees_with_cluster_keyslot() {
    let mut conn = RedisConnection::connect(cluster().url(), options())
        .await
        .unwrap();
    for key in [
        "ticket-rush:l4:{l4:abc}:sale:7",
        "{show:3}:seats",
        "plain",
        "a{}b{c}",
    ] {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
    }
}

/// The same type talks to a single Redis, as every level did before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_type_talks_to_a_single_redis() {
    let redis = Redis::shared().unwrap();
    let mut conn = RedisConnection::open(redis.url(), options()).unwrap();
    assert!(!conn.is_cluster());
    let script = Script::new("return redis.call('INCR', KEYS[1])");
    let n: i64 = script
        .key("single:1")
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert!(n >= 1);
}

//! Level 4 when Redis is not the Redis it was: restarted from an old RDB
//! snapshot, or one that may evict keys.
//!
//! Each test starts a Redis of its own, since it stops or misconfigures it.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser as _;
use common::{buy, ticket};
use level4::persist::{PersistOptions, Worker};
use level4::reconcile::{reconcile, DriftKind};
use level4::store::{Decision, RedisConn, SaleStore, RESPONSE_TIMEOUT};
use ticket_core::db;
use ticket_core::metrics::Metrics;
use ticket_core::services::{free_port, Postgres, Redis};

/// A directory for one Redis's RDB file, kept across its restarts and
/// removed when the test ends, passed or failed.
struct RdbDir(PathBuf);

impl RdbDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ticket-rush-rdb-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for RdbDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts Redis on `port`, reading and writing its RDB file in `dir`, with
/// no automatic snapshot (only the test's `SAVE`) and no AOF.
async fn redis_with_rdb(port: u16, dir: &std::path::Path) -> Redis {
    let dir = dir.to_str().unwrap().to_owned();
    tokio::task::spawn_blocking(move || {
        Redis::throwaway_on(port, &["--dir", &dir, "--dbfilename", "sale.rdb"])
    })
    .await
    .unwrap()
    .unwrap()
}

/// Waits until the store's connection reaches the restarted Redis (its
/// first command after the restart gets the old connection's error).
async fn reconnected(store: &SaleStore) {
    for _ in 0..500 {
        if store.redis().ping().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("Redis did not answer after its restart");
}

/// Persists everything on the stream, and returns PostgreSQL's orders of
/// the ticket: user → order id.
async fn persist_all(store: &SaleStore) -> BTreeMap<i64, i64> {
    let worker = Worker::new(
        store.clone(),
        PersistOptions::new("restarts"),
        Metrics::new(),
    )
    .unwrap()
    .spawn();
    let drained = level4::drain::wait_with(store, ticket(), Duration::from_secs(60)).await;
    worker.stop().await;
    drained.unwrap();
    sqlx::query_as("SELECT user_id, id FROM ticket_orders WHERE ticket_id = $1")
        .bind(ticket().get())
        .fetch_all(store.pool())
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Redis snapshots the sale after 3 of 10 units are sold; 5 more are sold
/// and persisted; Redis then dies and comes back from that snapshot. It
/// holds the *current* epoch, so nothing looks unloaded, but its stock says
/// 7 and it has forgotten buyers 4 to 8. Selling from that state would sell
/// those five buyers a second unit each (their rows already exist) and
/// then 2 units more than the ticket has. The sale must be checked against
/// PostgreSQL before the restarted Redis sells anything: buyers 4 to 8 are
/// told they already hold the ticket, with their order ids, 2 new buyers
/// get the last 2 units, and every 201 is a row once persisted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_back_from_an_old_snapshot_sells_nothing_postgresql_already_holds() {
    let dir = RdbDir::new();
    let port = free_port().unwrap();
    let first = redis_with_rdb(port, &dir.0).await;
    let database = Postgres::shared().unwrap().fresh_database().await.unwrap();
    let pool = db::connect(&database, 10, Duration::from_secs(10))
        .await
        .unwrap();
    db::migrate(&pool).await.unwrap();
    let redis = RedisConn::new(first.url(), RESPONSE_TIMEOUT).unwrap();
    let store = SaleStore::open(pool, redis).await.unwrap();
    db::reset_ticket(store.pool(), ticket(), "Test", 10)
        .await
        .unwrap();

    for buyer in 1..=3 {
        assert!(matches!(buy(&store, buyer).await, Decision::Sold(_)));
    }
    let _: String = store.redis().query(&redis::cmd("SAVE")).await.unwrap();
    for buyer in 4..=8 {
        assert!(matches!(buy(&store, buyer).await, Decision::Sold(_)));
    }
    let persisted = persist_all(&store).await;
    assert_eq!(
        persisted.keys().copied().collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );

    // Redis dies without saving (`--save ''`) and restarts from the file.
    tokio::task::spawn_blocking(move || drop(first))
        .await
        .unwrap();
    let _second = redis_with_rdb(port, &dir.0).await;
    reconnected(&store).await;

    // Before anyone buys, reconcile sees what the restart did.
    let found = reconcile(&store, &[ticket()], false).await.unwrap();
    let kinds: Vec<DriftKind> = found[0].drift.iter().map(|d| d.kind).collect();
    assert!(
        kinds.contains(&DriftKind::RedisForgotOrders),
        "{}",
        found[0]
    );
    let note = found[0].note.clone().unwrap_or_default();
    assert!(note.contains("restarted"), "{}", found[0]);

    let mut answers = BTreeMap::new();
    for buyer in 4..=12 {
        answers.insert(buyer, buy(&store, buyer).await);
    }
    for buyer in 4..=8 {
        assert_eq!(
            answers[&buyer],
            Decision::AlreadyPurchased(persisted[&buyer]),
            "buyer {buyer} already holds a row: {answers:?}"
        );
    }
    assert!(matches!(answers[&9], Decision::Sold(_)), "{answers:?}");
    assert!(matches!(answers[&10], Decision::Sold(_)), "{answers:?}");
    assert_eq!(answers[&11], Decision::SoldOut, "{answers:?}");
    assert_eq!(answers[&12], Decision::SoldOut, "{answers:?}");

    let rows = persist_all(&store).await;
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    for buyer in [9, 10] {
        let Decision::Sold(id) = answers[&buyer] else {
            unreachable!()
        };
        assert_eq!(rows[&buyer], id, "buyer {buyer}'s 201 is their row");
    }
    let stock: i32 = sqlx::query_scalar("SELECT stock FROM tickets WHERE id = $1")
        .bind(ticket().get())
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(stock, 0);
}

/// A server refuses to start on a Redis that may evict keys (here
/// `allkeys-lru`: under memory pressure it would drop a sale or its
/// buyers, and the sale would be loaded again and sold twice), and says
/// what to set.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_refuses_a_redis_that_may_evict_keys() {
    let redis = tokio::task::spawn_blocking(|| {
        Redis::throwaway_on(free_port()?, &["--maxmemory-policy", "allkeys-lru"])
    })
    .await
    .unwrap()
    .unwrap();
    let url = Postgres::shared().unwrap().fresh_database().await.unwrap();
    let started = level4::Cli::try_parse_from([
        "level4",
        "--port",
        "0",
        "--database-url",
        &url,
        "--redis-url",
        redis.url(),
    ])
    .unwrap()
    .start()
    .await;
    let err = started.err().expect("the server must not start");
    let text = format!("{err:#}");
    assert!(
        text.contains("allkeys-lru") && text.contains("maxmemory-policy noeviction"),
        "{text}"
    );
}

//! Levels 4 and 5 on a real Redis Cluster (three masters, three replicas,
//! six local `redis-server`), judged from PostgreSQL by identity exactly as
//! on one Redis: the same rushes, a `redis+cluster://` URL instead.
//!
//! One cluster per test process ([`RedisCluster::shared`]).

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{assert_exactly_sold, fresh_database, plan, stop};
use load::levels::SettleArgs;
use load::rush::{rush, RushPlan, Settle};
use load::servers::{start_in_process, ServerSpec};
use ticket_core::services::RedisCluster;
use ticket_core::TicketId;

const TICKET: i64 = 1;

async fn cluster() -> &'static RedisCluster {
    tokio::task::spawn_blocking(|| RedisCluster::shared().expect("a throwaway Redis Cluster"))
        .await
        .expect("the start did not panic")
}

fn settle(database: &str, redis: &str) -> Settle {
    let settle = load::levels::level(4)
        .unwrap()
        .settle
        .expect("Level 4 settles");
    let args = SettleArgs {
        database_url: database.to_owned(),
        redis_url: Some(redis.to_owned()),
        ticket_id: TICKET,
    };
    Settle(Arc::new(move || settle(args.clone())))
}

/// Level 4's two-server rush on the cluster, two rounds: exactly 100 orders
/// in PostgreSQL, and they are exactly the buyers the cluster recorded, each
/// with the order id the cluster answered. The sale's keys live on one
/// master (the database's hash tag) and that master holds the 100 buyers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level4_two_servers_sell_exactly_the_stock_on_a_cluster() {
    let cluster = cluster().await;
    let url = cluster.url().to_owned();
    let database = fresh_database().await;
    let spec = ServerSpec::new(4, "redis-lua").think_time_ms(level4::RACE_THINK_TIME_MS);
    let servers = start_in_process(&spec, &database, Some(&url), 2)
        .await
        .expect("servers start on the cluster");

    for round in 0..2 {
        let report = rush(&RushPlan {
            seed: round,
            settle: Some(settle(&database, &url)),
            ..plan(&servers, &database)
        })
        .await
        .expect("the rush runs");
        assert_exactly_sold(&report, 100);
        assert_eq!(report.sold_out, 900, "round {round}");
    }

    let store = level4::store::SaleStore::connect(&database, &url)
        .await
        .expect("both stores answer");
    let ticket = TicketId::parse(i128::from(TICKET)).unwrap();
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT user_id, id FROM ticket_orders WHERE ticket_id = $1")
            .bind(TICKET)
            .fetch_all(store.pool())
            .await
            .unwrap();
    let rows: HashMap<i64, i64> = rows.into_iter().collect();
    let buyers_key = store.keys().buyers(ticket);
    let buyers: HashMap<i64, i64> = store
        .redis()
        .query(redis::cmd("HGETALL").arg(&buyers_key))
        .await
        .unwrap();
    assert_eq!(rows.len(), 100);
    assert_eq!(rows, buyers, "PostgreSQL's orders and the cluster's buyers");

    // Asked directly (no cluster client), the master of the key's slot holds it.
    let master = cluster.master_of_key(&buyers_key).unwrap();
    let mut node = redis::Client::open(format!("redis://127.0.0.1:{master}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let on_master: i64 = redis::cmd("HLEN")
        .arg(&buyers_key)
        .query_async(&mut node)
        .await
        .unwrap();
    assert_eq!(on_master, 100, "the buyers live on master {master}");
    stop(servers).await;
}

/// `load booking` on the cluster: two Level 5 servers as processes, the
/// waiting room and `redis-lua` holds in the cluster, 300 users for 100
/// seats: the database shows no seat sold twice and the money conserved,
/// and the waiting room admitted in arrival order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level5_booking_with_redis_lua_holds_is_correct_on_a_cluster() {
    let url = cluster().await.url().to_owned();
    let database = fresh_database().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_load"))
        .args([
            "booking",
            "--json",
            "--servers",
            "2",
            "--strategy",
            "redis-lua",
        ])
        .args(["--users", "300", "--seats", "100"])
        .args([
            "--queue",
            "on",
            "--active-limit",
            "100",
            "--admitted-ttl-ms",
            "10000",
        ])
        .args(["--database-url", &database, "--redis-url", &url])
        .env_remove("ADMIN_TOKEN")
        .output()
        .await
        .expect("the load binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "load booking failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(r["verdict"], "correct", "{r:#}");
    assert_eq!(r["double_sold_seats"], 0);
    assert_eq!(r["money"]["conserved"], true);
    assert_eq!(r["errors"], 0, "{r:#}");
    assert!(r["payments"].as_i64().unwrap() > 0, "someone paid: {r:#}");
    assert_eq!(r["queue"]["fifo_violations"], 0, "{r:#}");
    assert!(
        r["admitted"].as_u64().unwrap() > 100,
        "the line moved: {r:#}"
    );
}

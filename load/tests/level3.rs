//! Level 3 through HTTP with the load tool's rush: a Redis lock shared by
//! two servers sells exactly the stock, round after round, and survives a
//! server killed while it holds the lock.

mod common;

use std::time::{Duration, Instant};

use common::{assert_exactly_sold, plan, servers, stop};
use load::rush::{rush, RushPlan};
use load::servers::{start_processes, ServerSpec};
use ticket_core::services::Redis;
use ticket_core::{db, TicketId};

fn spec(strategy: &str) -> ServerSpec {
    ServerSpec::new(3, strategy).think_time_ms(level3::RACE_THINK_TIME_MS)
}

/// Level 3's strategies, from its table (the only list: a new strategy is
/// tested by adding its line there).
fn strategies() -> Vec<&'static str> {
    level3::STRATEGIES.iter().map(|s| s.name).collect()
}

/// Every strategy, two servers, 1000 buyers, 100 tickets, three rounds on
/// the same servers, with the 20 ms race window: exactly 100 each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_sells_exactly_the_stock_on_two_servers_three_rounds_running() {
    for strategy in strategies() {
        let (servers, database) = servers(&spec(strategy), 2).await;
        for round in 0..3 {
            let report = rush(&RushPlan {
                seed: round,
                ..plan(&servers, &database)
            })
            .await
            .expect("the rush runs");

            assert_exactly_sold(&report, 100);
        }
        stop(servers).await;
    }
}

/// One person clicking 20 times at once over two servers: one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_clicking_twenty_times_gets_one_order() {
    for strategy in strategies() {
        let (servers, database) = servers(&spec(strategy), 2).await;
        common::assert_twenty_clicks_make_one_order(&servers, &database, strategy).await;
        stop(servers).await;
    }
}

/// A server is SIGKILLed while it holds the ticket's lock, in the middle of
/// a rush. Its lease runs out (no watchdog renews it any more), the other
/// server takes the lock and goes on, and exactly 100 are sold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_holding_the_lock_does_not_stop_or_break_the_sale() {
    let redis = tokio::task::spawn_blocking(Redis::throwaway)
        .await
        .unwrap()
        .unwrap();
    let database = common::fresh_database().await;
    let spec = ServerSpec::new(3, "pubsub").think_time_ms(50);
    let mut servers = start_processes(
        std::path::Path::new(env!("CARGO_BIN_EXE_load")),
        &spec,
        &database,
        Some(redis.url()),
        2,
    )
    .await
    .expect("two level3 processes");
    let targets: Vec<String> = servers.iter().map(|s| s.url().to_owned()).collect();
    let victim_port = targets[0].rsplit(':').next().unwrap().to_owned();
    let plan = RushPlan::new(targets, &database);
    let sale = tokio::spawn(async move { rush(&plan).await });

    // Wait until the victim holds the lock (its owner ids carry its port),
    // then kill it mid-sale.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let owners: Vec<String> = redis::cmd("HKEYS")
            .arg("ticket-rush:lock:{ticket:1}")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if owners
            .iter()
            .any(|o| o.starts_with(&format!("level3-{victim_port}-")))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the victim never held the lock");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    servers[0].kill().await.expect("SIGKILL");

    let report = sale.await.unwrap().expect("the rush finishes");
    let pool = load::rush::open_database(&database).await.unwrap();
    let truth = db::truth(&pool, TicketId::parse(1).unwrap()).await.unwrap();
    assert_eq!(
        truth.orders, 100,
        "exactly the stock, despite the crash: {report:#?}"
    );
    assert_eq!(truth.stock, 0);
    assert_eq!(truth.duplicate_orders(), 0);
    assert!(
        report.errors > 0,
        "the victim's buyers lost their connection"
    );
    assert!(report.succeeded <= 100);
    for server in servers {
        let _ = server.stop().await;
    }
}

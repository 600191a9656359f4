//! Level 1 through HTTP: a process-local lock is correct on one server and
//! oversells on two.

mod common;

use common::{assert_exactly_sold, plan, servers, stop};
use load::rush::rush;
use load::servers::ServerSpec;
use ticket_core::Verdict;

fn spec(strategy: &str) -> ServerSpec {
    // The same wide race window that makes Level 0 oversell every time.
    ServerSpec::new(1, strategy).think_time_ms(level1::RACE_THINK_TIME_MS)
}

fn strategies() -> Vec<&'static str> {
    level1::STRATEGIES.iter().map(|s| s.name).collect()
}

/// Every Level 1 strategy, one server, 1000 buyers: exactly 100 orders,
/// stock 0, 100 HTTP 201s, despite the race window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_sells_exactly_the_stock_on_one_server() {
    for strategy in strategies() {
        let (servers, database) = servers(&spec(strategy), 1).await;

        let report = rush(&plan(&servers, &database))
            .await
            .expect("the rush runs");

        assert_exactly_sold(&report, 100);
        stop(servers).await;
    }
}

/// Every Level 1 strategy, two servers sharing one database: each server's
/// lock only covers its own buyers, and the ticket is oversold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_oversells_on_two_servers() {
    for strategy in strategies() {
        let (servers, database) = servers(&spec(strategy), 2).await;

        let report = rush(&plan(&servers, &database))
            .await
            .expect("the rush runs");

        assert_eq!(report.verdict, Verdict::Oversold, "{strategy}: {report:#?}");
        assert!(
            report.db_orders > 100,
            "{strategy}: {} orders",
            report.db_orders
        );
        assert_eq!(report.server_errors, 0);
        stop(servers).await;
    }
}

/// One person clicking 20 times at once, spread over two servers: one
/// order, 19 answers of 409 already_purchased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_clicking_twenty_times_gets_one_order() {
    for strategy in strategies() {
        let (servers, database) = servers(&spec(strategy), 2).await;

        common::assert_twenty_clicks_make_one_order(&servers, &database, strategy).await;
        stop(servers).await;
    }
}

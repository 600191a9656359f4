//! Level 0 through HTTP: the race reproduces on demand, and the schema still
//! keeps one order per buyer.

mod common;

use common::{plan, servers, stop};
use load::rush::{rush, RushPlan};
use load::servers::ServerSpec;
use ticket_core::Verdict;

/// With a think time, 1000 buyers for 100 tickets oversell, in every round,
/// and the stock column shows the lost updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_oversells_every_time_with_a_think_time() {
    let spec = ServerSpec::new(0, "naive").think_time_ms(level0::RACE_THINK_TIME_MS);
    let (servers, database) = servers(&spec, 1).await;

    for round in 0..3 {
        let report = rush(&RushPlan {
            seed: round,
            ..plan(&servers, &database)
        })
        .await
        .expect("the rush runs");

        assert_eq!(
            report.verdict,
            Verdict::Oversold,
            "round {round}: {report:#?}"
        );
        assert!(
            report.db_orders > 100,
            "round {round}: {} orders",
            report.db_orders
        );
        assert!(
            i64::from(report.db_stock) > 100 - report.db_orders,
            "the stock column should not account for every order"
        );
        assert_eq!(report.server_errors, 0);
    }
    stop(servers).await;
}

/// One person clicking 20 times at once on two servers gets one order; the
/// UNIQUE constraint answers the other 19 with 409, never 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_clicking_twenty_times_gets_one_order() {
    let spec = ServerSpec::new(0, "naive").think_time_ms(level0::RACE_THINK_TIME_MS);
    let (servers, database) = servers(&spec, 2).await;

    common::assert_twenty_clicks_make_one_order(&servers, &database, "naive").await;
    stop(servers).await;
}

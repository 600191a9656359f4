//! Level 2 through HTTP: with the control inside PostgreSQL, every strategy
//! sells exactly the stock on two servers, round after round, even with the
//! race window that makes Level 0 oversell every time.

mod common;

use common::{assert_exactly_sold, plan, servers, stop};
use load::rush::{rush, Report, RushPlan};
use load::servers::ServerSpec;
use ticket_core::Verdict;

/// A server-side counter, summed over the servers (0 when never counted).
fn event(report: &Report, name: &str) -> f64 {
    report
        .server_metrics
        .get(&format!("event:{name}"))
        .copied()
        .unwrap_or(0.0)
}

fn spec(strategy: &str) -> ServerSpec {
    ServerSpec::new(2, strategy).think_time_ms(level2::RACE_THINK_TIME_MS)
}

/// 1000 buyers for 100 tickets over two servers, three rounds on the same
/// servers (each round resets the ticket): exactly 100 orders each time.
async fn two_servers_sell_exactly_the_stock_three_rounds_running(strategy: &str) {
    let (servers, database) = servers(&spec(strategy), 2).await;

    for round in 0..3 {
        let report = rush(&RushPlan {
            seed: round,
            ..plan(&servers, &database)
        })
        .await
        .expect("the rush runs");

        assert_eq!(report.servers, 2);
        assert_exactly_sold(&report, 100);
        assert_eq!(report.oversold, 0, "{strategy}, round {round}");
        assert_eq!(report.db_stock, 0, "{strategy}, round {round}");
    }
    stop(servers).await;
}

/// Every strategy in Level 2's table (the only list: a new strategy is
/// tested by adding its line there), two servers, 1000 buyers, three
/// rounds: `optimistic` turns lost races into retries, `pessimistic` queues
/// on the row lock, `nowait` refuses and the buyers click again, `atomic`
/// has no read to go stale, `serializable` retries SQLSTATE 40001. Each
/// sells exactly the stock, as its table line expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_sells_exactly_the_stock_on_two_servers() {
    for entry in level2::STRATEGIES {
        assert_eq!(
            entry.expected.two_servers,
            Verdict::Correct,
            "{}",
            entry.name
        );
        two_servers_sell_exactly_the_stock_three_rounds_running(entry.name).await;
    }
}

/// One person clicking 20 times at once, spread over two servers, with
/// every strategy: one order, 19 answers of 409 already_purchased, and only
/// one unit of stock spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_clicking_twenty_times_gets_one_order_with_every_strategy() {
    for entry in level2::STRATEGIES {
        let strategy = entry.name;
        let (servers, database) = servers(&spec(strategy), 2).await;

        let report = rush(&RushPlan {
            buyers: 20,
            distinct_users: Some(1),
            ..plan(&servers, &database)
        })
        .await
        .expect("the rush runs");

        assert_eq!(report.db_orders, 1, "{strategy}: {report:#?}");
        assert_eq!(report.db_stock, 99, "{strategy}: one unit spent");
        assert_eq!(report.duplicate_orders, 0, "{strategy}");
        assert_eq!(report.succeeded, 1, "{strategy}");
        assert_eq!(report.already_purchased, 19, "{strategy}");
        assert_eq!(report.server_errors, 0, "{strategy}");
        assert_eq!(report.verdict, Verdict::Correct, "{strategy}: {report:#?}");
        stop(servers).await;
    }
}

/// `optimistic --max-retries 0` fails fast: under a rush, buyers who lose
/// the version race are answered 503 busy at once (and counted as
/// conflicts by the servers). They click again, and the ticket still sells
/// out exactly, never oversold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_without_retries_answers_some_buyers_busy_but_never_oversells() {
    let spec = spec("optimistic").args(["--max-retries", "0"]);
    let (servers, database) = servers(&spec, 2).await;

    let report = rush(&plan(&servers, &database))
        .await
        .expect("the rush runs");

    assert!(
        report.busy > 0,
        "some buyers should lose the race: {report:#?}"
    );
    assert!(
        event(&report, "conflict") > 0.0,
        "the servers should count the conflicts: {:?}",
        report.server_metrics
    );
    assert_eq!(
        event(&report, "retry"),
        0.0,
        "no server-side retries with --max-retries 0"
    );
    assert_eq!(report.oversold, 0);
    assert_exactly_sold(&report, 100);
    stop(servers).await;
}

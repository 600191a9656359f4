//! Helpers shared by the load crate's black-box tests.
#![allow(dead_code)] // each test binary uses a different subset

use load::rush::{Report, RushPlan};
use load::servers::{start_in_process, urls, ServerSpec};
use ticket_core::services::{Postgres, Redis};
use ticket_core::RunningServer;

/// A fresh, empty database on the test binary's PostgreSQL.
pub async fn fresh_database() -> String {
    // The first call starts the server, which blocks (and, on the Docker
    // path, runs a runtime of its own): keep it off this test's runtime.
    let postgres = tokio::task::spawn_blocking(Postgres::shared)
        .await
        .expect("the start did not panic")
        .expect("PostgreSQL for tests");
    postgres.fresh_database().await.expect("a fresh database")
}

/// The test binary's Redis URL. Blocking on first use: call it from async
/// code through [`shared_redis_url`].
pub fn redis_url() -> String {
    Redis::shared().expect("Redis for tests").url().to_owned()
}

/// The test binary's Redis URL, started off the async runtime.
pub async fn shared_redis_url() -> String {
    tokio::task::spawn_blocking(redis_url)
        .await
        .expect("the start did not panic")
}

/// Starts `count` in-process servers of `spec` on a fresh database and
/// returns them with the database URL.
pub async fn servers(spec: &ServerSpec, count: usize) -> (Vec<RunningServer>, String) {
    let database = fresh_database().await;
    let info = load::levels::level(spec.level).expect("a known level");
    let redis = if info.needs_redis {
        Some(shared_redis_url().await)
    } else {
        None
    };
    let servers = start_in_process(spec, &database, redis.as_deref(), count)
        .await
        .expect("servers start");
    (servers, database)
}

/// The headline plan: 1000 buyers, 100 tickets, over `servers`.
pub fn plan(servers: &[RunningServer], database: &str) -> RushPlan {
    RushPlan::new(urls(servers), database)
}

/// Stops every server.
pub async fn stop(servers: Vec<RunningServer>) {
    for server in servers {
        server.stop().await.expect("server stops");
    }
}

/// Asserts the database says exactly `tickets` sold, with every figure.
pub fn assert_exactly_sold(report: &Report, tickets: i64) {
    assert_eq!(
        report.verdict,
        ticket_core::Verdict::Correct,
        "problems: {:?}\n{report:#?}",
        report.problems
    );
    assert_eq!(report.db_orders, tickets, "orders in the database");
    assert_eq!(
        i64::from(report.db_stock),
        i64::from(report.tickets) - tickets
    );
    assert_eq!(report.duplicate_orders, 0);
    assert_eq!(report.succeeded as i64, tickets, "HTTP 201s");
    assert_eq!(report.server_errors, 0, "5xx other than 503");
    assert_eq!(report.errors, 0, "buyers who got an error");
}

/// Every strategy meant to be correct on two servers, of the levels that
/// write orders in PostgreSQL as they sell (Levels 2 and 3).
pub fn correct_db_strategies() -> Vec<(u8, &'static str)> {
    load::levels::levels()
        .into_iter()
        .filter(|level| matches!(level.number, 2 | 3))
        .flat_map(|level| {
            level
                .strategies
                .iter()
                .filter(|s| s.expected.two_servers == ticket_core::Verdict::Correct)
                .map(|s| (level.number, s.name))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// One person clicking "buy" 20 times at once, dealt over `servers`: asserts
/// one order, 19 answers of 409 already_purchased, and no 5xx.
pub async fn assert_twenty_clicks_make_one_order(
    servers: &[RunningServer],
    database: &str,
    what: &str,
) {
    let report = load::rush::rush(&RushPlan {
        buyers: 20,
        distinct_users: Some(1),
        ..plan(servers, database)
    })
    .await
    .expect("the rush runs");
    assert_eq!(report.db_orders, 1, "{what}: {report:#?}");
    assert_eq!(report.succeeded, 1, "{what}");
    assert_eq!(report.already_purchased, 19, "{what}");
    assert_eq!(report.server_errors, 0, "{what}");
}

//! `load booking` as a workshop host runs it: real Level 5 servers as
//! separate processes, real PostgreSQL and Redis, users through the whole
//! journey, and the verdict from the database. Smaller than the headline
//! (300 users, 100 seats) to keep CI time small; the same code paths.

mod common;

use std::process::Output;

use common::{fresh_database, shared_redis_url};
use serde_json::Value;

/// Every field `../shared/BOX_OFFICE.md` ("Load: `load booking`") promises.
const CONTRACT_FIELDS: &[&str] = &[
    "users",
    "seats",
    "strategy",
    "servers",
    "admitted",
    "holds",
    "payments",
    "expired_holds",
    "seats_sold",
    "seats_available_after_expiry",
    "double_sold_seats",
    "money",
    "queue",
    "latency_ms",
    "elapsed_ms",
    "verdict",
];

/// The waiting room's settings for these runs: 100 users in at a time,
/// and an idle time generous enough (several times a debug build's slowest
/// step on a busy machine) that admitted users are not timed out between
/// reading the seat map and holding.
const QUEUE: &[&str] = &[
    "--queue",
    "on",
    "--active-limit",
    "100",
    "--admitted-ttl-ms",
    "10000",
];

/// Runs `load booking --json` with `args` on a fresh database and the
/// test binary's Redis.
async fn booking(args: &[&str]) -> Output {
    let database = fresh_database().await;
    let redis = shared_redis_url().await;
    tokio::process::Command::new(env!("CARGO_BIN_EXE_load"))
        .args(["booking", "--json", "--servers", "2"])
        .args(QUEUE)
        .args(["--database-url", &database, "--redis-url", &redis])
        .args(args)
        .env_remove("ADMIN_TOKEN")
        .output()
        .await
        .expect("the load binary runs")
}

/// The JSON report of a run that exited with `code`.
fn report(output: &Output, code: i32) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(code),
        "load booking exited otherwise:\n{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr),
    );
    serde_json::from_str(stdout.trim()).expect("stdout is one JSON object")
}

/// 300 users for 100 seats on two servers of `strategy`: correct, with
/// every contract field, and figures that say the run really happened.
async fn assert_booking_is_correct(strategy: &str) {
    let output = booking(&["--strategy", strategy, "--users", "300", "--seats", "100"]).await;
    let r = report(&output, 0);
    for field in CONTRACT_FIELDS {
        assert!(r.get(field).is_some(), "{field} missing from {r}");
    }
    for step in ["queue", "hold", "pay"] {
        for p in ["p50", "p95", "p99"] {
            assert!(
                r["latency_ms"][step][p].is_number(),
                "latency_ms.{step}.{p}"
            );
        }
    }
    assert_eq!(r["verdict"], "correct", "{strategy}: {r:#}");
    assert_eq!(r["double_sold_seats"], 0);
    assert_eq!(r["money"]["conserved"], true);
    assert!(r["payments"].as_i64().unwrap() > 0, "someone paid: {r:#}");
    assert!(
        r["expired_holds"].as_i64().unwrap() > 0,
        "someone walked away: {r:#}"
    );
    assert!(r["seats_sold"].as_i64().unwrap() <= 100, "{r:#}");
    assert_eq!(r["errors"], 0, "{r:#}");
    let queue = &r["queue"];
    assert_eq!(queue["fifo_violations"], 0, "{r:#}");
    assert!(queue["max_active"].as_i64().unwrap() <= 100, "{r:#}");
    assert!(
        r["admitted"].as_u64().unwrap() > 100,
        "the line moved: {r:#}"
    );
}

/// The pessimistic strategy (row locks in one global order) books correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booking_with_pessimistic_holds_is_correct() {
    assert_booking_is_correct("pessimistic").await;
}

/// The optimistic strategy (version checks, retried) books correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booking_with_optimistic_holds_is_correct() {
    assert_booking_is_correct("optimistic").await;
}

/// Seats held by one Lua script in Redis book correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booking_with_redis_lua_holds_is_correct() {
    assert_booking_is_correct("redis-lua").await;
}

/// `--lock-scope before-commit` lets go of the seat locks before the hold
/// is written: with a think time widening the window, users racing for the
/// front rows hold the same seats, and the database shows it. The run exits
/// 1 with `double_sold`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_releases_seat_locks_before_the_commit_is_judged_double_sold() {
    let output = booking(&[
        "--strategy",
        "pessimistic",
        "--users",
        "200",
        "--seats",
        "100",
        "--think-time-ms",
        "50",
        "--server-arg=--lock-scope=before-commit",
    ])
    .await;
    let r = report(&output, 1);
    assert_eq!(r["verdict"], "double_sold", "{r:#}");
    assert!(r["double_sold_seats"].as_i64().unwrap() > 0, "{r:#}");
}

/// A server killed (SIGKILL) a third of the way through: its users'
/// requests go to the other server, and the run still ends correct (holds
/// the dead server made expire on the survivor's sweeper).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_run_still_ends_correct() {
    let output = booking(&[
        "--strategy",
        "pessimistic",
        "--users",
        "300",
        "--seats",
        "100",
        "--kill-at",
        "0.3",
    ])
    .await;
    let r = report(&output, 0);
    assert_eq!(r["verdict"], "correct", "{r:#}");
    assert!(
        r["failovers"].as_u64().unwrap() > 0,
        "users failed over: {r:#}"
    );
}

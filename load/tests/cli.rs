//! The `load` command itself, as a workshop host runs it: real servers as
//! separate processes, JSON output, `--target` mode, clear errors.

mod common;

use std::process::Output;

use common::{fresh_database, servers, stop};
use load::servers::ServerSpec;
use serde_json::Value;

/// Every field DESIGN.md promises in `load run --json`.
const CONTRACT_FIELDS: &[&str] = &[
    "level",
    "strategy",
    "servers",
    "buyers",
    "tickets",
    "succeeded",
    "sold_out",
    "already_purchased",
    "busy",
    "errors",
    "db_orders",
    "db_stock",
    "oversold",
    "duplicate_orders",
    "verdict",
    "latency_ms",
    "elapsed_ms",
    "throughput_rps",
];

async fn load(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_load"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .await
        .expect("the load binary runs")
}

fn json_lines(output: &Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "load failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("every stdout line is JSON"))
        .collect()
}

/// `load run --level 1 --strategy mutex --servers 1 --json` starts a real
/// server process, and the JSON has every contract field and says correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_level1_mutex_on_one_server_is_correct_and_json_has_the_contract() {
    let database = fresh_database().await;

    let output = load(&[
        "run",
        "--level",
        "1",
        "--strategy",
        "mutex",
        "--servers",
        "1",
        "--buyers",
        "300",
        "--tickets",
        "50",
        "--database-url",
        &database,
        "--json",
    ])
    .await;

    let reports = json_lines(&output);
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    for field in CONTRACT_FIELDS {
        assert!(report.get(field).is_some(), "missing {field}: {report}");
    }
    for percentile in ["p50", "p95", "p99", "max"] {
        assert!(report["latency_ms"][percentile].is_number(), "{percentile}");
    }
    assert_eq!(report["verdict"], "correct", "{report}");
    assert_eq!(report["db_orders"], 50);
    assert_eq!(report["db_stock"], 0);
    assert_eq!(report["succeeded"], 50);
    assert_eq!(report["servers"], 1);
}

/// `load run --level 0` with its think time oversells, in every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_level0_oversells_in_every_round() {
    let database = fresh_database().await;

    let output = load(&[
        "run",
        "--level",
        "0",
        "--servers",
        "1",
        "--buyers",
        "300",
        "--tickets",
        "50",
        "--rounds",
        "2",
        "--think-time-ms",
        "20",
        "--database-url",
        &database,
        "--json",
    ])
    .await;

    let reports = json_lines(&output);
    assert_eq!(reports.len(), 2);
    for report in reports {
        assert_eq!(report["verdict"], "oversold", "{report}");
        assert!(report["oversold"].as_i64().unwrap() > 0);
    }
}

/// `--target` mode: two servers started by someone else (here, the test)
/// on one database; the tool rushes them and judges from that database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_mode_rushes_servers_started_by_hand() {
    let spec = ServerSpec::new(1, "mutex").think_time_ms(level1::RACE_THINK_TIME_MS);
    let (servers, database) = servers(&spec, 2).await;
    let (a, b) = (servers[0].url(), servers[1].url());

    let output = load(&[
        "run",
        "--level",
        "1",
        "--target",
        &a,
        "--target",
        &b,
        "--buyers",
        "400",
        "--tickets",
        "40",
        "--database-url",
        &database,
        "--json",
    ])
    .await;

    let reports = json_lines(&output);
    assert_eq!(reports[0]["servers"], 2);
    assert_eq!(reports[0]["verdict"], "oversold", "{}", reports[0]);
    stop(servers).await;
}

/// A level that does not exist is one clear line and a non-zero exit.
#[tokio::test]
async fn unknown_level_is_a_clear_error() {
    let output = load(&[
        "run",
        "--level",
        "42",
        "--database-url",
        "postgres://127.0.0.1:1/x",
    ])
    .await;

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no level 42"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// `--target` without the database the servers share is refused up front.
#[tokio::test]
async fn target_mode_needs_the_database() {
    let output = load(&["run", "--level", "1", "--target", "http://127.0.0.1:1"]).await;

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--database-url"), "{stderr}");
}

/// A database that does not answer is one clear line and a non-zero exit,
/// and no server is left running.
#[tokio::test]
async fn unreachable_database_is_a_clear_error() {
    let port = ticket_core::services::free_port().unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{port}/none");

    let output = load(&[
        "run",
        "--level",
        "1",
        "--servers",
        "1",
        "--database-url",
        &url,
    ])
    .await;

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: cannot connect to PostgreSQL"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// A server binary stops gracefully on SIGTERM (as a service manager stops
/// it), and exits successfully.
#[tokio::test]
async fn a_server_shuts_down_gracefully_on_sigterm() {
    use nix::sys::signal::{kill, Signal};
    let database = fresh_database().await;
    let port = ticket_core::services::free_port().unwrap().to_string();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_load"))
        .args([
            "serve",
            "level1",
            "--port",
            &port,
            "--database-url",
            &database,
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let health = format!("http://127.0.0.1:{port}/health");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while reqwest::get(&health)
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never came up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let pid = nix::unistd::Pid::from_raw(server.id().unwrap() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), server.wait())
        .await
        .expect("the server stops within 10 s")
        .unwrap();

    assert!(status.success(), "{status}");
}

/// Sustained mode buys for a fixed time, stays correct, and reports itself
/// against ceilings measured in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_run_reports_ceilings_from_the_same_run() {
    let database = fresh_database().await;

    let output = load(&[
        "run",
        "--level",
        "1",
        "--strategy",
        "mutex",
        "--servers",
        "1",
        "--duration",
        "1",
        "--concurrency",
        "8",
        "--database-url",
        &database,
        "--json",
    ])
    .await;

    let reports = json_lines(&output);
    let report = &reports[0];
    assert_eq!(report["mode"], "sustained");
    assert_eq!(report["verdict"], "correct", "{report}");
    assert!(report["succeeded"].as_u64().unwrap() > 0);
    assert_eq!(report["succeeded"], report["db_orders"]);
    let ceilings: Vec<&str> = report["ceilings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(ceilings, ["postgres_purchase", "http_noop"]);
    assert!(report["ceilings"][0]["ops_per_sec"].as_f64().unwrap() > 0.0);
}

/// Ten thousand concurrent buyers (each with its own connection) over two
/// server processes: never oversold, and the peak memory of the load tool
/// and of each server is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_buyers_never_oversell_and_memory_is_reported() {
    let database = fresh_database().await;

    let output = load(&[
        "run",
        "--level",
        "2",
        "--strategy",
        "atomic",
        "--servers",
        "2",
        "--buyers",
        "10000",
        "--tickets",
        "100",
        "--think-time-ms",
        "0",
        "--database-url",
        &database,
        "--json",
    ])
    .await;

    let report = &json_lines(&output)[0];
    assert_eq!(report["verdict"], "correct", "{report}");
    assert_eq!(report["oversold"], 0);
    assert_eq!(report["db_orders"], 100);
    assert_eq!(report["errors"], 0, "{report}");
    let memory = &report["memory"];
    assert!(
        memory["load_peak_rss_mib"].as_f64().unwrap() > 0.0,
        "{memory}"
    );
    assert_eq!(
        memory["servers_peak_rss_mib"].as_array().unwrap().len(),
        2,
        "{memory}"
    );
}

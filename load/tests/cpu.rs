//! CPU per sale through the command line: a short sustained run reports
//! what the server and PostgreSQL spent per sale, and never guesses for a
//! service given by URL.

mod common;

use common::fresh_database;
use serde_json::Value;

/// `load run --duration 2s` as the JSON report of one round.
async fn sustained_run(database_url: Option<&str>) -> Value {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_load"));
    command
        .args([
            "run",
            "--level",
            "2",
            "--strategy",
            "atomic",
            "--servers",
            "1",
        ])
        .args(["--duration", "2s", "--concurrency", "4", "--json"])
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL");
    if let Some(url) = database_url {
        command.args(["--database-url", url]);
    }
    let output = command.output().await.expect("the load binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    serde_json::from_slice(&output.stdout).expect("one JSON report")
}

/// The CPU per sale of the process named `name`, as the report gives it.
fn us_per_sale(report: &Value, name: &str) -> Value {
    report["cpu"]["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("no CPU processes in {report}"))
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"))["us_per_op"]
        .clone()
}

/// With a throwaway PostgreSQL the tool started, the server and
/// PostgreSQL (postmaster and backends) each spent some CPU per sale, the
/// ceilings have theirs, and the strategy has a floor; with a database
/// given by URL, PostgreSQL's cost is not measured (null), not guessed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_sustained_run_reports_cpu_per_sale_for_the_server_and_postgres() {
    let report = sustained_run(None).await;
    assert!(report["succeeded"].as_u64() > Some(0), "{report}");
    for name in ["load", "server 1", "postgres"] {
        let us = us_per_sale(&report, name).as_f64();
        assert!(us.is_some_and(|us| us > 0.0), "{name}: {us:?} in {report}");
    }
    assert!(
        report["cpu_floor"]["total_us"].as_f64() > Some(0.0),
        "{report}"
    );
    assert!(
        report["cpu_floor"]["ratio"].as_f64() > Some(0.0),
        "{report}"
    );

    let given = fresh_database().await;
    let report = sustained_run(Some(&given)).await;
    assert!(
        us_per_sale(&report, "server 1").as_f64() > Some(0.0),
        "{report}"
    );
    assert_eq!(us_per_sale(&report, "postgres"), Value::Null, "{report}");
    assert_eq!(report["cpu_floor"]["ratio"], Value::Null, "{report}");
}

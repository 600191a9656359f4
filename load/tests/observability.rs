//! What an operator sees of a server: a request id on every answer (and in
//! the load tool's failure samples), JSON logs on request, and a shutdown
//! that does not wait forever for a stuck request.

mod common;

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use common::{fresh_database, servers, stop};
use load::rush::{rush, RushPlan};
use load::servers::{start_in_process, ServerSpec};

/// Every answer carries an `x-request-id`: a new one for each request, or
/// the caller's own, echoed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id_and_echoes_the_callers() {
    let (servers, _database) = servers(&ServerSpec::new(1, "mutex"), 1).await;
    let base = servers[0].url();
    let client = reqwest::Client::new();

    let first = client
        .get(format!("{base}/tickets/1"))
        .send()
        .await
        .unwrap();
    let second = client.get(format!("{base}/nowhere")).send().await.unwrap();
    let given = client
        .get(format!("{base}/health"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();

    let id = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (a, b) = (
        id(&first).expect("a 200 has one"),
        id(&second).expect("a 404 too"),
    );
    assert_eq!(a.len(), 16, "{a}");
    assert_ne!(a, b);
    assert_eq!(id(&given).as_deref(), Some("trace-me-42"));
    stop(servers).await;
}

/// A failed buyer's sample in the report names the server's request id, so
/// the server's log line for it can be found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_answers_sample_names_its_request_id() {
    let database = fresh_database().await;
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/tickets/{id}/orders",
            post(|| async {
                let mut headers = HeaderMap::new();
                headers.insert("x-request-id", "0badc0ffee".parse().unwrap());
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    headers,
                    "{\"code\":\"internal\"}",
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    ticket_core::db::migrate(&load::rush::open_database(&database).await.unwrap())
        .await
        .unwrap();

    let report = rush(&RushPlan {
        buyers: 5,
        tickets: 1,
        ..RushPlan::new(vec![url], &database)
    })
    .await
    .unwrap();

    let sample = &report.error_kinds["5xx"].sample;
    assert!(sample.contains("(x-request-id 0badc0ffee)"), "{sample}");
}

/// A server asked to stop while a request is stuck (a 60 s think time)
/// returns from its stop at the shutdown deadline (0.5 s here), not when
/// the request ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_request_does_not_outlive_the_shutdown_deadline() {
    let database = fresh_database().await;
    let spec = ServerSpec::new(0, "naive")
        .think_time_ms(60_000)
        .args(["--shutdown-timeout-ms", "500"]);
    let mut started = start_in_process(&spec, &database, None, 1).await.unwrap();
    let server = started.pop().unwrap();
    let url = format!("{}/tickets/1/orders", server.url());
    let stuck = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&serde_json::json!({ "user_id": 7 }))
            .send()
            .await
    });
    // The request must be inside the server before the stop; nothing marks
    // the moment, so wait well past a loopback round trip.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let asked = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), server.stop())
        .await
        .expect("the stop returns long before the 60 s request would end")
        .unwrap();

    assert!(asked.elapsed() < Duration::from_secs(20));
    // Still unanswered: the stop did not wait for it. (In a server process,
    // which exits after the stop, its connection closes with it.)
    assert!(!stuck.is_finished(), "the stuck request was answered");
    stuck.abort();
}

/// `--log-format json` makes every log line one JSON object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_logs_json_lines_when_asked() {
    let database = fresh_database().await;
    let port = ticket_core::services::free_port().unwrap().to_string();
    let server = tokio::process::Command::new(env!("CARGO_BIN_EXE_load"))
        .args([
            "serve",
            "level1",
            "--port",
            &port,
            "--database-url",
            &database,
        ])
        .args(["--log-format", "json"])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let health = format!("http://127.0.0.1:{port}/health");
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(&health)
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(Instant::now() < deadline, "the server never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Closing its stdin stops it (its parent is gone); then read what it logged.
    let output = {
        let mut server = server;
        drop(server.stdin.take());
        server.wait_with_output().await.unwrap()
    };

    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the server logged nothing");
    for line in lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value["level"].is_string(), "{line}");
    }
}

//! The server's memory with 10,000 users waiting: a `level5` child process
//! (the bench-profile build), 10,000 joins over HTTP, then its peak
//! resident set (`VmHWM`) against the idle one, and Redis's growth.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt as _};

/// Waiting users.
const USERS: i64 = 10_000;

fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("a VmRSS/VmHWM line")
}

async fn redis_used_memory(redis_url: &str) -> u64 {
    let client = redis::Client::open(redis_url).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis");
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

/// Starts the server, joins `USERS`, prints the figures.
pub fn report(runtime: &tokio::runtime::Runtime, database_url: &str, redis_url: &str) {
    runtime.block_on(async {
        let port = ticket_core::services::free_port().expect("a port");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_level5"))
            .args(["--port", &port.to_string(), "--database-url", database_url])
            .args(["--redis-url", redis_url, "--active-limit", "100"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("level5");
        let pid = child.id().expect("a pid");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while http.get(format!("{url}/livez")).send().await.is_err() {
            assert!(Instant::now() < deadline, "level5 never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The show the bench made first has id 1.
        http.get(format!("{url}/shows")).send().await.expect("warm up");
        let idle = status_kib(pid, "VmRSS:");
        let redis_before = redis_used_memory(redis_url).await;
        let started = Instant::now();
        stream::iter(1..=USERS)
            .map(|user| {
                let http = http.clone();
                let url = url.clone();
                async move {
                    let answer = http
                        .post(format!("{url}/queue"))
                        .json(&serde_json::json!({"user_id": user + 1_000_000, "show_id": 2}))
                        .send()
                        .await
                        .expect("join");
                    assert!(answer.status().is_success(), "join: {}", answer.status());
                }
            })
            .buffer_unordered(200)
            .collect::<Vec<()>>()
            .await;
        let took = started.elapsed();
        let (rss, hwm) = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));
        let redis_after = redis_used_memory(redis_url).await;
        println!(
            "rss: level5 idle {:.1} MiB; after {USERS} joins (200 at a time, {:.1} s): \
             VmRSS {:.1} MiB, VmHWM {:.1} MiB; Redis used_memory +{:.1} MiB ({} bytes per waiting user)",
            idle as f64 / 1024.0,
            took.as_secs_f64(),
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            (redis_after.saturating_sub(redis_before)) as f64 / 1_048_576.0,
            redis_after.saturating_sub(redis_before) / USERS as u64,
        );
        child.kill().await.expect("kill level5");
    });
}

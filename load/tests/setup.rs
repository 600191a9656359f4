//! Setting up a demo without friction: `load services --env-file .env`
//! writes the URLs once, and `load` (like every server) reads `.env`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A fresh empty directory under the system's temporary one.
fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("load-setup-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `load run --target` needs the servers' database; from a directory whose
/// `.env` names it, no flag or export is needed: the run gets past that
/// check and stops at the (unreachable) target instead.
#[tokio::test]
async fn load_reads_the_database_url_from_a_dot_env_file() {
    let dir = scratch_dir();
    std::fs::write(
        dir.join(".env"),
        "DATABASE_URL=postgres://127.0.0.1:1/nowhere\n",
    )
    .unwrap();

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_load"))
        .args(["run", "--level", "1", "--target", "http://127.0.0.1:1"])
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .await
        .unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("--database-url"), "{stderr}");
    assert!(stderr.contains("http://127.0.0.1:1"), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `load services --env-file F` writes `DATABASE_URL=...` for a database
/// that answers, and deletes the file when Ctrl-C stops the services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_services_writes_its_urls_to_an_env_file_and_removes_it_at_exit() {
    use nix::sys::signal::{kill, Signal};
    let dir = scratch_dir();
    let file = dir.join(".env");
    let mut services = tokio::process::Command::new(env!("CARGO_BIN_EXE_load"))
        .args(["services", "--env-file"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !file.exists() {
        assert!(Instant::now() < deadline, "no env file within 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let text = std::fs::read_to_string(&file).unwrap();
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("DATABASE_URL="))
        .expect("the file names the database");
    let pool = ticket_core::db::connect(url, 1, Duration::from_secs(10))
        .await
        .expect("the database it names answers");
    pool.close().await;
    let pid = nix::unistd::Pid::from_raw(services.id().unwrap() as i32);
    kill(pid, Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), services.wait())
        .await
        .expect("the services stop")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(!file.exists(), "the env file outlived its services");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Every host port docker-compose.yml publishes can be moved without
/// editing the file (`PG_PORT=55432 docker compose up`): 5432 and 6379 are
/// usually taken on a machine with PostgreSQL or Redis installed.
#[test]
fn every_compose_host_port_can_be_overridden() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let compose = std::fs::read_to_string(path).unwrap();
    let published: Vec<&str> = compose
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("- \"127.0.0.1:"))
        .collect();
    assert!(published.len() >= 2, "{published:?}");
    for line in published {
        let host_port = line.trim_start_matches("- \"127.0.0.1:");
        assert!(
            host_port.starts_with("${") && host_port.contains(":-"),
            "a fixed host port: {line}"
        );
    }
    for name in ["PG_PORT", "REDIS_PORT"] {
        assert!(compose.contains(&format!("${{{name}:-")), "{name}");
    }
}

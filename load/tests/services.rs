//! Throwaway services never outlive the process that started them: not
//! after Ctrl-C, not even after SIGKILL.

use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// Starts `load services --redis`, returns the child and the ports it printed.
async fn start_services() -> (tokio::process::Child, Vec<u16>) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_load"))
        .args(["services", "--redis"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("load services starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ports = Vec::new();
    while ports.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("services print their URLs in time")
            .unwrap()
            .expect("a URL line");
        // export DATABASE_URL=postgres://postgres@127.0.0.1:PORT/postgres
        let port = line
            .rsplit(':')
            .next()
            .and_then(|tail| tail.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        ports.push(port);
    }
    (child, ports)
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

async fn assert_stop_listening(ports: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while ports.iter().any(|&p| listening(p)) {
        assert!(
            Instant::now() < deadline,
            "a service still listens on {ports:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGKILL gives the process no chance to clean up; the supervisors see
/// their pipe close and stop PostgreSQL and Redis anyway.
#[tokio::test]
async fn services_stop_when_their_process_is_killed() {
    let (mut child, ports) = start_services().await;
    assert!(
        ports.iter().all(|&p| listening(p)),
        "services are up on {ports:?}"
    );

    child.kill().await.unwrap();
    child.wait().await.unwrap();

    assert_stop_listening(&ports).await;
}

/// Ctrl-C (SIGINT) stops the services too.
#[tokio::test]
async fn services_stop_on_ctrl_c() {
    let (mut child, ports) = start_services().await;
    assert!(ports.iter().all(|&p| listening(p)));

    let pid = Pid::from_raw(child.id().unwrap() as i32);
    kill(pid, Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("load services exits after Ctrl-C")
        .unwrap();

    assert!(status.success(), "{status}");
    assert_stop_listening(&ports).await;
}

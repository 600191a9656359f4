//! Building the learner's code and serving it: `cargo build -p exercises`,
//! then `exercise-server --exercise N` processes on free ports, sharing one
//! database (and one Redis), exactly as two level servers would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

use super::catalogue::{workspace_root, ExerciseInfo};
use super::judge::{judge, Judgement, RushSize, Targets};
use super::CheckArgs;
use crate::run::Services;
use crate::servers::wait_until_ready;

/// Builds the exercises crate and checks `exercise` with a rush of `size`;
/// `None` when the learner's code does not compile (cargo has said why).
pub async fn build_and_check(
    exercise: &ExerciseInfo,
    args: &CheckArgs,
    size: RushSize,
) -> anyhow::Result<Option<Judgement>> {
    let Some(binary) = build().await? else {
        return Ok(None);
    };
    let services = Services::find(
        args.database_url.clone(),
        args.redis_url.clone(),
        exercise.needs_redis,
        None,
    )
    .await?;
    let redis_url = services.redis_url().map(str::to_owned);
    let mut servers = Vec::new();
    // A plain `kill` (SIGTERM) of this process must not leave the servers
    // behind: kill_on_drop only acts on an orderly exit, so the signal
    // ends the check here and the servers are stopped below like after a
    // verdict. (Ctrl-C signals the whole process group, servers included.)
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    let judged = async {
        for _ in 0..exercise.servers {
            servers.push(start(
                &binary,
                exercise,
                services.database_url(),
                redis_url.as_deref(),
            )?);
        }
        for server in &servers {
            if let Err(err) = wait_until_ready(&server.url, Duration::from_secs(60)).await {
                let log = std::fs::read_to_string(&server.log).unwrap_or_default();
                anyhow::bail!("{err:#}; the server said:\n{log}");
            }
        }
        let targets = Targets {
            urls: servers.iter().map(|s| s.url.clone()).collect(),
            database_url: services.database_url().to_owned(),
            redis_url: redis_url.clone(),
            ticket_id: 1,
        };
        let mut judged = judge(exercise, &targets, size).await?;
        if !judged.passed {
            if let Some(line) = servers.iter().find_map(|s| first_error(&s.log)) {
                judged
                    .findings
                    .push(format!("Your server's log says: {line}"));
            }
        }
        anyhow::Ok(judged)
    };
    let judged = tokio::select! {
        judged = judged => judged,
        _ = sigterm.recv() => Err(anyhow::anyhow!("stopped by SIGTERM; the servers are stopped too")),
    };
    for server in servers {
        server.stop().await;
    }
    judged.map(Some)
}

/// `cargo build -p exercises --bin exercise-server`, with cargo's own
/// output on the terminal. The binary's path, or `None` when it failed.
async fn build() -> anyhow::Result<Option<PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("Building your code: cargo build -p exercises");
    let status = Command::new(&cargo)
        .args(["build", "-p", "exercises", "--bin", "exercise-server"])
        .current_dir(workspace_root())
        .status()
        .await
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        return Ok(None);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    Ok(Some(target.join("debug").join("exercise-server")))
}

/// The first ERROR line of a server's log, without its colours and
/// timestamp: what the learner's code said when it answered 500.
fn first_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|line| line.contains("ERROR"))?;
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    let message = plain
        .split_once("ERROR")
        .map_or(plain.as_str(), |(_, rest)| rest);
    Some(message.trim().to_owned())
}

/// One exercise server, as a child process.
struct ExerciseServer {
    url: String,
    child: Child,
    /// Its log (stderr): the learner's errors end up here, not in the
    /// explanation.
    log: PathBuf,
}

impl ExerciseServer {
    /// SIGTERM (it finishes requests in flight), then SIGKILL after 10 s.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn start(
    binary: &Path,
    exercise: &ExerciseInfo,
    database_url: &str,
    redis_url: Option<&str>,
) -> anyhow::Result<ExerciseServer> {
    let port = ticket_core::services::free_port()?;
    let mut command = Command::new(binary);
    command
        .args(["--exercise", &exercise.number.to_string()])
        .args(["--port", &port.to_string()])
        .args(["--database-url", database_url])
        .args(["--think-time-ms", &exercise.think_time_ms.to_string()]);
    if let Some(redis_url) = redis_url {
        command.args(["--redis-url", redis_url]);
    }
    let log = std::env::temp_dir().join(format!(
        "ticket-rush-exercise-{}-{port}-{}.log",
        exercise.number,
        std::process::id()
    ));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = command
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    Ok(ExerciseServer {
        url: format!("http://127.0.0.1:{port}"),
        child,
        log,
    })
}

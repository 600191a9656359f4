//! Level 5 servers as child processes (`load serve level5 ...`), the way
//! `load run` starts the other levels: each is its own operating-system
//! process, sharing only PostgreSQL and Redis with the others, so killing one
//! is a real crash.
//!
//! Level 5's server is a [`level5::BoxOffice`], not ticket-core's
//! `RunningServer`, so it is started here rather than through
//! [`crate::levels`]; the rest (free ports, `/health`, the parent-gone pipe)
//! is the same machinery.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser as _;
use tokio::process::{Child, ChildStdin, Command};

/// The binary name `load serve` knows Level 5 by.
pub const BINARY: &str = "level5";

/// A Level 5 server running as a child process.
///
/// Its stdin is a pipe from us: when this process ends in any way, the pipe
/// closes and the server shuts itself down, so no server outlives the run.
pub struct BoxOfficeProcess {
    url: String,
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl BoxOfficeProcess {
    /// Its base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills it at once with SIGKILL, as a crash would.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("cannot kill the server")
    }

    /// Asks it to shut down gracefully and waits (at most 10 s, then kills).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => {
                status.context("waiting for the server")?;
            }
            Err(_) => self.child.kill().await.context("cannot kill the server")?,
        }
        Ok(())
    }

    /// The last lines the server logged.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for BoxOfficeProcess {
    fn drop(&mut self) {
        // kill_on_drop stops the child; the log is ours to remove.
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Starts `count` Level 5 servers from `exe` (the `load` binary), each with
/// `--port P` followed by `args`, and waits until each answers `/health`.
/// The admin token travels in the environment (`ADMIN_TOKEN`), not on the
/// command line, where any user of the machine could read it.
pub async fn start(
    exe: &Path,
    args: &[String],
    admin_token: &str,
    count: usize,
) -> anyhow::Result<Vec<BoxOfficeProcess>> {
    let mut started = Vec::with_capacity(count);
    for _ in 0..count {
        let port = ticket_core::services::free_port()?;
        let log = std::env::temp_dir().join(format!(
            "ticket-rush-{BINARY}-{port}-{}.log",
            std::process::id()
        ));
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = Command::new(exe)
            .args(["serve", BINARY, "--port", &port.to_string()])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("ADMIN_TOKEN", admin_token)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", exe.display()))?;
        let stdin = child.stdin.take();
        started.push(BoxOfficeProcess {
            url: format!("http://127.0.0.1:{port}"),
            child,
            stdin,
            log,
        });
    }
    for server in &mut started {
        wait_until_healthy(server).await?;
    }
    Ok(started)
}

async fn wait_until_healthy(server: &mut BoxOfficeProcess) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            bail!(
                "the Level 5 server for {} exited ({status}) before answering:\n{}",
                server.url,
                server.log_tail()
            );
        }
        if crate::servers::wait_until_ready(&server.url, Duration::from_millis(200))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the Level 5 server for {} did not answer /health within 60 s:\n{}",
                server.url,
                server.log_tail()
            );
        }
    }
}

/// Stops every server, logging (not failing on) one that will not stop.
pub async fn stop_all(servers: Vec<BoxOfficeProcess>) {
    for server in servers {
        if let Err(err) = server.stop().await {
            tracing::warn!("stopping a Level 5 server: {err:#}");
        }
    }
}

/// `load serve level5 ...`: runs one Level 5 server in this process until
/// Ctrl-C, SIGTERM, or the parent that started it is gone.
pub async fn serve(args: Vec<String>) -> anyhow::Result<()> {
    let cli = level5::Cli::try_parse_from(args)?;
    let server = cli.start().await?;
    tokio::select! {
        () = ticket_core::server::shutdown_signal() => {},
        () = crate::servers::parent_gone() => {},
    }
    server.stop().await
}

//! Starting the servers a rush is aimed at: in this process (fast, for
//! tests) or as separate operating-system processes (what a real deployment
//! and the tour do: two processes share nothing but the database).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ticket_core::RunningServer;
use tokio::io::AsyncReadExt as _;
use tokio::process::{Child, ChildStdin, Command};

use crate::levels::{level, LevelInfo};

/// What to start: a level, a strategy and its knobs.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The level number.
    pub level: u8,
    /// The strategy's name.
    pub strategy: String,
    /// `--think-time-ms` for every server.
    pub think_time_ms: u64,
    /// More flags for the level's binary (`--max-retries`, `--lease-ms`...).
    pub extra_args: Vec<String>,
}

impl ServerSpec {
    /// A spec with no think time and no extra flags.
    pub fn new(level: u8, strategy: impl Into<String>) -> Self {
        Self {
            level,
            strategy: strategy.into(),
            think_time_ms: 0,
            extra_args: Vec::new(),
        }
    }

    /// The same spec with a think time.
    pub fn think_time_ms(mut self, ms: u64) -> Self {
        self.think_time_ms = ms;
        self
    }

    /// The same spec with extra flags for the level's binary.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The level's command line for one server.
    pub fn command_line(
        &self,
        info: &LevelInfo,
        port: u16,
        database_url: &str,
        redis_url: Option<&str>,
    ) -> anyhow::Result<Vec<String>> {
        let mut args = vec![
            info.binary.to_owned(),
            "--port".into(),
            port.to_string(),
            "--database-url".into(),
            database_url.to_owned(),
            "--strategy".into(),
            self.strategy.clone(),
            "--think-time-ms".into(),
            self.think_time_ms.to_string(),
        ];
        if info.needs_redis {
            let redis_url = redis_url.with_context(|| {
                format!(
                    "level {} needs Redis, and no Redis URL was given",
                    info.number
                )
            })?;
            args.extend(["--redis-url".to_owned(), redis_url.to_owned()]);
        }
        args.extend(self.extra_args.iter().cloned());
        Ok(args)
    }
}

/// Starts `count` servers inside this process, each with its own strategy
/// instance (its own locks), on free ports. Two of them behave like two
/// processes for everything but a crash.
pub async fn start_in_process(
    spec: &ServerSpec,
    database_url: &str,
    redis_url: Option<&str>,
    count: usize,
) -> anyhow::Result<Vec<RunningServer>> {
    let info = level(spec.level)?;
    let mut servers = Vec::with_capacity(count);
    for _ in 0..count {
        let args = spec.command_line(&info, 0, database_url, redis_url)?;
        servers.push((info.start)(args).await?);
    }
    Ok(servers)
}

/// The base URLs of running servers.
pub fn urls(servers: &[RunningServer]) -> Vec<String> {
    servers.iter().map(RunningServer::url).collect()
}

/// A server running as a child process (`load serve levelN ...`).
///
/// Its stdin is a pipe from us: when this process ends in any way, the pipe
/// closes and the server shuts itself down, so no server outlives the run.
pub struct ServerProcess {
    url: String,
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl ServerProcess {
    /// Its base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its operating-system process id (for tests that kill it).
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
        let _ = std::fs::remove_file(&self.log);
        Ok(())
    }

    /// The last lines the server logged.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // kill_on_drop stops the child; the log is ours to remove.
        let _ = std::fs::remove_file(&self.log);
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Starts `count` servers as child processes of `exe` (the `load` binary,
/// which runs them with its hidden `serve` command) and waits until each
/// answers `/health`.
pub async fn start_processes(
    exe: &Path,
    spec: &ServerSpec,
    database_url: &str,
    redis_url: Option<&str>,
    count: usize,
) -> anyhow::Result<Vec<ServerProcess>> {
    let info = level(spec.level)?;
    spawn_processes(exe, info.binary, count, &[], |port| {
        spec.command_line(&info, port, database_url, redis_url)
    })
    .await
}

/// Starts `count` children of `exe` running `load serve` with the arguments
/// `args(port)` gives for a free port each, and `env` set; their stderr goes
/// to a log named after `name`. Waits until each answers `/health`. The one
/// way `load` starts server processes, whichever kind of server they run.
pub async fn spawn_processes(
    exe: &Path,
    name: &str,
    count: usize,
    env: &[(&str, &str)],
    args: impl Fn(u16) -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<Vec<ServerProcess>> {
    let mut started = Vec::with_capacity(count);
    for _ in 0..count {
        let port = ticket_core::services::free_port()?;
        let log = std::env::temp_dir().join(format!(
            "ticket-rush-{name}-{port}-{}.log",
            std::process::id()
        ));
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = Command::new(exe)
            .arg("serve")
            .args(args(port)?)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", exe.display()))?;
        let stdin = child.stdin.take();
        started.push(ServerProcess {
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

async fn wait_until_healthy(server: &mut ServerProcess) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            bail!(
                "the server for {} exited ({status}) before answering:\n{}",
                server.url,
                server.log_tail()
            );
        }
        if is_healthy(&client, &server.url).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the server for {} did not answer /health within 60 s:\n{}",
                server.url,
                server.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the server at `url` answers `/health` with 200, at most
/// `within`. A server is listening before it can sell: its `/health` says
/// when it can (Level 4, for instance, must first read its Redis namespace
/// from PostgreSQL).
pub async fn wait_until_ready(url: &str, within: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + within;
    while !is_healthy(&client, url).await {
        if Instant::now() > deadline {
            bail!("the server at {url} did not answer /health within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn is_healthy(client: &reqwest::Client, url: &str) -> bool {
    client
        .get(format!("{url}/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|response| response.status().is_success())
}

/// A `--target` as the buyers will use it: trimmed, `http://` or
/// `https://`, no trailing `/` (so `{target}/tickets/..` has one slash).
pub fn normalise_target(raw: &str) -> anyhow::Result<String> {
    let trimmed = raw.trim().trim_end_matches('/');
    let url = reqwest::Url::parse(trimmed).map_err(|err| {
        anyhow::anyhow!("--target {raw:?} is not a URL ({err}): write it as http://HOST:PORT")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        bail!("--target {raw:?} is not an http:// or https:// URL: write it as http://HOST:PORT");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("--target {raw:?} has a query or fragment: give only the server's base URL");
    }
    Ok(trimmed.to_owned())
}

/// Checks that every target answers `GET /health` with 200 before any buyer
/// is released, so a typo, a stopped server or a server whose database is
/// down is one clear message instead of a thousand `errors`. Connecting is
/// given one second, the answer two more.
pub async fn check_targets(targets: &[String]) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()?;
    let checks = targets.iter().map(|target| {
        let client = client.clone();
        async move {
            let url = format!("{target}/health");
            match client.get(&url).send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => {
                    let status = response.status();
                    let body: String = response
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(200)
                        .collect();
                    bail!(
                        "target {target} is not ready: GET /health answered {status} {}{}",
                        body.trim(),
                        if status.as_u16() == 404 {
                            " (is this a ticket-rush server, and the URL its base, without a path?)"
                        } else {
                            " (is its database, or Redis, reachable?)"
                        }
                    )
                }
                Err(err) => bail!(
                    "cannot reach target {target}: GET /health failed: {} (is the server running, on that host and port?)",
                    crate::failures::chain(&err)
                ),
            }
        }
    });
    for result in futures::future::join_all(checks).await {
        result?;
    }
    Ok(())
}

/// Waits until standard input closes (the parent that started us is gone),
/// then returns. `load serve` shuts its server down when this resolves.
pub async fn parent_gone() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_lose_their_trailing_slash_and_need_a_scheme() {
        assert_eq!(
            normalise_target(" http://127.0.0.1:8080/ ").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            normalise_target("http://host:1/api//").unwrap(),
            "http://host:1/api"
        );
        let err = normalise_target("127.0.0.1:8080").unwrap_err().to_string();
        assert!(err.contains("http://HOST:PORT"), "{err}");
        assert!(normalise_target("ftp://host").is_err());
        assert!(normalise_target("http://host/?x=1").is_err());
    }
}

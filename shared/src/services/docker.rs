//! The testcontainers path, for machines with Docker and no local binaries.
//!
//! Two traps are avoided here. testcontainers' blocking runner drives its
//! own Tokio runtime with `block_on`, which panics when called from inside
//! another runtime (every `#[tokio::test]`): so each call runs on a thread of
//! its own. And a container kept in a `static` is never dropped, so it
//! would outlive the tests: so, like the throwaway servers above, each
//! container gets a small `sh` reaper reading a pipe from this process, which
//! runs `docker rm -f` when the pipe closes, however this process ends.

use std::process::{Child, Command, Stdio};

use anyhow::Context as _;
use testcontainers_modules::testcontainers::runners::SyncRunner as _;
use testcontainers_modules::testcontainers::ImageExt as _;

/// A running container, removed when this value is dropped or, for a
/// value never dropped, when this process ends.
pub struct Container {
    inner: Option<Box<dyn std::any::Any + Send + Sync>>,
    reaper: Child,
}

impl Drop for Container {
    fn drop(&mut self) {
        // The blocking container's own drop calls `block_on`: give it a
        // thread with no runtime, as for the start.
        if let Some(inner) = self.inner.take() {
            let _ = std::thread::spawn(move || drop(inner)).join();
        }
        // Closing the reaper's stdin makes it remove the container (a
        // no-op when the drop above already did).
        drop(self.reaper.stdin.take());
        let _ = self.reaper.wait();
    }
}

/// Runs `start` on a thread of its own (no Tokio runtime there), and
/// attaches a reaper to the container it returns with its id and port.
fn start_off_runtime<C: Send + Sync + 'static>(
    what: &str,
    start: impl FnOnce() -> anyhow::Result<(C, String, u16)> + Send,
) -> anyhow::Result<(u16, Container)> {
    let docker = super::supervise::which("docker").with_context(|| {
        format!(
            "cannot use Docker for {what}: the `docker` command is not on PATH (it removes \
             the container when this process ends)"
        )
    })?;
    let (container, id, port) = std::thread::scope(|scope| {
        scope
            .spawn(start)
            .join()
            .map_err(|_| anyhow::anyhow!("testcontainers panicked while starting {what}"))
    })??;
    let reaper = Command::new("sh")
        .arg("-c")
        .arg(r#"read -r _ || true; "$DOCKER" rm -f -v "$ID" >/dev/null 2>&1 || true"#)
        .env("DOCKER", docker)
        .env("ID", id)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start the reaper of the {what} container"))?;
    Ok((
        port,
        Container {
            inner: Some(Box::new(container)),
            reaper,
        },
    ))
}

/// PostgreSQL 15 in a container, as the tests expect it.
pub fn postgres() -> anyhow::Result<(String, Container)> {
    let (port, container) = start_off_runtime("PostgreSQL", || {
        let container = testcontainers_modules::postgres::Postgres::default()
            .with_host_auth()
            .with_tag("15")
            .with_cmd(["postgres", "-c", "max_connections=600", "-c", "fsync=off"])
            .start()
            .context("cannot start PostgreSQL with testcontainers (is a Docker engine running?)")?;
        let port = container.get_host_port_ipv4(5432)?;
        Ok((container.id().to_owned(), port)).map(|(id, port)| (container, id, port))
    })?;
    Ok((
        format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        container,
    ))
}

/// Redis 7 in a container.
pub fn redis() -> anyhow::Result<(String, Container)> {
    let (port, container) = start_off_runtime("Redis", || {
        let container = testcontainers_modules::redis::Redis::default()
            .with_tag("7")
            .start()
            .context("cannot start Redis with testcontainers (is a Docker engine running?)")?;
        let port = container.get_host_port_ipv4(6379)?;
        Ok((container.id().to_owned(), port)).map(|(id, port)| (container, id, port))
    })?;
    Ok((format!("redis://127.0.0.1:{port}/"), container))
}

#[cfg(test)]
mod tests {
    /// Inside a Tokio runtime, as every async test is, a Docker start
    /// that cannot succeed (no engine here) is an error that says why,
    /// never the blocking runner's "runtime within a runtime" panic.
    #[tokio::test]
    async fn docker_unusable_inside_a_runtime_is_an_error_that_says_why() {
        for result in [super::postgres().map(|_| ()), super::redis().map(|_| ())] {
            let err = format!("{:#}", result.expect_err("no Docker engine runs here"));
            assert!(err.contains("Docker") || err.contains("docker"), "{err}");
        }
    }
}

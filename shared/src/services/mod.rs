//! Finding PostgreSQL and Redis: the one module that tests, the load tool and
//! the server binaries all use.
//!
//! In this order:
//! 1. a URL given by flag or environment (`DATABASE_URL`, `REDIS_URL`);
//! 2. otherwise a throwaway server started from the binaries on `PATH`
//!    (`initdb`/`pg_ctl`/`postgres`, `redis-server`) on a free loopback port,
//!    in a temporary directory;
//! 3. otherwise, when built with the `docker` feature and a Docker engine
//!    answers, a container started with testcontainers;
//! 4. otherwise a clear error that says what to install (or to use
//!    `docker compose up`, see the README).
//!
//! A throwaway server is watched by a small `sh` supervisor whose standard
//! input is a pipe from this process. When this process ends *in any way* (a
//! normal exit, a panic, Ctrl-C, even SIGKILL) the pipe closes, the
//! supervisor reads end-of-file, stops the server and deletes its directory.
//! That is what lets a test binary keep one server in a `static` (never
//! dropped) without leaking processes.
//!
//! One file each: [`postgres`](Postgres), [`redis`](Redis), a Redis Cluster of
//! six of those ([`cluster`](RedisCluster)), the `sh`
//! supervisor (`supervise.rs`) and, behind the feature, `docker.rs`.
//!
//! PostgreSQL refuses to run as root; when this process is root, the server
//! runs as the `postgres` user.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;

mod cluster;
#[cfg(feature = "docker")]
mod docker;
mod postgres;
mod redis;
mod supervise;

pub use cluster::{key_slot, ClusterMaster, RedisCluster};
pub use postgres::{with_database, Postgres};
pub use redis::Redis;

/// How long a throwaway server may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How hard a throwaway PostgreSQL works to keep a commit through a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `fsync=off`, `synchronous_commit=off`, `full_page_writes=off`: a
    /// commit returns before it reaches the disk. Fast, and fine for data
    /// nobody keeps (tests, and the figures labelled "fast").
    #[default]
    Fast,
    /// PostgreSQL's defaults (`fsync`, `synchronous_commit`,
    /// `full_page_writes` on): a commit returns once its WAL is flushed. A
    /// hot row's sales are then capped near 1 / (flush latency).
    Durable,
}

impl Durability {
    /// The `postgres -c` options that select this durability.
    fn postgres_options(self) -> &'static str {
        match self {
            Self::Fast => "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            Self::Durable => "-c fsync=on -c synchronous_commit=on -c full_page_writes=on",
        }
    }
}

/// Asks the kernel for a free loopback port. Another process could take it
/// before the server binds; the window is tiny and a failed start says so.
pub fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The server a URL in environment variable `var` names (`external`), or,
/// when it is unset or blank, the one `throwaway` starts.
fn from_env_or<T>(
    external: fn(String) -> T,
    var: &str,
    throwaway: fn() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Ok(external(url)),
        _ => throwaway(),
    }
}

/// The one value `cell` holds for this process, made by `start` on first
/// use; a failed start is kept and reported to every caller.
fn once<T>(
    cell: &'static OnceLock<Result<T, String>>,
    start: fn() -> anyhow::Result<T>,
) -> anyhow::Result<&'static T> {
    cell.get_or_init(|| start().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

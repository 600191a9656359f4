//! `load services`: a throwaway PostgreSQL (and Redis, or a Redis Cluster)
//! for a two-terminal demo, with their URLs printed and optionally written
//! to a `.env` file, stopped on Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

/// The flags of `load services`.
#[derive(Args, Debug)]
pub struct ServicesArgs {
    /// Also start Redis (for Level 3 and up).
    #[arg(long)]
    pub redis: bool,

    /// Start a Redis Cluster instead (three masters, three replicas, from
    /// local `redis-server` and `redis-cli`): `REDIS_URL` is then a
    /// `redis+cluster://host:port,...` URL that every level's
    /// `--redis-url` takes (see docs/08-cluster.md).
    #[arg(long, conflicts_with = "redis")]
    pub redis_cluster: bool,

    /// Also write the URLs into this file (DATABASE_URL=..., REDIS_URL=...)
    /// while the services run, and delete it when they stop. Name it `.env`
    /// and every server and `load` started in that directory (or below)
    /// reads it: no `export` in each terminal.
    #[arg(long, value_name = "PATH")]
    pub env_file: Option<PathBuf>,
}

/// Starts the services, prints their URLs, and waits for Ctrl-C or SIGTERM.
pub async fn command(args: ServicesArgs) -> anyhow::Result<ExitCode> {
    // Install the handlers before anything is printed: a Ctrl-C that comes
    // right after the URLs must stop the services, not kill this process
    // before it can.
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle Ctrl-C")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let postgres =
        tokio::task::spawn_blocking(ticket_core::services::Postgres::throwaway).await??;
    let redis = if args.redis {
        Some(tokio::task::spawn_blocking(ticket_core::services::Redis::throwaway).await??)
    } else {
        None
    };
    let cluster = if args.redis_cluster {
        Some(tokio::task::spawn_blocking(ticket_core::services::RedisCluster::throwaway).await??)
    } else {
        None
    };
    let mut env = format!("DATABASE_URL={}\n", postgres.url());
    if let Some(redis) = &redis {
        env.push_str(&format!("REDIS_URL={}\n", redis.url()));
    }
    if let Some(cluster) = &cluster {
        env.push_str(&format!("REDIS_URL={}\n", cluster.url()));
    }
    for line in env.lines() {
        println!("export {line}");
    }
    if let Some(path) = &args.env_file {
        std::fs::write(path, &env).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "Wrote {}; servers and load started beside it read it.",
            path.display()
        );
    }
    eprintln!("Paste the line(s) above into each terminal. Ctrl-C stops the services.");
    tokio::select! {
        _ = interrupt.recv() => {},
        _ = terminate.recv() => {},
    }
    if let Some(path) = &args.env_file {
        // The URLs die with the services: leave no file pointing at them.
        let _ = std::fs::remove_file(path);
    }
    Ok(ExitCode::SUCCESS)
}

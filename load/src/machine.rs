//! The machine and services a run measured on (CPU, cores, PostgreSQL and
//! Redis versions and durability settings), so that every figure a report
//! shows says where it came from.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Where and on what a report was measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model, from /proc/cpuinfo.
    pub cpu: String,
    /// Logical cores available to the load tool.
    pub cores: usize,
    /// Total memory in MiB.
    pub memory_mib: u64,
    /// The kernel.
    pub kernel: String,
    /// `SELECT version()` of the database.
    pub postgres: String,
    /// Redis's version, when Redis was used.
    pub redis: Option<String>,
    /// The load tool's version.
    pub load_version: String,
    /// PostgreSQL's durability settings as the server reports them
    /// (`fsync`, `synchronous_commit`, `full_page_writes`).
    #[serde(default)]
    pub postgres_settings: String,
    /// Redis's persistence settings as it reports them (`appendonly`,
    /// `appendfsync`, `save`), when Redis was used.
    #[serde(default)]
    pub redis_settings: Option<String>,
}

impl Machine {
    /// Reads the machine's facts, and asks the services for their versions.
    pub async fn describe(database_url: &str, redis_url: Option<&str>) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let (postgres, postgres_settings) = match crate::client::open_database(database_url).await {
            Ok(pool) => {
                let version: String = sqlx::query_scalar("SELECT version()")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or_default();
                let settings: String = sqlx::query_scalar(
                    "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings \
                     WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes')",
                )
                .fetch_one(&pool)
                .await
                .unwrap_or_default();
                pool.close().await;
                (version, settings)
            }
            Err(_) => (String::new(), String::new()),
        };
        let (redis, redis_settings) = match redis_url {
            Some(url) => (
                redis_version(url).await.ok(),
                redis_settings(url).await.ok(),
            ),
            None => (None, None),
        };
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib,
            kernel,
            postgres,
            redis,
            load_version: env!("CARGO_PKG_VERSION").to_owned(),
            postgres_settings,
            redis_settings,
        }
    }

    /// The durability settings on one line, for headers: every figure is
    /// shown with the settings it was measured under.
    pub fn settings_line(&self) -> String {
        let mut line = format!("PostgreSQL {}", self.postgres_settings);
        if let Some(redis) = &self.redis_settings {
            line.push_str(&format!("; Redis {redis}"));
        }
        line
    }
}

async fn redis_settings(url: &str) -> anyhow::Result<String> {
    // A cluster's nodes share their settings: ask the first.
    let client = redis::Client::open(ticket_core::redis_conn::one_node_url(url))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut out = Vec::new();
    for name in ["appendonly", "appendfsync", "save"] {
        let pair: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(&mut conn)
            .await?;
        let value = pair.get(1).cloned().unwrap_or_default();
        let value = if value.is_empty() {
            "''".to_owned()
        } else {
            value
        };
        out.push(format!("{name}={value}"));
    }
    Ok(out.join(" "))
}

async fn redis_version(url: &str) -> anyhow::Result<String> {
    let client = redis::Client::open(ticket_core::redis_conn::one_node_url(url))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned())
        .context("no redis_version in INFO")
}

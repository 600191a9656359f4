//! A throwaway Redis Cluster: six `redis-server --cluster-enabled yes` on
//! loopback (three masters, three replicas), joined by
//! `redis-cli --cluster create`. No Docker.
//!
//! Each node is a [`Redis`] started by [`Redis::throwaway_on`] with the
//! cluster options, so it lives under the same `sh` supervisor as every
//! other throwaway server: it stops when its [`Redis`] drops, and when this
//! process ends however it ends.
//!
//! A cluster URL names seed nodes after a `redis+cluster://` scheme:
//! `redis+cluster://127.0.0.1:7000,127.0.0.1:7001` (see
//! [`crate::redis_conn`]). Any one live node is enough for a client to
//! learn the whole slot map; more seeds survive a seed that died.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::free_port;
use super::redis::Redis;
use super::supervise::which;

/// How many masters a throwaway cluster has (each with one replica).
pub const MASTERS: usize = 3;

/// The number of hash slots of every Redis Cluster.
pub const SLOTS: u16 = 16384;

/// How long a throwaway cluster may take to cover every slot, and to elect
/// a new master after one dies. `cluster-node-timeout` is [`NODE_TIMEOUT_MS`];
/// an election takes about twice that; this bound is many times more.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// `cluster-node-timeout` of a throwaway cluster: how long a node may be
/// unreachable before the others count it as failed. Redis's default is
/// 15 s; 2 s keeps failover tests short while a busy two-core machine
/// (builds running) still answers pings well within it.
pub const NODE_TIMEOUT_MS: u64 = 2000;

/// One node of a throwaway cluster.
struct Node {
    port: u16,
    server: Option<Redis>,
}

/// A throwaway Redis Cluster of [`MASTERS`] masters and as many replicas,
/// or one someone else runs (a `redis+cluster://` URL).
pub struct RedisCluster {
    url: String,
    nodes: Vec<Node>,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("url", &self.url)
            .field("throwaway_nodes", &self.nodes.len())
            .finish()
    }
}

/// A master and the slot ranges it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMaster {
    /// Its loopback port.
    pub port: u16,
    /// The slot ranges it serves, inclusive at both ends.
    pub slots: Vec<(u16, u16)>,
}

impl ClusterMaster {
    /// Whether it serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|&(start, end)| (start..=end).contains(&slot))
    }
}

impl RedisCluster {
    /// A cluster someone else runs, named by a `redis+cluster://` URL.
    pub fn external(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            nodes: Vec::new(),
        }
    }

    /// `REDIS_CLUSTER_URL` if set, otherwise a throwaway cluster.
    pub fn from_env_or_throwaway() -> anyhow::Result<Self> {
        super::from_env_or(Self::external, "REDIS_CLUSTER_URL", Self::throwaway)
    }

    /// One cluster per process, started on first use (see
    /// [`Postgres::shared`](super::Postgres::shared)). Tests that kill nodes
    /// start their own with [`RedisCluster::throwaway`].
    pub fn shared() -> anyhow::Result<&'static RedisCluster> {
        static SHARED: OnceLock<Result<RedisCluster, String>> = OnceLock::new();
        super::once(&SHARED, Self::from_env_or_throwaway)
    }

    /// Starts six nodes on free loopback ports, joins them into three
    /// masters with one replica each, and waits until every node reports
    /// `cluster_state:ok` with all 16384 slots covered and every replica
    /// attached.
    pub fn throwaway() -> anyhow::Result<Self> {
        let cli = which("redis-cli").context(
            "no redis-cli found on PATH (Debian: apt-get install redis-tools); it joins the \
             nodes of a throwaway Redis Cluster",
        )?;
        let mut nodes = Vec::with_capacity(MASTERS * 2);
        for _ in 0..MASTERS * 2 {
            let (port, bus_port) = (free_port()?, free_port()?);
            let timeout = NODE_TIMEOUT_MS.to_string();
            let bus = bus_port.to_string();
            let server = Redis::throwaway_on(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    &timeout,
                    // A replica may be promoted however long it was cut off:
                    // the tests decide when a master dies, not the clock.
                    "--cluster-replica-validity-factor",
                    "0",
                ],
            )
            .context("cannot start a Redis Cluster node")?;
            nodes.push(Node {
                port,
                server: Some(server),
            });
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new(cli)
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .context("cannot run redis-cli --cluster create")?;
        if !output.status.success() {
            bail!(
                "redis-cli --cluster create failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let cluster = Self {
            url: format!("redis+cluster://{}", addresses.join(",")),
            nodes,
        };
        cluster
            .wait_until_ok(MASTERS * 2)
            .context("the throwaway Redis Cluster did not settle")?;
        tracing::info!(url = %cluster.url, "started a throwaway Redis Cluster");
        Ok(cluster)
    }

    /// The cluster's URL: `redis+cluster://` and every node as a seed.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The plain `redis://` URL of every live node of a throwaway cluster
    /// (masters and replicas), for tools that talk to one node.
    pub fn node_urls(&self) -> Vec<String> {
        self.live_ports()
            .map(|port| format!("redis://127.0.0.1:{port}/"))
            .collect()
    }

    fn live_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.server.is_some())
            .map(|n| n.port)
    }

    /// The masters as a live node sees them now, with their slots.
    pub fn masters(&self) -> anyhow::Result<Vec<ClusterMaster>> {
        let port = self.live_ports().next().context("no live node")?;
        let mut conn = connect(port)?;
        // CLUSTER SLOTS: [[start, end, [host, port, id], replicas...], ...]
        let ranges: Vec<(u16, u16, (String, u16))> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query::<Vec<redis::Value>>(&mut conn)?
            .into_iter()
            .map(|range| {
                let redis::Value::Array(items) = range else {
                    bail!("CLUSTER SLOTS answered {range:?}");
                };
                let start: u16 = redis::from_redis_value_ref(&items[0])?;
                let end: u16 = redis::from_redis_value_ref(&items[1])?;
                let redis::Value::Array(master) = &items[2] else {
                    bail!("CLUSTER SLOTS answered {items:?}");
                };
                let host: String = redis::from_redis_value_ref(&master[0])?;
                let port: u16 = redis::from_redis_value_ref(&master[1])?;
                Ok((start, end, (host, port)))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut masters: BTreeMap<u16, ClusterMaster> = BTreeMap::new();
        for (start, end, (_, port)) in ranges {
            masters
                .entry(port)
                .or_insert_with(|| ClusterMaster {
                    port,
                    slots: Vec::new(),
                })
                .slots
                .push((start, end));
        }
        Ok(masters.into_values().collect())
    }

    /// The port of the master serving `slot` now.
    pub fn master_of_slot(&self, slot: u16) -> anyhow::Result<u16> {
        self.masters()?
            .into_iter()
            .find(|m| m.serves(slot))
            .map(|m| m.port)
            .with_context(|| format!("no master serves slot {slot}"))
    }

    /// The port of the master serving `key` now (its hash tag decides).
    pub fn master_of_key(&self, key: &str) -> anyhow::Result<u16> {
        self.master_of_slot(key_slot(key))
    }

    /// Stops the node on `port` (SIGTERM through its supervisor, and waits
    /// until it is gone). A master's replica takes over once the others
    /// have counted it failed: wait for that with
    /// [`RedisCluster::wait_until_ok`].
    pub fn kill_node(&mut self, port: u16) -> anyhow::Result<()> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port && n.server.is_some())
            .with_context(|| format!("no live throwaway node on port {port}"))?;
        drop(node.server.take());
        Ok(())
    }

    /// Stops the master serving `key`, and answers its port.
    pub fn kill_master_of_key(&mut self, key: &str) -> anyhow::Result<u16> {
        let port = self.master_of_key(key)?;
        self.kill_node(port)?;
        Ok(port)
    }

    /// Waits (bounded by [`SETTLE_TIMEOUT`]) until every live node reports
    /// `cluster_state:ok` with every slot served, and `known` nodes
    /// reachable in its view: after a start, every node and replica; after
    /// a kill, the survivors once a replica has been promoted.
    pub fn wait_until_ok(&self, known: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut last = String::new();
        loop {
            match self.all_ok(known) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(err) => last = format!("{err:#}"),
            }
            if Instant::now() > deadline {
                bail!("the cluster was not ok within {SETTLE_TIMEOUT:?} (last error: {last})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn all_ok(&self, known: usize) -> anyhow::Result<bool> {
        for port in self.live_ports() {
            let mut conn = connect(port)?;
            let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn)?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(':'))
                    .map(str::to_owned)
            };
            let slots_ok = field("cluster_slots_ok").and_then(|v| v.parse::<u16>().ok());
            if field("cluster_state").as_deref() != Some("ok") || slots_ok != Some(SLOTS) {
                return Ok(false);
            }
            // Every node it knows, reachable: no fail flag, its link up.
            let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut conn)?;
            let healthy = nodes
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .filter(|f| f.len() > 7 && !f[2].contains("fail") && f[7] == "connected")
                .count();
            if healthy != known {
                return Ok(false);
            }
            // A replica has finished its first sync with its master.
            let replication: String = redis::cmd("INFO").arg("replication").query(&mut conn)?;
            if replication.contains("role:slave") && !replication.contains("master_link_status:up")
            {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The hash slot of `key` (CRC16 of its hash tag, or of the whole key,
/// modulo 16384): the same rule as Redis's `CLUSTER KEYSLOT`.
pub fn key_slot(key: &str) -> u16 {
    crate::redis_conn::key_slot(key.as_bytes())
}

fn connect(port: u16) -> anyhow::Result<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    client
        .get_connection_with_timeout(Duration::from_secs(2))
        .with_context(|| format!("cannot reach the cluster node on port {port}"))
}

//! One Redis connection type for both deployments: a single Redis, or a
//! Redis Cluster.
//!
//! A level opens a [`RedisConnection`] from its `--redis-url` and sends
//! commands, pipelines and scripts through it without knowing which it got:
//! it implements [`redis::aio::ConnectionLike`], so `cmd.query_async`,
//! `pipe.query_async` and `script.invoke_async` work on both.
//!
//! ## The URL
//!
//! - `redis://host:port/` (or `rediss://`, `unix://`): one Redis, through a
//!   [`ConnectionManager`] that reconnects by itself.
//! - `redis+cluster://host:port,host:port,...`: a Redis Cluster, through the
//!   redis crate's async cluster client. The comma-separated nodes are
//!   seeds: the client asks one of them for the slot map (`CLUSTER SLOTS`)
//!   and connects to every master. One live seed is enough; listing every
//!   node survives seeds that died. `load services --redis-cluster` prints
//!   such a URL.
//!
//! ## What a cluster changes for the code that uses it
//!
//! A cluster splits the key space into 16384 *hash slots* (CRC16 of the key
//! modulo 16384, see [`key_slot`]) and each master serves some of them. A
//! script, a MULTI/EXEC or a pipeline runs on one node, so all of its keys
//! must hash to one slot, or Redis refuses it with `CROSSSLOT`. A key's
//! *hash tag* (the part between the first `{` and the next `}`) is what is
//! hashed when there is one: `sale:{ticket:1}` and `buyers:{ticket:1}` share a
//! slot. Levels keep every key of one script under one tag.
//!
//! The cluster client follows `MOVED` (the slot lives elsewhere now: it
//! refreshes its slot map and resends) and `ASK` (the slot is migrating:
//! it sends `ASKING` and the command to the node named, once), within the
//! response timeout.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, FromRedisValue, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;

/// The scheme that names a Redis Cluster by its seed nodes.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// How a connection waits and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisOptions {
    /// How long to wait for a node to accept a connection.
    pub connection_timeout: Duration,
    /// How long to wait for an answer. On a cluster this bounds the whole
    /// request, redirections (`MOVED`, `ASK`) and retries included.
    pub response_timeout: Duration,
    /// How many times a single Redis's connection manager retries a failed
    /// connection attempt before the command fails (0: fail fast and let
    /// the caller decide). A cluster client always retries (that is how it
    /// follows redirections), within `response_timeout`.
    pub connect_retries: usize,
}

impl RedisOptions {
    /// Options with these timeouts and no connection retries.
    pub fn new(connection_timeout: Duration, response_timeout: Duration) -> Self {
        Self {
            connection_timeout,
            response_timeout,
            connect_retries: 0,
        }
    }
}

/// A connection to a single Redis or to a Redis Cluster (see the module
/// documentation for the URL). Cheap to clone: clones share one
/// multiplexed connection (per node, on a cluster).
#[derive(Clone)]
pub struct RedisConnection {
    inner: Inner,
    url: Arc<str>,
}

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Plain(MultiplexedConnection),
    Cluster(Arc<LazyCluster>),
}

/// A cluster connection made on first use, so that opening one never fails
/// because the cluster is down (as [`ConnectionManager::new_lazy_with_config`]
/// for a single Redis). A failed attempt leaves the cell empty: the next
/// command tries again.
struct LazyCluster {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

impl LazyCluster {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("url", &self.url)
            .field("cluster", &self.is_cluster())
            .finish_non_exhaustive()
    }
}

impl RedisConnection {
    /// A connection to `url` that connects on first use: opening it fails
    /// only on a malformed URL, never because Redis is down, and it
    /// reconnects by itself once Redis is back.
    pub fn open(url: &str, options: RedisOptions) -> RedisResult<Self> {
        let inner = match cluster_seeds(url) {
            Some(seeds) => Inner::Cluster(Arc::new(LazyCluster {
                client: cluster_client(&seeds, options)?,
                conn: OnceCell::new(),
            })),
            None => {
                let client = redis::Client::open(url)?;
                let manager =
                    ConnectionManager::new_lazy_with_config(client, manager_config(options))?;
                Inner::Single(manager)
            }
        };
        Ok(Self {
            inner,
            url: url.into(),
        })
    }

    /// [`RedisConnection::open`], then connects now: fails if Redis (every
    /// seed, on a cluster) does not answer.
    pub async fn connect(url: &str, options: RedisOptions) -> RedisResult<Self> {
        let inner = match cluster_seeds(url) {
            Some(seeds) => {
                let lazy = LazyCluster {
                    client: cluster_client(&seeds, options)?,
                    conn: OnceCell::new(),
                };
                lazy.get().await?;
                Inner::Cluster(Arc::new(lazy))
            }
            None => {
                let client = redis::Client::open(url)?;
                Inner::Single(
                    ConnectionManager::new_with_config(client, manager_config(options)).await?,
                )
            }
        };
        Ok(Self {
            inner,
            url: url.into(),
        })
    }

    /// A plain multiplexed connection, made now, with the client's default
    /// settings and no reconnection: what a measuring tool opens per worker
    /// (one connection per simulated client). On a cluster, a cluster
    /// connection with the same defaults.
    pub async fn multiplexed(url: &str) -> RedisResult<Self> {
        let inner = match cluster_seeds(url) {
            Some(seeds) => {
                let client = ClusterClient::new(seeds)?;
                let lazy = LazyCluster {
                    conn: OnceCell::new_with(Some(client.get_async_connection().await?)),
                    client,
                };
                Inner::Cluster(Arc::new(lazy))
            }
            None => Inner::Plain(
                redis::Client::open(url)?
                    .get_multiplexed_async_connection()
                    .await?,
            ),
        };
        Ok(Self {
            inner,
            url: url.into(),
        })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether it talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }

    /// Sends `cmd` to the master serving `key`'s slot (on a single Redis:
    /// to it). For commands that name no key yet must run where some keys
    /// live: a `SCAN` over one hash tag's keys, the `INFO` of their node.
    /// The cluster client alone would send them to any node.
    pub async fn query_at_key<T: FromRedisValue>(&self, key: &str, cmd: &Cmd) -> RedisResult<T> {
        match &self.inner {
            Inner::Single(manager) => cmd.query_async(&mut manager.clone()).await,
            Inner::Plain(conn) => cmd.query_async(&mut conn.clone()).await,
            Inner::Cluster(lazy) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = lazy
                    .get()
                    .await?
                    .route_command(cmd.clone(), routing)
                    .await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.inner {
            Inner::Single(manager) => manager.req_packed_command(cmd),
            Inner::Plain(conn) => conn.req_packed_command(cmd),
            Inner::Cluster(lazy) => {
                let lazy = Arc::clone(lazy);
                Box::pin(async move { lazy.get().await?.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.inner {
            Inner::Single(manager) => manager.req_packed_commands(pipeline, offset, count),
            Inner::Plain(conn) => conn.req_packed_commands(pipeline, offset, count),
            Inner::Cluster(lazy) => {
                let lazy = Arc::clone(lazy);
                Box::pin(async move {
                    let mut conn = lazy.get().await?;
                    conn.req_packed_commands(pipeline, offset, count).await
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(manager) => manager.get_db(),
            Inner::Plain(conn) => conn.get_db(),
            Inner::Cluster(_) => 0,
        }
    }
}

/// The seed URLs of a `redis+cluster://` URL, or `None` for any other URL.
pub fn cluster_seeds(url: &str) -> Option<Vec<String>> {
    let rest = url.trim().strip_prefix(CLUSTER_SCHEME)?;
    Some(
        rest.trim_end_matches('/')
            .split(',')
            .map(str::trim)
            .filter(|seed| !seed.is_empty())
            .map(|seed| format!("redis://{seed}/"))
            .collect(),
    )
}

/// A plain `redis://` URL of one node: the first seed of a cluster URL, or
/// `url` itself. For tools that read a setting every node shares (`INFO
/// server`'s version, `CONFIG GET`), not for keys.
pub fn one_node_url(url: &str) -> String {
    cluster_seeds(url)
        .and_then(|seeds| seeds.into_iter().next())
        .unwrap_or_else(|| url.to_owned())
}

/// Whether `url` names a Redis Cluster.
pub fn is_cluster_url(url: &str) -> bool {
    cluster_seeds(url).is_some()
}

fn cluster_client(seeds: &[String], options: RedisOptions) -> RedisResult<ClusterClient> {
    if seeds.is_empty() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "a redis+cluster:// URL names no node",
        )));
    }
    ClusterClient::builder(seeds.iter().map(String::as_str))
        .connection_timeout(options.connection_timeout)
        .response_timeout(options.response_timeout)
        .build()
}

fn manager_config(options: RedisOptions) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_number_of_retries(options.connect_retries)
        .set_connection_timeout(Some(options.connection_timeout))
        .set_response_timeout(Some(options.response_timeout))
}

/// The hash slot of `key` on a Redis Cluster: CRC16 (XMODEM) of its hash
/// tag (the bytes between the first `{` and the next `}`, when not empty),
/// or of the whole key, modulo 16384. The rule of Redis's `CLUSTER KEYSLOT`.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16_xmodem(hash_tag(key).unwrap_or(key)) % 16384
}

fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let close = key[open + 1..].iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &byte| {
        (0..8).fold(crc ^ (u16::from(byte) << 8), |crc, _| {
            if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            }
        })
    })
}

/// Asserts that every key of one script call, transaction or pipeline hashes
/// to one slot: what a cluster requires (`CROSSSLOT` otherwise). Tests call
/// it on every key builder a level feeds one script.
///
/// # Panics
/// When two keys hash to different slots, naming them.
pub fn assert_one_slot<S: AsRef<str>>(what: &str, keys: &[S]) {
    let Some(first) = keys.first() else { return };
    let slot = key_slot(first.as_ref().as_bytes());
    for key in keys {
        let key = key.as_ref();
        assert_eq!(
            key_slot(key.as_bytes()),
            slot,
            "{what}: key {key:?} hashes to another slot than {:?}: a cluster refuses this \
             call with CROSSSLOT. Give both the same hash tag ({{...}})",
            first.as_ref()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::cluster_routing::Slot;

    #[test]
    fn key_slot_agrees_with_redis_examples_and_the_redis_crate() {
        // The reference values from the Redis Cluster specification.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        for key in [
            "foo",
            "{user1000}.following",
            "a{}b",
            "{ticket:1}:sale",
            "x{y",
        ] {
            assert_eq!(
                Slot::new(key_slot(key.as_bytes())),
                Some(Slot::for_key(key)),
                "{key}"
            );
        }
    }

    #[test]
    fn a_hash_tag_puts_different_keys_in_one_slot() {
        assert_eq!(
            key_slot(b"l4:{ticket:1}:sale"),
            key_slot(b"l4:{ticket:1}:buyers")
        );
        assert_eq!(key_slot(b"a{}b"), crc16_xmodem(b"a{}b") % 16384);
        assert_one_slot("tagged", &["x:{t}:a", "y:{t}:b"]);
    }

    #[test]
    #[should_panic(expected = "CROSSSLOT")]
    fn keys_without_a_common_tag_are_caught() {
        assert_one_slot("untagged", &["l4:sale:1", "l4:buyers:1"]);
    }

    #[test]
    fn a_cluster_url_lists_its_seeds() {
        assert_eq!(
            cluster_seeds("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/"),
            Some(vec![
                "redis://127.0.0.1:7000/".to_owned(),
                "redis://127.0.0.1:7001/".to_owned()
            ])
        );
        assert_eq!(cluster_seeds("redis://127.0.0.1:6379/"), None);
        assert!(!is_cluster_url("redis://127.0.0.1:6379/"));
    }
}

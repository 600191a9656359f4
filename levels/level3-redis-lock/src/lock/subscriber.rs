//! The connection waiters listen on: plain pub/sub on a single Redis,
//! sharded pub/sub on a Redis Cluster.
//!
//! On one Redis, a release `PUBLISH`es on the lock's channel and each
//! process `SUBSCRIBE`s once per lock it waits for.
//!
//! On a cluster, plain pub/sub still works, but at a price: a `PUBLISH` is
//! copied over the cluster bus to *every* node, so that a subscriber on any
//! node hears it, and every release costs the whole cluster. Redis 7.0's
//! *sharded* pub/sub gives a channel a hash slot, like a key: `SPUBLISH`
//! goes only to the subscribers of the master (and replicas) that own the
//! channel's slot, and `SSUBSCRIBE` must be sent to that master. The lock's
//! channel carries the lock's hash tag (`...:{ticket:1}:released`), so it
//! lives in the lock's slot: the release script, which runs on that master,
//! may `SPUBLISH` on it, and a waiter listens right where the lock is.
//!
//! The redis crate's cluster client does the routing: `ssubscribe` goes to
//! the master of the channel's slot, messages from every master come back
//! on one push channel, and after a failover (a master died, its replica
//! took its slots) the client re-sends each `SSUBSCRIBE` to the new owner
//! once it has learnt the new slot map. What a subscriber misses meanwhile
//! is lost, as with plain pub/sub: the waiters' bounded sleep (never past
//! the holder's lease) and the wake-everyone on a dropped connection cover
//! it (see `wait_for_release.rs`).

use std::sync::Arc;

use redis::aio::{AsyncPushSender, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, ProtocolVersion, RedisResult, ScriptInvocation};
use ticket_core::redis_conn::RedisOptions;
use tokio::sync::OnceCell;

/// The subscriber connection of one process (see the top of this file).
/// Cheap to clone.
#[derive(Clone)]
pub(super) enum Subscriber {
    /// One Redis: `SUBSCRIBE`, through a connection manager that
    /// re-subscribes by itself after a reconnect.
    Plain(ConnectionManager),
    /// A Redis Cluster: `SSUBSCRIBE`, through the cluster client.
    Sharded(Arc<ShardedSubscriber>),
}

/// A cluster connection made on first use, so that creating a lock client
/// never fails because the cluster is down. A failed attempt leaves the cell
/// empty: the next use tries again.
pub(super) struct ShardedSubscriber {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

impl ShardedSubscriber {
    /// A subscriber for the cluster reached through `seeds` (`redis://`
    /// URLs), delivering every pushed message to `push`.
    pub(super) fn new(
        seeds: &[String],
        options: RedisOptions,
        push: impl AsyncPushSender,
    ) -> RedisResult<Self> {
        let client = ClusterClient::builder(seeds.iter().map(String::as_str))
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(push)
            .connection_timeout(options.connection_timeout)
            .response_timeout(options.response_timeout)
            .build()?;
        Ok(Self {
            client,
            conn: OnceCell::new(),
        })
    }

    async fn get(&self) -> RedisResult<ClusterConnection> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

impl Subscriber {
    /// Subscribes to `channel`; returns once Redis confirmed it.
    pub(super) async fn subscribe(&self, channel: &str) -> RedisResult<()> {
        match self {
            Self::Plain(manager) => manager.clone().subscribe(channel).await,
            Self::Sharded(sharded) => sharded.get().await?.ssubscribe(channel).await,
        }
    }

    /// Unsubscribes from `channel`.
    pub(super) async fn unsubscribe(&self, channel: &str) -> RedisResult<()> {
        match self {
            Self::Plain(manager) => manager.clone().unsubscribe(channel).await,
            Self::Sharded(sharded) => sharded.get().await?.sunsubscribe(channel).await,
        }
    }

    /// Sends a plain command (on a cluster, routed as the client routes it).
    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Self::Plain(manager) => cmd.query_async(&mut manager.clone()).await,
            Self::Sharded(sharded) => cmd.query_async(&mut sharded.get().await?).await,
        }
    }

    /// Runs a script (on a cluster, on the master of its first key).
    pub(super) async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        match self {
            Self::Plain(manager) => script.invoke_async(&mut manager.clone()).await,
            Self::Sharded(sharded) => script.invoke_async(&mut sharded.get().await?).await,
        }
    }
}

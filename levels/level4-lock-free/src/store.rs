//! The two stores of a Level 4 sale, side by side: Redis, which *decides*
//! every sale, and PostgreSQL, which *records* it afterwards.
//!
//! [`SaleStore`] is what the strategy, the persistence worker, the reset
//! listener, `reconcile` and the load tool's drain all use; [`RedisConn`] is
//! its Redis half: one multiplexed connection that reconnects by itself, the
//! scripts, and the line between "Redis is not there" (answer 503, retry
//! later) and "Redis refused" (a bug), drawn by
//! [`ticket_core::redis_checks::is_unavailable`] for Levels 3 and 4 alike.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::{FromRedisValue, Script, ScriptInvocation};
use sqlx::PgPool;
use ticket_core::redis_checks::is_unavailable;
use ticket_core::redis_conn::{RedisConnection, RedisOptions};
use ticket_core::{TicketId, UserId};

use crate::keys::Keys;

/// How long to wait for Redis to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// How long to wait for an answer to an ordinary command. A purchase is one
/// script that runs in microseconds; a second without an answer means Redis
/// is gone or stalled, and the buyer is better served by a 503 now.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// One connection to Redis, multiplexed: every request of a server shares
/// it, and Redis answers them in order (a pipeline it did not have to ask
/// for). Cheap to clone. On a Redis Cluster (a `redis+cluster://` URL, see
/// [`ticket_core::redis_conn`]) it is one such connection per master, and
/// every key of a database shares one hash tag ([`crate::keys`]), so each
/// script and transaction runs on the one master serving that slot.
#[derive(Clone)]
pub struct RedisConn {
    manager: RedisConnection,
    url: Arc<str>,
}

impl fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConn")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl RedisConn {
    /// A connection to `url` that answers within `response_timeout`. It
    /// connects on first use, so creating it never fails because Redis is
    /// down, and it reconnects by itself after Redis comes back.
    ///
    /// It fails fast while Redis is down (one connection attempt, no
    /// retries inside the client): the caller decides what an outage means
    /// (a 503 for a buyer, a pause for the worker).
    pub fn new(url: &str, response_timeout: Duration) -> anyhow::Result<Self> {
        let manager =
            RedisConnection::open(url, RedisOptions::new(CONNECT_TIMEOUT, response_timeout))
                .map_err(|err| anyhow::anyhow!("bad Redis URL {url:?}: {err}"))?;
        Ok(Self {
            manager,
            url: url.into(),
        })
    }

    /// The URL it connects to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs a script (EVALSHA, uploading the text when Redis does not know
    /// it yet, for instance after a restart).
    ///
    /// After Redis comes back, the connection manager still holds the failed
    /// attempt from the outage; the first command to touch it gets that old
    /// error and makes the manager connect afresh. A *refused* connection
    /// never carried our command, so sending it once more is safe. Any other
    /// error (an answer that never came) is not retried here: the script may
    /// have run.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        let mut conn = self.manager.clone();
        match script.invoke_async(&mut conn).await {
            Err(err) if err.is_connection_refusal() => script.invoke_async(&mut conn).await,
            other => other,
        }
    }

    /// Sends one command (see [`RedisConn::invoke`] for the one retry).
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let mut conn = self.manager.clone();
        match cmd.query_async(&mut conn).await {
            Err(err) if err.is_connection_refusal() => cmd.query_async(&mut conn).await,
            other => other,
        }
    }

    /// Sends a pipeline (atomic when built with `.atomic()`: MULTI/EXEC).
    pub async fn pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> redis::RedisResult<T> {
        let mut conn = self.manager.clone();
        match pipe.query_async(&mut conn).await {
            Err(err) if err.is_connection_refusal() => pipe.query_async(&mut conn).await,
            other => other,
        }
    }

    /// Sends one command to the node holding `key` (see
    /// [`RedisConnection::query_at_key`]): `SCAN` over one database's keys.
    pub async fn query_at_key<T: FromRedisValue>(
        &self,
        key: &str,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        self.manager.query_at_key(key, cmd).await
    }

    /// Checks that this Redis will not evict keys on its own
    /// ([`ticket_core::redis_checks::require_noeviction`]): an evicted sale
    /// or buyers hash is a sale forgotten, and sold again.
    pub async fn require_noeviction(
        &self,
    ) -> Result<(), ticket_core::redis_checks::EvictionCheckError> {
        let mut conn = self.manager.clone();
        ticket_core::redis_checks::require_noeviction(&mut conn).await
    }

    /// Asks for a PONG: what `/health` calls.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }
}

/// The Lua scripts, loaded once. `redis::Script` sends the script's SHA1
/// and uploads the text only when Redis does not know it.
pub(crate) struct Scripts {
    pub(crate) purchase: Script,
    pub(crate) load: Script,
    pub(crate) maintain: Script,
    pub(crate) repair: Script,
    pub(crate) cancel: Script,
    pub(crate) fence: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            purchase: Script::new(include_str!("lua/purchase.lua")),
            load: Script::new(include_str!("lua/load.lua")),
            maintain: Script::new(include_str!("lua/maintain.lua")),
            repair: Script::new(include_str!("lua/repair.lua")),
            cancel: Script::new(include_str!("lua/cancel.lua")),
            fence: Script::new(include_str!("lua/fence.lua")),
        }
    }
}

/// What Redis decided for one purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Sold, with this order id; the order is queued for PostgreSQL.
    Sold(i64),
    /// This request (its buyer's idempotency key) was sold this order id
    /// before, and is asking again: its first answer was lost. Nothing was
    /// spent. A key answers one order, ever: even one cancelled since.
    Resold(i64),
    /// The buyer already holds the ticket, under this order id.
    AlreadyPurchased(i64),
    /// No stock left.
    SoldOut,
    /// Redis holds no sale for the ticket: it must be loaded first.
    NotLoaded,
}

/// Why a store operation failed, sorted by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis does not answer: try again later (a buyer gets 503).
    #[error("Redis is unavailable: {0}")]
    RedisUnavailable(#[source] redis::RedisError),
    /// PostgreSQL does not answer (only loading a sale needs it).
    #[error("PostgreSQL is unavailable: {0}")]
    DatabaseUnavailable(#[source] sqlx::Error),
    /// The ticket does not exist in PostgreSQL.
    #[error("no such ticket")]
    NotFound,
    /// Anything else: a refused command, an unexpected answer.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<redis::RedisError> for StoreError {
    fn from(err: redis::RedisError) -> Self {
        if is_unavailable(&err) {
            Self::RedisUnavailable(err)
        } else {
            Self::Unexpected(anyhow::Error::new(err).context("Redis refused a command"))
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if pg_is_transient(&err) {
            Self::DatabaseUnavailable(err)
        } else {
            Self::Unexpected(anyhow::Error::new(err).context("PostgreSQL refused a statement"))
        }
    }
}

/// Whether a PostgreSQL error is about PostgreSQL rather than about what was
/// sent: no connection, a server shutting down or restarting, resources
/// exhausted, a transaction that lost a race (40001, 40P01) or a lock it
/// could not have. Trying the same statements again later may succeed.
/// Anything else (a constraint, a bad value) fails the same way every time.
pub fn pg_is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(_) => ticket_core::db::sqlstate(err).is_some_and(|code| {
            // 08: connection exception; 57: operator intervention (shutdown,
            // admin command); 53: insufficient resources; 40: transaction
            // rollback (serialization, deadlock); 55P03: lock not available.
            ["08", "57", "53", "40"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "55P03"
        }),
        _ => false,
    }
}

/// Both stores of one database's sales, with its Redis keys. Cheap to clone.
#[derive(Clone)]
pub struct SaleStore {
    pool: PgPool,
    redis: RedisConn,
    keys: Arc<Keys>,
    scripts: Arc<Scripts>,
}

impl fmt::Debug for SaleStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaleStore")
            .field("redis", &self.redis)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl SaleStore {
    /// The store of the database behind `pool`, using `redis`: reads the
    /// database's Redis namespace.
    pub async fn open(pool: PgPool, redis: RedisConn) -> anyhow::Result<Self> {
        let keys = Keys::of_database(&pool).await?;
        Ok(Self::with_keys(pool, redis, keys))
    }

    /// The store with known keys.
    pub fn with_keys(pool: PgPool, redis: RedisConn, keys: Keys) -> Self {
        Self {
            pool,
            redis,
            keys: Arc::new(keys),
            scripts: Arc::new(Scripts::new()),
        }
    }

    /// Connects to both from URLs (tools and tests; servers share their pool).
    pub async fn connect(database_url: &str, redis_url: &str) -> anyhow::Result<Self> {
        let pool = ticket_core::db::connect(database_url, 4, Duration::from_secs(10)).await?;
        let redis = RedisConn::new(redis_url, RESPONSE_TIMEOUT)?;
        Self::open(pool, redis).await
    }

    /// The PostgreSQL pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The Redis connection.
    pub fn redis(&self) -> &RedisConn {
        &self.redis
    }

    /// The Redis key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(crate) fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    /// Runs the purchase script: Redis decides, atomically, and queues the
    /// order when it sells. Does not touch PostgreSQL.
    pub async fn decide(&self, ticket: TicketId, user: UserId) -> Result<Decision, StoreError> {
        self.decide_keyed(ticket, user, None).await
    }

    /// [`SaleStore::decide`] for a request with an idempotency key: a sale
    /// records the key with it, in the same script, and the same key asking
    /// again after that sale gets [`Decision::Resold`] (its first answer was
    /// lost), not [`Decision::AlreadyPurchased`].
    pub async fn decide_keyed(
        &self,
        ticket: TicketId,
        user: UserId,
        idempotency_key: Option<&str>,
    ) -> Result<Decision, StoreError> {
        let keys = &self.keys;
        let (outcome, id): (String, i64) = self
            .redis
            .invoke(
                self.scripts
                    .purchase
                    .key(keys.sale(ticket))
                    .key(keys.buyers(ticket))
                    .key(keys.orders())
                    .key(keys.order_id())
                    .key(keys.idempotency(ticket))
                    .arg(ticket.get())
                    .arg(user.get())
                    .arg(idempotency_key.unwrap_or_default()),
            )
            .await?;
        Ok(match outcome.as_str() {
            "sold" => Decision::Sold(id),
            "resold" => Decision::Resold(id),
            "already_purchased" => Decision::AlreadyPurchased(id),
            "sold_out" => Decision::SoldOut,
            "not_loaded" => Decision::NotLoaded,
            other => {
                return Err(StoreError::Unexpected(anyhow::anyhow!(
                    "the purchase script answered {other:?}"
                )))
            }
        })
    }

    /// Whether Redis sells `ticket`: it holds a sale that no reset has
    /// closed (see [`crate::reset`]), signed by the running Redis process
    /// (see [`crate::load`]). The same rule as `purchase.lua`'s.
    pub async fn redis_serving(&self, ticket: TicketId) -> Result<bool, StoreError> {
        type Sale = (Option<i64>, Option<i64>, Option<String>);
        let ((epoch, fence, checked_by), info): (Sale, String) = self
            .redis
            .pipe(
                redis::pipe()
                    .cmd("HMGET")
                    .arg(self.keys.sale(ticket))
                    .arg("epoch")
                    .arg("fence")
                    .arg("checked_by")
                    .cmd("INFO")
                    .arg("server"),
            )
            .await?;
        let open = epoch.is_some_and(|epoch| fence.is_none_or(|fence| epoch >= fence));
        Ok(open && checked_by.is_some_and(|signed| run_id(&info) == Some(signed.as_str())))
    }

    /// Whether Redis holds a sale (of any epoch) for `ticket`, and which.
    pub async fn redis_epoch(&self, ticket: TicketId) -> Result<Option<i64>, StoreError> {
        Ok(self
            .redis
            .query(redis::cmd("HGET").arg(self.keys.sale(ticket)).arg("epoch"))
            .await?)
    }
}

/// The `run_id` of an `INFO server` answer: drawn afresh at every start of
/// `redis-server`, so a sale signed with another one was loaded by a Redis
/// process that has since restarted (see [`crate::load`]).
pub(crate) fn run_id(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|line| line.trim_end().strip_prefix("run_id:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_id_is_read_from_info_server() {
        let info =
            "# Server\r\nredis_version:7.0.15\r\nrun_id:52abfeb545396f4e\r\ntcp_port:6379\r\n";
        assert_eq!(run_id(info), Some("52abfeb545396f4e"));
        assert_eq!(run_id("# Server\r\nredis_version:7.0.15\r\n"), None);
    }
}

//! The one way Level 5 connects to Redis: a single Redis (`redis://`) or a
//! Redis Cluster (`redis+cluster://host:port,...`), through ticket-core's
//! [`RedisConnection`] (see [`ticket_core::redis_conn`]).
//!
//! On a single Redis it is a connection manager that reconnects by itself
//! after Redis restarts, so a server outlives a Redis restart. Its default
//! response timeout is 500 ms; on a busy machine (two cores, 500 buyers, a
//! build running) a script can wait longer than that in Redis's queue and
//! the buyer would get a 503 for a Redis that is merely slow. Five seconds
//! is the bound here: slow is not down.
//!
//! On a cluster every script of Level 5 keeps its keys under one show's
//! hash tag (`{show:<id>}`), so it runs on the master of that show's slot.

use std::time::Duration;

use ticket_core::redis_conn::{RedisConnection, RedisOptions};

use crate::error::{redis_error, BoxError};

/// How long one Redis command may take before the request is answered 503.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

fn options() -> RedisOptions {
    RedisOptions {
        connection_timeout: Duration::from_secs(2),
        response_timeout: RESPONSE_TIMEOUT,
        // The connection manager's own default: a few attempts, backing off.
        connect_retries: 6,
    }
}

/// Checks `url` names a Redis or a cluster (without connecting), so a bad
/// `--redis-url` fails at start-up, not at the first request.
pub fn check_url(url: &str) -> anyhow::Result<()> {
    RedisConnection::open(url, options())
        .map(drop)
        .map_err(|err| anyhow::anyhow!("bad Redis URL {url:?}: {err}"))
}

/// A self-reconnecting connection to the Redis (or cluster) at `url`.
pub async fn manager(url: &str) -> Result<RedisConnection, BoxError> {
    RedisConnection::connect(url, options())
        .await
        .map_err(redis_error)
}

//! The one way Level 5 connects to Redis.
//!
//! A [`ConnectionManager`] reconnects by itself after Redis restarts, so a
//! server outlives a Redis restart. Its default response timeout is 500 ms;
//! on a busy machine (two cores, 500 buyers, a build running) a script can
//! wait longer than that in Redis's queue and the buyer would get a 503 for
//! a Redis that is merely slow. Five seconds is the bound here: slow is
//! not down.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::{redis_error, BoxError};

/// How long one Redis command may take before the request is answered 503.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A self-reconnecting connection to `client`'s Redis.
pub async fn manager(client: redis::Client) -> Result<ConnectionManager, BoxError> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(Duration::from_secs(2)));
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(redis_error)
}

//! What Levels 3 and 4 both need to know about a Redis: whether an error
//! means "Redis is not there right now", and whether Redis may drop keys on
//! its own.
//!
//! Both questions have one answer for every level that keeps state in
//! Redis, so they are answered once, here. The levels keep their own error
//! types (a lock's, a sale store's); this module only sorts.

use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Whether a Redis error means "Redis is not there right now" (stopped,
/// unreachable, too slow, still loading its data after a restart, busy with
/// a long script, full, a failover in progress) rather than "Redis refused
/// what we sent". The first is worth trying again later, and a server
/// answers 503; the second will fail the same way every time: a bug.
///
/// BUSY: a script has run past `busy-reply-threshold` (5 s by default);
/// Redis refuses every other command, unrun, until it ends. LOADING: Redis
/// is reading its RDB or AOF file after a restart. OOM: a `noeviction`
/// Redis at its `maxmemory` refuses writes (see [`require_noeviction`]), as
/// PostgreSQL with a full disk would. TRYAGAIN, MASTERDOWN, CLUSTERDOWN: a
/// cluster or a replica between two masters.
pub fn is_unavailable(err: &RedisError) -> bool {
    matches!(err.code(), Some("BUSY" | "OOM"))
        || err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || matches!(
            err.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
            )
        )
}

/// Why [`require_noeviction`] did not accept a Redis.
#[derive(Debug, thiserror::Error)]
pub enum EvictionCheckError {
    /// Redis did not answer ([`is_unavailable`]): nothing is known yet.
    #[error("Redis is unavailable: {0}")]
    Unavailable(#[source] RedisError),
    /// Redis refused `INFO memory`.
    #[error("Redis refused INFO memory: {0}")]
    Refused(#[source] RedisError),
    /// Redis may drop keys on its own under memory pressure.
    #[error(
        "Redis may evict keys: its maxmemory-policy is {policy:?}; set \
         `maxmemory-policy noeviction` (redis.conf, or CONFIG SET)"
    )]
    Evicting {
        /// The policy Redis reported.
        policy: String,
    },
}

/// Checks that Redis will never drop a key on its own: its
/// `maxmemory-policy` must be `noeviction`. Under memory pressure any other
/// policy evicts keys, and the `volatile-*` ones pick keys with a lease
/// first: every held lock of Level 3. Level 4's keys have no lease, but an
/// `allkeys-*` policy evicts a sale or its buyers: a sale forgotten, sold
/// again. With `noeviction` a full Redis refuses writes instead (OOM): a
/// 503 and an alarm, never a double sale.
///
/// Reads the policy from `INFO memory`, which managed Redis services that
/// disable `CONFIG` still answer. An `INFO` without the field (a very old
/// Redis, a proxy) is let through with a warning rather than refused.
///
/// On a Redis Cluster the client sends `INFO` to every node and answers a
/// map of node to report: every node must be `noeviction`, since any of
/// them may be promoted to hold a slot.
pub async fn require_noeviction(
    conn: &mut (impl ConnectionLike + Send),
) -> Result<(), EvictionCheckError> {
    let reply: redis::Value = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .map_err(|err| {
            if is_unavailable(&err) {
                EvictionCheckError::Unavailable(err)
            } else {
                EvictionCheckError::Refused(err)
            }
        })?;
    let reports: Vec<redis::Value> = match reply {
        redis::Value::Map(per_node) => per_node.into_iter().map(|(_, info)| info).collect(),
        one => vec![one],
    };
    for report in reports {
        let info: String = redis::from_redis_value(report)
            .map_err(|err| EvictionCheckError::Refused(err.into()))?;
        match eviction_policy(&info) {
            Some("noeviction") => {}
            Some(policy) => {
                return Err(EvictionCheckError::Evicting {
                    policy: policy.to_owned(),
                })
            }
            None => tracing::warn!(
                "Redis did not report its maxmemory-policy; make sure it is noeviction"
            ),
        }
    }
    Ok(())
}

/// The `maxmemory_policy` field of an `INFO memory` answer.
pub fn eviction_policy(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|line| line.trim_end().strip_prefix("maxmemory_policy:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(reply: &str) -> RedisError {
        let value = redis::parse_redis_value(format!("-{reply}\r\n").as_bytes())
            .expect("a RESP error line");
        value.extract_error().expect_err("an error reply")
    }

    fn io_error(kind: std::io::ErrorKind) -> RedisError {
        RedisError::from(std::io::Error::new(kind, "test"))
    }

    #[test]
    fn a_redis_that_is_away_busy_or_loading_is_unavailable() {
        for reply in [
            "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "LOADING Redis is loading the dataset in memory",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "CLUSTERDOWN The cluster is down",
        ] {
            assert!(is_unavailable(&server_error(reply)), "{reply}");
        }
        for kind in [
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::TimedOut,
            std::io::ErrorKind::UnexpectedEof,
        ] {
            assert!(is_unavailable(&io_error(kind)), "{kind:?}");
        }
    }

    #[test]
    fn a_refused_command_is_not_unavailability() {
        for reply in [
            "ERR Error running script (call to f_abc): user_script:1: oops",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "NOSCRIPT No matching script. Please use EVAL.",
            "NOPERM this user has no permissions to run the 'eval' command",
        ] {
            assert!(!is_unavailable(&server_error(reply)), "{reply}");
        }
        let parse = RedisError::from((ErrorKind::UnexpectedReturnType, "not a number"));
        assert!(!is_unavailable(&parse));
    }

    #[test]
    fn the_eviction_policy_is_read_from_info_memory() {
        let info = "# Memory\r\nused_memory:1000\r\nmaxmemory_policy:volatile-lru\r\nother:1\r\n";
        assert_eq!(eviction_policy(info), Some("volatile-lru"));
        assert_eq!(eviction_policy("# Memory\r\nused_memory:1\r\n"), None);
    }
}

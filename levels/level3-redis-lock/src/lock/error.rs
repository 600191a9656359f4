//! [`LockError`]: why a lock operation failed, one variant per decision the
//! caller makes.

use std::time::Duration;

/// Why a lock operation failed. Each variant is a different decision for the
/// caller: wait budget spent (answer "busy"), Redis down (answer
/// "unavailable"), or a bug in how the lock was used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else held the lock for the whole wait budget.
    #[error("lock {name:?} was still held by someone else after waiting {waited:?}")]
    Timeout {
        /// The lock's name.
        name: String,
        /// How long the caller waited.
        waited: Duration,
    },
    /// A release was refused because the caller does not hold the lock.
    /// Nothing was deleted: releasing someone else's lock is exactly the bug
    /// a lock must never have.
    #[error("lock {name:?} is not held by {owner}, so it was not released")]
    NotOwner {
        /// The lock's name.
        name: String,
        /// Who tried to release it.
        owner: String,
    },
    /// The guard no longer holds the lock: its lease ran out (a pause longer
    /// than the lease, a renewal that failed), and the key is gone or belongs
    /// to someone else. Work done under the guard must not be committed.
    #[error("lock {name:?} was lost: its lease ran out before it was released")]
    Lost {
        /// The lock's name.
        name: String,
    },
    /// The lock was taken, but fewer replicas than
    /// [`ReplicaWait::replicas`](super::ReplicaWait) acknowledged it within
    /// the timeout, so it was given back: a failover now could grant it to
    /// someone else. Retryable: a server answers 503 busy.
    #[error(
        "lock {name:?} reached {acknowledged} of {wanted} replicas in time, so it was given back"
    )]
    NotReplicated {
        /// The lock's name.
        name: String,
        /// How many replicas acknowledged the hold.
        acknowledged: u32,
        /// How many were asked for.
        wanted: u32,
    },
    /// Redis did not answer: stopped, unreachable, too slow, or still loading
    /// its data. Trying again later may work; a server answers 503.
    #[error("Redis is unavailable: {0}")]
    Unavailable(#[source] redis::RedisError),
    /// Redis answered with an error that trying again will not fix (a key of
    /// the wrong type, a bad URL, a script error).
    #[error("Redis refused a lock command: {0}")]
    Redis(#[source] redis::RedisError),
    /// Redis is set up so that it may drop lock keys on its own: under
    /// memory pressure a `maxmemory-policy` other than `noeviction` evicts
    /// keys (`volatile-*` policies pick keys with a lease first, which is
    /// every held lock), and a lock that vanishes is granted twice.
    #[error(
        "Redis may evict lock keys: its maxmemory-policy is {policy:?}; \
         set `maxmemory-policy noeviction` (redis.conf, or CONFIG SET) to hold locks in it"
    )]
    Evicting {
        /// The policy Redis reported.
        policy: String,
    },
}

impl LockError {
    /// Sorts a Redis client error into "Redis is not there right now" and
    /// everything else ([`ticket_core::redis_checks::is_unavailable`], the
    /// one rule Level 4 uses too).
    pub(super) fn from_redis(err: redis::RedisError) -> Self {
        if ticket_core::redis_checks::is_unavailable(&err) {
            Self::Unavailable(err)
        } else {
            Self::Redis(err)
        }
    }
}

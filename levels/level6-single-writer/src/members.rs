//! Rebalancing: a server that owns more than its fair share of the
//! partitions gives some back when another server joins.
//!
//! Leases alone are first come, first served: the first server to start
//! takes every free partition, and a server that joins later only waits.
//! To share, each server must know how many servers there are. Every
//! server keeps its name in one sorted set (`l6:<ns>:members`), scored by
//! Redis's own clock (`HEARTBEAT`), every third of a lease; a name not
//! refreshed for a whole lease is dropped, as a dead decider's lease is.
//! With `n` members and `P` partitions a server's share is `ceil(P / n)`.
//! A decider whose server owns more than that steps down after its current
//! batch ([`Members::should_step_down`]) and releases the lease, which
//! Level 3's lock hands to the first server waiting in its line.
//!
//! Nothing here has to be right for the sale to be: a move is a takeover
//! like any other, made safe by the fencing token and the redelivery of
//! unacknowledged entries. A wrong member count only makes the sharing
//! less fair for a while.
//!
//! Kafka's consumer group does more (see docs/09): a coordinator computes
//! one assignment for every member at once, eagerly (everyone stops) or
//! cooperatively (only the moved partitions stop). Here each server
//! decides alone from the count, the leases do the moving, and the
//! partitions a server gives up are whichever of its deciders looks first.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use tokio::sync::watch;

use crate::replies::sleep_or_stop;

/// Refreshes this server's entry, drops the ones older than a lease, and
/// counts who is left. Scored by Redis's `TIME`, so the servers' clocks
/// never have to agree.
///
/// KEYS[1] the members (a sorted set); ARGV[1] this server; ARGV[2] the
/// lease in milliseconds.
const HEARTBEAT: &str = r"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return redis.call('ZCARD', KEYS[1])
";

/// This server's view of the group: how many servers there are, and which
/// partitions it owns.
#[derive(Debug)]
pub struct Members {
    partitions: u32,
    /// Whether this server gives partitions up at all (`--rebalance`).
    enabled: bool,
    /// Live servers at the last heartbeat (0: not known yet).
    count: AtomicU32,
    /// The partitions this server decides right now.
    owned: Mutex<BTreeSet<u32>>,
}

impl Members {
    /// A server's view, before its first heartbeat.
    pub fn new(partitions: u32, enabled: bool) -> Self {
        Self {
            partitions,
            enabled,
            count: AtomicU32::new(0),
            owned: Mutex::new(BTreeSet::new()),
        }
    }

    /// The partitions this server decides right now.
    pub fn owned(&self) -> Vec<u32> {
        self.owned.lock().iter().copied().collect()
    }

    /// A decider of this server took partition `p`.
    pub fn took(&self, p: u32) {
        self.owned.lock().insert(p);
    }

    /// A decider of this server stopped deciding partition `p`.
    pub fn gave_up(&self, p: u32) {
        self.owned.lock().remove(&p);
    }

    /// The most partitions this server should own: `ceil(P / servers)`.
    pub fn share(&self) -> u32 {
        match self.count.load(Ordering::Relaxed) {
            0 => self.partitions,
            n => self.partitions.div_ceil(n),
        }
    }

    /// Whether the decider of `p` should step down, because its server owns
    /// more than its share. Deciding and forgetting `p` happen under one
    /// lock, so that two deciders of a server one partition over its share
    /// do not both step down.
    pub fn should_step_down(&self, p: u32) -> bool {
        if !self.enabled {
            return false;
        }
        let share = self.share() as usize;
        let mut owned = self.owned.lock();
        owned.len() > share && owned.remove(&p)
    }

    /// Keeps this server in the member set until `shutdown`, then takes it
    /// out (a killed server drops out by itself after one lease).
    pub async fn heartbeat(
        self: Arc<Self>,
        redis: ConnectionManager,
        key: String,
        instance: String,
        lease: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let script = redis::Script::new(HEARTBEAT);
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        loop {
            let counted: redis::RedisResult<u32> = script
                .key(&key)
                .arg(&instance)
                .arg(lease_ms)
                .invoke_async(&mut redis.clone())
                .await;
            match counted {
                Ok(n) => self.count.store(n, Ordering::Relaxed),
                Err(err) => tracing::debug!(%err, "no heartbeat this time"),
            }
            if sleep_or_stop(&mut shutdown, lease / 3).await {
                break;
            }
        }
        let _: redis::RedisResult<i64> = redis::cmd("ZREM")
            .arg(&key)
            .arg(&instance)
            .query_async(&mut redis.clone())
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owning(partitions: u32, servers: u32, owned: &[u32]) -> Members {
        let members = Members::new(partitions, true);
        members.count.store(servers, Ordering::Relaxed);
        for &p in owned {
            members.took(p);
        }
        members
    }

    #[test]
    fn a_server_with_every_partition_steps_down_from_half_of_them_when_a_second_joins() {
        let members = owning(4, 2, &[0, 1, 2, 3]);
        let stepped: Vec<u32> = (0..4).filter(|&p| members.should_step_down(p)).collect();
        assert_eq!(stepped, vec![0, 1]);
        assert_eq!(members.owned(), vec![2, 3]);
    }

    #[test]
    fn a_server_at_its_share_keeps_everything() {
        let alone = owning(4, 1, &[0, 1, 2, 3]);
        assert!((0..4).all(|p| !alone.should_step_down(p)));
        let unknown = owning(4, 0, &[0, 1, 2, 3]);
        assert!((0..4).all(|p| !unknown.should_step_down(p)));
        let three = owning(4, 3, &[0, 1]);
        assert!((0..4).all(|p| !three.should_step_down(p)));
    }

    #[test]
    fn rebalancing_off_never_steps_down() {
        let members = Members::new(4, false);
        members.count.store(4, Ordering::Relaxed);
        (0..4).for_each(|p| members.took(p));
        assert!((0..4).all(|p| !members.should_step_down(p)));
    }
}

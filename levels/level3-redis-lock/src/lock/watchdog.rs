//! The watchdog: keeps a lease alive while its guard lives.
//!
//! A lease has to be long enough for the slowest critical section and short
//! enough that a crashed holder does not block everyone for long. No fixed
//! number is both. Redisson's answer, kept here: take a short lease, and
//! while the guard lives, renew it every third of the lease. A crashed
//! process stops renewing, so its lock frees itself within one lease.
//!
//! Where other watchdogs go wrong, and what this one does instead:
//!
//! * **Renewing a lock it lost.** A renewal that just sets the expiry again
//!   would bring back a lock that expired and was taken by someone else.
//!   `renew.lua` extends only if the hash still holds *our* owner field and
//!   *our* hold's fencing token, and never creates the key.
//! * **Carrying on after a failed renewal.** If a renewal fails (Redis says
//!   the lock is not ours, or does not answer at all) we can no longer prove
//!   that we hold the lock, so the guard is marked lost at once, and the
//!   watchdog stops. The critical section checks
//!   [`LockGuard::is_lost`](super::LockGuard::is_lost) before it commits.
//!   Being pessimistic costs one "busy" answer; being optimistic could sell a
//!   ticket without the lock.
//! * **Racing the release.** The guard stops the watchdog before it runs
//!   `release.lua`. A renewal already on the wire reaches Redis first (one
//!   connection keeps order), and one that somehow came later would find no
//!   owner field and do nothing.
//! * **Believing in a renewal that arrived late.** The guard's own idea of
//!   its lease is measured from when each renewal was *sent*, so a slow reply
//!   never stretches it; a holder that is paused past that point sees
//!   `is_lost()` turn true even before the watchdog runs again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::guard::Health;
use super::RedisLock;

/// A running watchdog. Stopping it (or dropping the guard) ends the task.
pub(super) struct Watchdog {
    task: tokio::task::JoinHandle<()>,
}

impl Watchdog {
    pub(super) fn stop(self) {
        self.task.abort();
    }
}

/// Starts renewing `owner`'s hold of `lock` every `lease / 3`.
pub(super) fn spawn(
    lock: RedisLock,
    owner: String,
    token: u64,
    lease: Duration,
    health: Arc<Health>,
) -> Watchdog {
    let period = lease / 3;
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let sent = Instant::now();
            match lock.renew(&owner, token, lease).await {
                Ok(true) => health.extend_to(super::believed_end(sent, lease)),
                Ok(false) => {
                    health.mark_lost();
                    tracing::warn!(lock = %lock.name, %owner, "lease ran out before renewal: the lock is lost");
                    return;
                }
                Err(err) => {
                    health.mark_lost();
                    tracing::warn!(lock = %lock.name, %owner, %err, "cannot renew the lease: treating the lock as lost");
                    return;
                }
            }
        }
    });
    Watchdog { task }
}

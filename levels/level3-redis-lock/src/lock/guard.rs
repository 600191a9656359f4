//! [`LockGuard`]: one hold of a lock, and what it knows about its own lease.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{watchdog, LockError, RedisLock, Released};

/// What the guard knows about its own hold, shared with its watchdog.
pub(super) struct Health {
    /// A fixed point to measure `valid_until` from, so it fits an atomic.
    base: Instant,
    /// Nanoseconds after `base` when the lease ends, as far as we know: set
    /// from the moment the acquiring (or renewing) command was *sent*, less
    /// a drift margin ([`believed_end`]), so that it is not later than
    /// Redis's own expiry while the two clocks agree to within 1%.
    valid_until: AtomicU64,
    /// A renewal failed: we can no longer prove we hold the lock.
    lost: AtomicBool,
}

impl Health {
    pub(super) fn new(valid_until: Instant) -> Self {
        let health = Self {
            base: Instant::now(),
            valid_until: AtomicU64::new(0),
            lost: AtomicBool::new(false),
        };
        health.extend_to(valid_until);
        health
    }

    pub(super) fn extend_to(&self, until: Instant) {
        let nanos = u64::try_from(until.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX);
        self.valid_until.fetch_max(nanos, Ordering::SeqCst);
    }

    pub(super) fn mark_lost(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }

    pub(super) fn is_lost(&self) -> bool {
        let elapsed = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.lost.load(Ordering::SeqCst) || elapsed >= self.valid_until.load(Ordering::SeqCst)
    }
}

/// One hold of a [`RedisLock`]. Release it with [`LockGuard::release`].
///
/// Dropping a guard without releasing it (an early return, a cancelled
/// request) still releases the hold, from a background task, so the lock does
/// not stay taken until its lease ends.
#[must_use = "a lock guard holds the lock until it is released"]
pub struct LockGuard {
    pub(super) lock: RedisLock,
    pub(super) owner: String,
    pub(super) token: u64,
    pub(super) lease: Duration,
    pub(super) waited: Duration,
    pub(super) health: Arc<Health>,
    pub(super) watchdog: Option<watchdog::Watchdog>,
    pub(super) released: bool,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.lock.name)
            .field("owner", &self.owner)
            .field("token", &self.token)
            .field("lease", &self.lease)
            .field("watchdog", &self.watchdog.is_some())
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl LockGuard {
    /// This hold's fencing token: larger than the token of every earlier hold
    /// of this lock, as long as Redis keeps its writes. Write it next to the
    /// data the lock protects, and refuse writes that do not carry a larger
    /// one: then a holder that stalled past its lease cannot overwrite what
    /// the next holder did. If Redis loses its newest writes, a token can be
    /// handed out twice; the strict "larger" check refuses the second, and
    /// [`RedisLock::raise_token_floor`] puts the counter back above it.
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    /// True when this guard can no longer prove it holds the lock: its lease
    /// has run out by our own clock, or the watchdog failed to renew it.
    /// Check it just before making the protected work permanent (before
    /// COMMIT). It is a hint, not a guarantee: the lease can end a moment after
    /// the check, which is why the fencing token exists.
    pub fn is_lost(&self) -> bool {
        self.health.is_lost()
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.lock.name
    }

    /// Who holds it: `<instance>:<task>`.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// How long [`RedisLock::try_lock`] waited for it.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Gives the hold back: stops the watchdog, then runs `release.lua`.
    ///
    /// * `Ok(Released::Free)`: the lock is free, waiters were told.
    /// * `Ok(Released::StillHeld)`: an outer hold of the same owner remains.
    /// * [`LockError::Lost`]: the lease had already run out, the lock was not
    ///   ours any more, and nothing was deleted.
    /// * [`LockError::Unavailable`]: Redis did not answer; the hold ends by
    ///   itself when its lease does (the watchdog is already stopped).
    pub async fn release(mut self) -> Result<Released, LockError> {
        self.released = true;
        // Stop renewing first. A renewal still in flight is harmless: it
        // only extends a hold that still exists, never recreates one.
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.stop();
        }
        let answer = self.lock.release_as(&self.owner, Some(self.token)).await;
        self.lock
            .client
            .inner
            .wakeups
            .forget_holder(&self.lock.keys.channel, &self.owner);
        match answer? {
            Some(released) => Ok(released),
            None => Err(LockError::Lost {
                name: self.lock.name.to_string(),
            }),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.stop();
        }
        self.lock
            .client
            .inner
            .wakeups
            .forget_holder(&self.lock.keys.channel, &self.owner);
        // Drop cannot wait for Redis, so the release runs on its own task.
        // Outside a runtime there is nobody to run it: the lease ends it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let lock = self.lock.clone();
            let owner = std::mem::take(&mut self.owner);
            let token = self.token;
            runtime.spawn(async move {
                // The token makes this safe even if the same task takes the
                // lock again before this runs: that new hold has a new token.
                if let Err(err) = lock.release_as(&owner, Some(token)).await {
                    tracing::warn!(lock = %lock.name, %err, "releasing a dropped lock guard failed; its lease will end it");
                }
            });
        }
    }
}

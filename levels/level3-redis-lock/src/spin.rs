//! `spin`: buyers wait for a ticket's Redis lock by trying again and again,
//! the way most hand-written Redis locks (and `rslock`) do.
//!
//! A buyer who finds the lock taken sleeps a short random while, growing
//! from 1 ms to 64 ms, and tries again. It is correct (the lock is the same
//! lock, with the same lease, watchdog and fencing token as `pubsub`), and
//! it is here to be measured against `pubsub`: every waiting buyer costs
//! Redis a command per sleep, a buyer may sleep through the moment the lock
//! frees, and whoever wakes first wins, however long the others have waited.
//!
//! This file is also the worked example of a Level 3 strategy: a way of
//! waiting ([`Backoff`], a [`Wait`]), built on the lock's public
//! [`RedisLock::try_once`], plus the strategy itself and one line in
//! [`crate::STRATEGIES`].
//!
//! ## How the waiting works
//!
//! This is what most hand-written Redis locks do (`SET key owner NX PX lease`
//! in a loop), and what `rslock`/`redlock-rs` do between their retries. It is
//! here to be compared with `pubsub`, not to be used.
//!
//! Each try is the same `acquire.lua` that `pubsub` sends. That script *is*
//! `SET NX PX` (create the key only if it is absent, with a lease) plus what a
//! plain string key cannot carry: reentrancy, the fencing token and the
//! remaining lease. Redisson's own spin lock makes the same choice. Keeping
//! the try identical means that measuring `spin` against `pubsub` measures
//! only the waiting.
//!
//! The sleep grows exponentially, so that a long hold is not polled a
//! thousand times, and is randomized ("jitter"), so that waiters who failed
//! together do not all come back together. Even so, polling has a cost that
//! no tuning removes: a short sleep means many failed tries (Redis commands
//! that achieve nothing), a long one means the lock sits free while everyone
//! sleeps. And nothing is fair: whoever happens to wake first wins, however
//! long the others have waited.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
// The workspace's one backoff; re-exported because tests and benches wait
// with it too.
pub use ticket_core::backoff::Backoff;
use ticket_core::strategy::StrategyContext;
use ticket_core::SellTickets;

use crate::lock::{Attempt, LockError, RedisLock, Wait};
use crate::sale::LockedSale;
use crate::Level3Config;

/// Builds `spin`: the sale under the lock ([`LockedSale`]), its buyers
/// waiting by polling with backoff ([`SPIN_BACKOFF`]).
pub fn build(
    context: &StrategyContext,
    config: &Level3Config,
) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(LockedSale::new(
        "spin",
        context,
        config,
        Arc::new(SPIN_BACKOFF),
    )?))
}

/// How `spin` waits between tries: 1 ms doubling up to 64 ms, with equal
/// jitter (half fixed, half random, so a sleep is never near zero): quick on
/// a short hold, at most ~16 tries a second per waiter on a long one. A
/// sleep never outlasts the holder's remaining lease or the caller's wait
/// budget (see `poll`).
pub const SPIN_BACKOFF: Backoff =
    Backoff::equal_jitter(Duration::from_millis(1), Duration::from_millis(64));

/// Waiting by polling: the backoff is the whole policy.
#[async_trait]
impl Wait for Backoff {
    async fn acquire(
        &self,
        lock: &RedisLock,
        owner: &str,
        lease: Duration,
        deadline: Instant,
    ) -> Result<(u64, Instant), LockError> {
        poll(lock, owner, lease, deadline, *self).await
    }
}

/// Takes the lock for `owner`, polling until `deadline`. Returns the fencing
/// token and when the winning try was sent.
async fn poll(
    lock: &RedisLock,
    owner: &str,
    lease: Duration,
    deadline: Instant,
    backoff: Backoff,
) -> Result<(u64, Instant), LockError> {
    // The try number the pause is for, counting from 1.
    let mut retry = 0;
    loop {
        let sent = Instant::now();
        // A spinner does not join the line of waiting processes: nobody will
        // hand it the lock, it just keeps trying (see `RedisLock::try_once`).
        let pttl = match lock.try_once(owner, lease).await? {
            Attempt::Acquired(token) => return Ok((token, sent)),
            Attempt::Held(pttl) => pttl,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(LockError::Timeout {
                name: lock.name().to_owned(),
                waited: Duration::ZERO, // `try_lock` fills it in
            });
        }
        // No point sleeping past the holder's lease or our own budget; a try
        // at the very end of the budget is the last one.
        retry += 1;
        let mut pause = backoff.delay(retry).min(deadline - now);
        if let Some(pttl) = pttl {
            pause = pause.min(pttl);
        }
        tokio::time::sleep(pause).await;
    }
}

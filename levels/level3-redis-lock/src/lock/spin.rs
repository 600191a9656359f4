//! Waiting by polling: try, sleep a growing random while, try again.
//!
//! This is what most hand-written Redis locks do (`SET key owner NX PX lease`
//! in a loop), and what `rslock`/`redlock-rs` do between their retries. It is
//! here to be compared with `pubsub.rs`, not to be used.
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

use std::time::{Duration, Instant};

use super::{Attempt, Line, LockError, RedisLock};

/// Exponential backoff with jitter: the n-th sleep is drawn at random from
/// the upper half of `min(first * 2^n, max)`, and never outlasts the holder's
/// remaining lease or the caller's wait budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first sleep.
    pub first: Duration,
    /// The largest ceiling the sleeps grow to.
    pub max: Duration,
}

impl Default for Backoff {
    /// 1 ms doubling up to 64 ms: quick on a short hold, at most ~16 tries a
    /// second per waiter on a long one.
    fn default() -> Self {
        Self {
            first: Duration::from_millis(1),
            max: Duration::from_millis(64),
        }
    }
}

impl Backoff {
    /// The sleep after a failed try, given the current ceiling ("equal
    /// jitter": half fixed, half random, so a sleep is never near zero).
    fn sleep_for(ceiling: Duration) -> Duration {
        let half = ceiling / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// Takes the lock for `owner`, polling until `deadline`. Returns the fencing
/// token and when the winning try was sent.
pub(super) async fn acquire(
    lock: &RedisLock,
    owner: &str,
    lease: Duration,
    deadline: Instant,
    backoff: Backoff,
) -> Result<(u64, Instant), LockError> {
    let mut ceiling = backoff.first;
    loop {
        let sent = Instant::now();
        // A spinner does not join the line of waiting processes: nobody will
        // hand it the lock, it just keeps trying. (It does respect a grant
        // the line holds, so it cannot jump ahead of `pubsub` waiters.)
        let pttl = match lock.attempt(owner, lease, Line::default()).await? {
            Attempt::Acquired(token) => return Ok((token, sent)),
            Attempt::Held(pttl) => pttl,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(lock.timeout());
        }
        // No point sleeping past the holder's lease or our own budget; a try
        // at the very end of the budget is the last one.
        let mut pause = Backoff::sleep_for(ceiling).min(deadline - now);
        if let Some(pttl) = pttl {
            pause = pause.min(pttl);
        }
        tokio::time::sleep(pause).await;
        ceiling = (ceiling * 2).min(backoff.max);
    }
}

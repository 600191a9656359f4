//! Waiting by subscription: sleep until a release says "your turn".
//! The `pubsub` strategy's way of waiting, and the lock's default.
//!
//! A waiter that polls (the `spin` strategy, `src/spin.rs`) guesses when to look again: too soon
//! and it floods Redis, too late and the lock sits free while buyers wait.
//! Redisson's answer, kept here: the final release PUBLISHes on the lock's
//! channel, and waiters sleep until that message arrives.
//!
//! Four things go wrong in naive versions of this, and each has its line
//! below:
//!
//! 1. **The release that slips between "try" and "subscribe".** A waiter
//!    tries, fails, subscribes; if the holder released in between, the message
//!    went out before anyone listened and the waiter sleeps on a free lock.
//!    So: subscribe *first* (and wait for Redis to confirm it), then try
//!    again, then sleep. A release after the subscription is heard; a release
//!    before it is seen by the new try.
//! 2. **The message that never comes.** PUBLISH is fire-and-forget: a
//!    subscriber that reconnects misses what was sent meanwhile, and a holder
//!    that crashes never publishes at all (its key just expires). So nobody
//!    sleeps longer than the holder's remaining lease (the PTTL the failed try
//!    returned): then it tries again whether a message came or not. When the
//!    subscriber's connection drops, every waiter looks at once.
//! 3. **The herd.** Wake every waiter on every release and they all rush
//!    Redis, one wins, the rest go back to sleep: N commands per release. Here
//!    a process subscribes *once* per lock, however many of its tasks wait,
//!    and a message wakes only the task at the head of that process's line.
//!    Tasks of one process take turns in arrival order; a newcomer does not
//!    jump the line (it would win every time: it is already running while the
//!    woken head is still being scheduled).
//! 4. **The race between processes.** If every process's head tried on every
//!    release, one would win and the others would have spent a command for
//!    nothing, and whichever process hears the message first (Redis sends it
//!    to subscribers in a fixed order) would win more often. So Redis keeps a
//!    line of *processes* too: a process whose try is refused joins it, and a
//!    release hands the lock to the process at its front for a short while
//!    (the *grant*, 100 ms) and names it in the message. Only that process's
//!    head tries, and nobody else may take the lock meanwhile. A process that
//!    still has waiters goes to the back of the line when served, so
//!    processes take turns as well. If the named process cannot use the
//!    grant, it passes it on at once (`pass.lua`); if it crashed, the grant
//!    runs out and everyone looks again.
//!
//! The head that is woken keeps its place until it leaves the line. If it
//! leaves *without* the lock (it gave up, failed, or was cancelled), it may
//! have swallowed the one message meant for the line, so it passes the
//! wake-up on to the next task. That rule is the whole defence against lost
//! wake-ups.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::redis_lock::Line;
use super::{Attempt, LockError, RedisLock, Wait};

/// Waits for a held lock on the lock's channel, woken by the release
/// (Redisson's way). See the top of this file.
#[derive(Debug, Clone, Copy, Default)]
pub struct WaitForRelease;

#[async_trait::async_trait]
impl Wait for WaitForRelease {
    async fn acquire(
        &self,
        lock: &RedisLock,
        owner: &str,
        lease: Duration,
        deadline: Instant,
    ) -> Result<(u64, Instant), LockError> {
        acquire(lock, owner, lease, deadline).await
    }
}

/// The fast path: one try, unless this process already has tasks waiting
/// for this lock (then we queue behind them instead of jumping the line), or
/// the caller already holds it (then it is reentrant and must not queue
/// behind tasks that wait for the caller itself). `None`: not taken.
async fn fast_path(
    lock: &RedisLock,
    owner: &str,
    lease: Duration,
    deadline: Instant,
) -> Result<Option<(u64, Instant)>, LockError> {
    let wakeups = &lock.client.inner.wakeups;
    let channel = lock.keys.channel.as_str();
    if !wakeups.may_try_at_once(channel, owner) {
        return Ok(None);
    }
    let sent = Instant::now();
    let line = Line {
        will_wait: deadline > sent,
        more_waiting: false,
        queued: wakeups.may_be_in_line(channel),
    };
    match lock.attempt(owner, lease, line).await? {
        Attempt::Acquired(token) => {
            wakeups.note_served(channel, line);
            Ok(Some((token, sent)))
        }
        Attempt::Held(pttl) => {
            wakeups.note_refused(&lock.keys, pttl, line);
            Ok(None)
        }
    }
}

/// Takes the lock for `owner`, waiting on the lock's channel until `deadline`.
/// Returns the fencing token and when the winning attempt was sent.
async fn acquire(
    lock: &RedisLock,
    owner: &str,
    lease: Duration,
    deadline: Instant,
) -> Result<(u64, Instant), LockError> {
    if let Some(acquired) = fast_path(lock, owner, lease, deadline).await? {
        return Ok(acquired);
    }
    let wakeups = &lock.client.inner.wakeups;
    let channel = lock.keys.channel.as_str();

    // The slow path: join the line, subscribe, and only then try again.
    let waiter = wakeups.enqueue(&lock.keys);
    wakeups.subscribe(channel).await?;
    // Subscribed: now try once more, if we are at the head of the line. (Tasks
    // behind us need not: the subscription was already there, or is being
    // made, for the head, so no release can slip by unheard.)
    let mut try_now = true;
    loop {
        let (head, behind) = waiter.position();
        let woken = waiter.slot.try_now.swap(false, Ordering::SeqCst);
        if head && (try_now || woken) {
            let sent = Instant::now();
            let line = Line {
                will_wait: true,
                more_waiting: behind > 0,
                queued: true,
            };
            match lock.attempt(owner, lease, line).await? {
                Attempt::Acquired(token) => {
                    wakeups.note_served(channel, line);
                    waiter.leave_with_lock(sent + lease);
                    return Ok((token, sent));
                }
                Attempt::Held(pttl) => wakeups.note_refused(&lock.keys, pttl, line),
            }
        }
        try_now = false;
        if Instant::now() >= deadline {
            // `waiter` drops here and passes any wake-up it held to the next.
            return Err(lock.timeout());
        }
        // Only the head needs a timer besides the deadline: everyone behind
        // it is woken, in turn, when the head leaves the line.
        let look_again = if head {
            wakeups
                .expiry(channel)
                .map_or(deadline, |expiry| expiry.min(deadline))
        } else {
            deadline
        };
        tokio::select! {
            () = waiter.slot.wake.notified() => {}
            () = tokio::time::sleep_until(look_again.into()) => {
                // The holder's lease (or a grant) should be over, or the
                // message was lost: look for ourselves.
                try_now = head && look_again < deadline;
            }
        }
    }
}

//! [`RedisLock`]: one named lock, and every script call made for it:
//! acquire, release (sent again when a reply is lost), renew, abandon, and
//! the fencing counter's floor.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::guard::{Health, LockGuard};
use super::{believed_end, millis, receipt_keep, watchdog, Lease, LockClient, LockError};
use super::{GRANT_TIME, LINE_KEEP};

/// What one run of `acquire.lua` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The caller holds the lock, with this fencing token.
    Acquired(u64),
    /// Someone else does; their lease has this long left (`None`: the key has
    /// no expiry, which these scripts never leave behind).
    Held(Option<Duration>),
}

/// What a successful release left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// That was the last hold: the lock is free and waiters were told.
    Free,
    /// The same owner still holds it from an outer acquisition (reentrancy).
    StillHeld,
}

/// One named lock. Cheap to clone.
#[derive(Clone)]
pub struct RedisLock {
    pub(super) client: LockClient,
    pub(super) name: Arc<str>,
    pub(super) keys: Arc<Keys>,
}

/// The Redis names of one lock (see the table in `mod.rs`).
pub(super) struct Keys {
    /// The prefix of a final release's receipt (`<prefix>:<release id>`).
    pub(super) receipt: String,
    /// The hash: `{owner: count, fence: token, attempt-<id>: 1, ...}`, or `{grant:
    /// instance}` while a release has handed the lock to a waiting process.
    pub(super) lock: String,
    /// The fencing counter.
    pub(super) counter: String,
    /// The line of waiting processes (instance ids, oldest first).
    pub(super) line: String,
    /// The pub/sub channel releases are announced on.
    pub(super) channel: String,
}

impl fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLock")
            .field("name", &self.name)
            .field("key", &self.keys.lock)
            .finish_non_exhaustive()
    }
}

impl RedisLock {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Redis key of the lock's hash (for tests and curious learners:
    /// `redis-cli HGETALL` it while a sale runs).
    pub fn key(&self) -> &str {
        &self.keys.lock
    }

    /// Takes the lock, waiting at most `wait` while someone else holds it.
    ///
    /// * `Ok(guard)`: held until [`LockGuard::release`] (or the lease ends).
    /// * [`LockError::Timeout`]: still held by someone else after `wait`.
    /// * [`LockError::Unavailable`]: Redis did not answer.
    ///
    /// Cancel-safe: dropping the future while it waits leaves the line
    /// without taking a wake-up meant for someone else.
    pub async fn try_lock(&self, wait: Duration, lease: Lease) -> Result<LockGuard, LockError> {
        let owner = self.client.current_owner();
        let lease_time = match lease {
            Lease::Watchdog => self.client.inner.options.watchdog_lease,
            Lease::Fixed(lease) => lease,
        };
        let started = Instant::now();
        let deadline = started + wait;
        // `sent` is when the winning attempt left: the lease started at the
        // latest then, so the guard's own idea of its expiry is never late.
        let waiting = self.client.inner.options.waiting.clone();
        let acquired = waiting.acquire(self, &owner, lease_time, deadline).await;
        let (token, sent) = acquired.map_err(|err| match err {
            LockError::Timeout { name, .. } => LockError::Timeout {
                name,
                waited: started.elapsed(),
            },
            other => other,
        })?;
        if let Some(wait) = self.client.inner.options.replicas {
            self.await_replicas(&owner, token, wait).await?;
        }
        self.client
            .inner
            .wakeups
            .add_holder(&self.keys, &owner, sent + lease_time);
        let health = Arc::new(Health::new(believed_end(sent, lease_time)));
        let watchdog = match lease {
            Lease::Watchdog => Some(watchdog::spawn(
                self.clone(),
                owner.clone(),
                token,
                lease_time,
                health.clone(),
            )),
            Lease::Fixed(_) => None,
        };
        Ok(LockGuard {
            lock: self.clone(),
            owner,
            token,
            lease: lease_time,
            waited: started.elapsed(),
            health,
            watchdog,
            released: false,
        })
    }

    /// `WAIT` until `wait.replicas` replicas have the hold just taken with
    /// `token`; if fewer do in time, or Redis does not answer, gives the
    /// hold back (as Redisson does when no replica synced) and fails.
    async fn await_replicas(
        &self,
        owner: &str,
        token: u64,
        wait: super::ReplicaWait,
    ) -> Result<(), LockError> {
        let acknowledged = self
            .client
            .wait_for_replicas(&self.keys.lock, wait.replicas, wait.timeout)
            .await;
        let error = match acknowledged {
            Ok(acknowledged) if acknowledged >= wait.replicas => return Ok(()),
            Ok(acknowledged) => LockError::NotReplicated {
                name: self.name.to_string(),
                acknowledged,
                wanted: wait.replicas,
            },
            Err(err) => err,
        };
        if let Err(err) = self.release_as(owner, Some(token)).await {
            tracing::debug!(lock = %self.name, %err, "could not give back an unreplicated hold; its lease will");
        }
        Err(error)
    }

    /// Releases one hold of the current task, Redisson's `unlock()`:
    /// [`LockError::NotOwner`] if this task does not hold the lock (nothing is
    /// deleted). Prefer [`LockGuard::release`], which also stops the watchdog.
    pub async fn unlock(&self) -> Result<Released, LockError> {
        let owner = self.client.current_owner();
        let answer = self.release_as(&owner, None).await;
        match answer? {
            Some(released) => {
                self.client
                    .inner
                    .wakeups
                    .forget_holder(&self.keys.channel, &owner);
                Ok(released)
            }
            None => Err(LockError::NotOwner {
                name: self.name.to_string(),
                owner,
            }),
        }
    }

    /// Whether anyone holds the lock right now.
    pub async fn is_locked(&self) -> Result<bool, LockError> {
        self.client
            .query(redis::cmd("EXISTS").arg(&self.keys.lock))
            .await
    }

    /// The error for a spent wait budget (the caller fills in how long).
    pub(super) fn timeout(&self) -> LockError {
        LockError::Timeout {
            name: self.name.to_string(),
            waited: Duration::ZERO,
        }
    }

    /// One try, for a way of waiting that polls (see [`super::Wait`]): takes
    /// the lock for `owner` if it is free (or already `owner`'s), else says
    /// how long the holder's lease has left. It does not join the line of
    /// waiting processes: nobody will hand it the lock, it must try again.
    /// (It does respect a grant the line holds, so it cannot jump ahead of
    /// the processes waiting there.) Safe to cancel.
    pub async fn try_once(&self, owner: &str, lease: Duration) -> Result<Attempt, LockError> {
        self.attempt(owner, lease, Line::default()).await
    }

    /// One run of `acquire.lua`, safe to cancel.
    ///
    /// If the caller's future is dropped while the script is on its way (a
    /// buyer hung up), or the reply times out, Redis may run it anyway and
    /// hand the lock (or one more reentrant hold of it) to an owner that is
    /// no longer listening: everyone would wait out the lease, or the count
    /// would never reach zero. So such an attempt sends `abandon.lua` after
    /// itself, which undoes exactly the hold *this* attempt added (the hash
    /// marks the id of every attempt that added one). One connection keeps
    /// order, so it runs after the attempt.
    pub(super) async fn attempt(
        &self,
        owner: &str,
        lease: Duration,
        line: Line,
    ) -> Result<Attempt, LockError> {
        let id = format!("{:016x}", rand::random::<u64>());
        let mut abandoned = AbandonOnDrop {
            lock: self,
            owner,
            attempt: &id,
            armed: true,
        };
        let answer = self.attempt_once(owner, lease, &id, line).await;
        // An answer settles it. An error does not: a reply that timed out
        // may have left after the script ran and took the lock (or one more
        // reentrant hold), so the attempt is undone as if it were cancelled.
        abandoned.armed = answer.is_err();
        answer
    }

    async fn attempt_once(
        &self,
        owner: &str,
        lease: Duration,
        id: &str,
        line: Line,
    ) -> Result<Attempt, LockError> {
        let flag = |set: bool| if set { "1" } else { "0" };
        let (acquired, value): (i64, i64) = self
            .client
            .invoke(
                self.client
                    .inner
                    .scripts
                    .acquire
                    .key(&self.keys.lock)
                    .key(&self.keys.counter)
                    .key(&self.keys.line)
                    .arg(owner)
                    .arg(millis(lease))
                    .arg(id)
                    .arg(&self.client.inner.instance)
                    .arg(flag(line.will_wait))
                    .arg(flag(line.more_waiting))
                    .arg(millis(LINE_KEEP))
                    .arg(flag(line.queued)),
            )
            .await?;
        Ok(if acquired == 1 {
            Attempt::Acquired(u64::try_from(value).unwrap_or_default())
        } else {
            Attempt::Held(u64::try_from(value).ok().map(Duration::from_millis))
        })
    }

    /// Runs `release.lua` for `owner`. `Ok(None)` means "not yours".
    ///
    /// With a `token`, only the hold with that fencing token is released (a
    /// guard's own); without, any hold of `owner` ([`RedisLock::unlock`]).
    ///
    /// The release is sent again (up to three sends) when Redis did not
    /// answer: the reply may have been lost *after* Redis released. Every
    /// send carries the same release id, and a repeat is marked as one, so it
    /// neither takes a second hold away from a reentrant owner (the script
    /// remembers the id) nor reports "not yours" for a lock the first send
    /// already freed (that send left a receipt). A repeat that finds the
    /// hold gone *without* a receipt reports it lost, as a first send would:
    /// the lease ran out before any send arrived.
    pub(super) async fn release_as(
        &self,
        owner: &str,
        token: Option<u64>,
    ) -> Result<Option<Released>, LockError> {
        let id = format!("{:016x}", rand::random::<u64>());
        let mut pause = Duration::from_millis(20);
        let mut sends = 0;
        loop {
            sends += 1;
            match self.send_release(owner, token, &id, sends > 1).await {
                Err(LockError::Unavailable(_)) if sends < 3 => {
                    tokio::time::sleep(pause).await;
                    pause *= 4;
                }
                answer => return answer,
            }
        }
    }

    /// One send of `release.lua`.
    pub(super) async fn send_release(
        &self,
        owner: &str,
        token: Option<u64>,
        id: &str,
        repeated: bool,
    ) -> Result<Option<Released>, LockError> {
        let token = token.map(|token| token.to_string()).unwrap_or_default();
        let inner = &self.client.inner;
        // Our own waiters for this lock queue behind everyone else's.
        let requeue = if inner.wakeups.has_waiters(&self.keys.channel) {
            inner.instance.as_str()
        } else {
            ""
        };
        let answer: i64 = self
            .client
            .invoke(
                inner
                    .scripts
                    .release
                    .key(&self.keys.lock)
                    .key(&self.keys.line)
                    .key(format!("{}:{id}", self.keys.receipt))
                    .arg(owner)
                    .arg(&token)
                    .arg(id)
                    .arg(if repeated { "1" } else { "0" })
                    .arg(millis(receipt_keep(&inner.options)))
                    .arg(&self.keys.channel)
                    .arg(millis(GRANT_TIME))
                    .arg(requeue)
                    .arg(self.client.sharded_flag()),
            )
            .await?;
        Ok(match answer {
            1 => Some(Released::Free),
            0 => Some(Released::StillHeld),
            // The hold is gone and no send of this release freed it: its
            // lease ran out (or it never existed). Nothing was touched.
            _ => None,
        })
    }

    /// Tells the lock that the database has accepted fencing tokens up to
    /// `seen`: the next hold's token will be above it (`floor.lua`).
    ///
    /// Call it when the database refused a write because its row carries a
    /// token at least as large as this hold's. That only happens to a hold
    /// that is stale, or whose token was handed out twice because Redis lost
    /// its newest writes (a restart from an older snapshot, a failover to a
    /// lagging replica) and the counter went back. Either way the database
    /// refused it; this makes sure the next holder is not refused for the
    /// same reason.
    pub async fn raise_token_floor(&self, seen: u64) -> Result<(), LockError> {
        let _: i64 = self
            .client
            .invoke(
                self.client
                    .inner
                    .scripts
                    .floor
                    .key(&self.keys.counter)
                    .arg(seen),
            )
            .await?;
        Ok(())
    }

    /// One run of `renew.lua`: `Ok(false)` when the hold is gone.
    pub(super) async fn renew(
        &self,
        owner: &str,
        token: u64,
        lease: Duration,
    ) -> Result<bool, LockError> {
        let renewed: i64 = self
            .client
            .invoke(
                self.client
                    .inner
                    .scripts
                    .renew
                    .key(&self.keys.lock)
                    .arg(owner)
                    .arg(millis(lease))
                    .arg(token),
            )
            .await?;
        Ok(renewed == 1)
    }
}

/// Sends `abandon.lua` for an attempt whose caller stopped waiting (see
/// [`RedisLock::attempt`]).
struct AbandonOnDrop<'a> {
    lock: &'a RedisLock,
    owner: &'a str,
    attempt: &'a str,
    armed: bool,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let lock = self.lock.clone();
        let (owner, attempt) = (self.owner.to_owned(), self.attempt.to_owned());
        runtime.spawn(async move {
            let inner = &lock.client.inner;
            // As in a release: if other tasks here wait for the lock, this
            // process goes back in line. The attempt may have taken it out
            // when it took the lock, and nobody else would wake them.
            let requeue = if inner.wakeups.has_waiters(&lock.keys.channel) {
                inner.instance.as_str()
            } else {
                ""
            };
            let scripts = &inner.scripts;
            let undone: Result<i64, LockError> = lock
                .client
                .invoke(
                    scripts
                        .abandon
                        .key(&lock.keys.lock)
                        .key(&lock.keys.line)
                        .arg(&owner)
                        .arg(&attempt)
                        .arg(&lock.keys.channel)
                        .arg(millis(GRANT_TIME))
                        .arg(requeue)
                        .arg(lock.client.sharded_flag()),
                )
                .await;
            if let Err(err) = undone {
                tracing::debug!(lock = %lock.name, %err, "could not undo an abandoned attempt; its lease will");
            }
        });
    }
}

/// How an attempt relates to the line of waiting processes.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Line {
    /// The caller will wait if refused: its process joins the line.
    pub(super) will_wait: bool,
    /// More tasks of the caller's process wait behind it: once served, the
    /// process goes to the back of the line again.
    pub(super) more_waiting: bool,
    /// The caller's process may be in the line: once served, it leaves it.
    pub(super) queued: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LockOptions;

    /// A release whose reply was lost and that is sent again (same id,
    /// marked as a repeat) gets the first answer back: it does not take a
    /// second hold away from a reentrant owner, and a repeat of the final
    /// release does not report "not yours".
    #[tokio::test]
    async fn a_repeated_release_is_harmless() {
        let redis = ticket_core::services::Redis::shared().expect("a Redis for the tests");
        let options = LockOptions {
            key_prefix: format!("unit-{:016x}", rand::random::<u64>()),
            ..LockOptions::default()
        };
        let client = LockClient::new(redis.url(), "unit", options).unwrap();
        let lock = client.lock("receipt");
        let outer = lock
            .try_lock(Duration::from_secs(1), Lease::Watchdog)
            .await
            .unwrap();
        let inner = lock
            .try_lock(Duration::from_secs(1), Lease::Watchdog)
            .await
            .unwrap();
        let owner = outer.owner().to_owned();
        let token = Some(outer.fencing_token());

        let first = lock.send_release(&owner, token, "r1", false).await.unwrap();
        let repeat = lock.send_release(&owner, token, "r1", true).await.unwrap();
        assert_eq!(first, Some(Released::StillHeld));
        assert_eq!(repeat, Some(Released::StillHeld));
        assert!(lock.is_locked().await.unwrap(), "one hold is left");

        let last = lock.send_release(&owner, token, "r2", false).await.unwrap();
        assert_eq!(last, Some(Released::Free));
        assert!(!lock.is_locked().await.unwrap());
        assert_eq!(
            lock.send_release(&owner, token, "r2", true).await.unwrap(),
            Some(Released::Free),
            "a repeat of the final release reports it released and deletes nothing"
        );
        assert_eq!(
            lock.send_release(&owner, token, "r3", false).await.unwrap(),
            None,
            "a first send for a hold that is gone is refused"
        );
        std::mem::forget((outer, inner)); // both holds were given back above
    }

    /// A repeat of a release whose hold is gone, and which no send of this
    /// release freed (the lease ran out first), reports the hold lost, not
    /// "released": only a release that left a receipt may say that.
    #[tokio::test]
    async fn a_repeated_release_that_finds_the_hold_expired_reports_it_lost() {
        let redis = ticket_core::services::Redis::shared().expect("a Redis for the tests");
        let options = LockOptions {
            key_prefix: format!("unit-{:016x}", rand::random::<u64>()),
            ..LockOptions::default()
        };
        let client = LockClient::new(redis.url(), "unit", options).unwrap();
        let lock = client.lock("expired");
        let guard = lock
            .try_lock(
                Duration::from_secs(1),
                Lease::Fixed(Duration::from_millis(50)),
            )
            .await
            .unwrap();
        let (owner, token) = (guard.owner().to_owned(), Some(guard.fencing_token()));
        while lock.is_locked().await.unwrap() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let repeat = lock.send_release(&owner, token, "r1", true).await.unwrap();
        assert_eq!(repeat, None, "the hold expired; no send of r1 freed it");
        std::mem::forget(guard); // its lease already ended it
    }
}

//! The per-process side of waiting by subscription: one subscriber
//! connection, one subscription per lock that has local waiters, and each
//! lock's local line of waiting tasks. [`super::WaitForRelease`] (in
//! `wait_for_release.rs`) is the waiting itself, and explains why each piece
//! here exists.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Msg, PushInfo, PushKind, Script};
use ticket_core::redis_conn::RedisOptions;
use tokio::sync::{mpsc, Notify};

use super::redis_lock::{Keys, Line};
use super::subscriber::{ShardedSubscriber, Subscriber};
use super::{LockError, GRANT_TIME};

/// How long a subscription outlives its last waiter. During a rush the line
/// empties and refills all the time; unsubscribing at once would send an
/// UNSUBSCRIBE and a SUBSCRIBE for nearly every sale.
const LINGER: Duration = Duration::from_secs(1);

/// When Redis reports no expiry for a held lock (never left by our scripts,
/// but a person with `redis-cli PERSIST` can), look again this often.
const NO_EXPIRY_RECHECK: Duration = Duration::from_secs(1);

/// One waiting task's place in its process's line.
pub(super) struct Slot {
    /// Woken when the task should look again: the lock was handed to this
    /// process or to anyone (with `try_now` set), or the task just became the
    /// head of the line, or the lock went to another process (without).
    pub(super) wake: Notify,
    /// Set with every wake-up that means "the lock may be yours: try".
    pub(super) try_now: AtomicBool,
}

/// What this process knows about one lock: its line, its local holders, and
/// whether it is subscribed to the lock's channel.
struct Channel {
    /// The lock's Redis names.
    keys: Arc<Keys>,
    /// Tasks waiting for the lock, in arrival order. The head is the one a
    /// message wakes.
    line: VecDeque<Arc<Slot>>,
    /// Owners in this process that hold the lock, with their hold counts.
    /// Only used to let reentrant acquisitions skip the line.
    holders: HashMap<String, u32>,
    /// When the head should look again by itself, as last learnt: the PTTL
    /// of a failed try, the lease of a hold taken here, or the end of a grant
    /// to another process.
    expiry: Option<Instant>,
    /// A release named this process and no task here has used the grant yet.
    granted: bool,
    /// This process may be in Redis's line of waiting processes.
    in_line: bool,
    /// Whether the subscriber is SUBSCRIBEd to this channel. Behind an async
    /// mutex because it is held across the SUBSCRIBE/UNSUBSCRIBE round trip:
    /// that orders a new waiter's SUBSCRIBE after a lingering UNSUBSCRIBE.
    subscribed: Arc<tokio::sync::Mutex<bool>>,
    /// An UNSUBSCRIBE task is already waiting out the linger time.
    unsubscribe_scheduled: bool,
}

impl Channel {
    fn new(keys: Arc<Keys>) -> Self {
        Self {
            keys,
            line: VecDeque::new(),
            holders: HashMap::new(),
            expiry: None,
            granted: false,
            in_line: false,
            subscribed: Arc::new(tokio::sync::Mutex::new(false)),
            unsubscribe_scheduled: false,
        }
    }

    /// Wakes the head of the line, telling it to try (`try_now`) or only to
    /// look at its timer again.
    fn wake_head(&self, try_now: bool) {
        if let Some(head) = self.line.front() {
            if try_now {
                head.try_now.store(true, Ordering::SeqCst);
            }
            head.wake.notify_one();
        }
    }
}

/// Every lock this process waits for or holds, by channel name.
///
/// A `std::sync::Mutex`, not Tokio's: it is only ever held for a few map and
/// queue operations, never across an `.await`, and it is also locked from the
/// connection's message callback, which cannot await at all.
type Registry = Arc<Mutex<HashMap<String, Channel>>>;

fn lock_registry(registry: &Registry) -> MutexGuard<'_, HashMap<String, Channel>> {
    // Poisoned only if a panic hit mid-update; the map is still usable.
    registry
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Work for the background task, which may await where the message callback
/// and `Drop` may not.
enum Chore {
    /// The subscriber's connection dropped: reconnect, then wake everyone.
    Reconnect,
    /// A grant to this process went unused: hand it on (`pass.lua`).
    PassOn(Arc<Keys>),
}

/// The per-process subscriber: one connection, one subscription per lock
/// that has local waiters, and the local lines.
pub(super) struct WakeUps {
    registry: Registry,
    subscriber: Subscriber,
    instance: String,
    chores: mpsc::UnboundedSender<Chore>,
    /// Runs the chores (see [`do_chores`]).
    _chores_task: AbortOnDrop,
}

impl WakeUps {
    /// The subscriber of one Redis: plain pub/sub, on `client` (RESP3).
    pub(super) fn new(
        client: redis::Client,
        config: ConnectionManagerConfig,
        instance: String,
    ) -> Result<Self, LockError> {
        let registry: Registry = Arc::default();
        let (chores, todo) = mpsc::unbounded_channel();
        let config = config
            .set_push_sender(on_push(&registry, &chores, &instance))
            .set_automatic_resubscription();
        let subscriber = Subscriber::Plain(
            ConnectionManager::new_lazy_with_config(client, config).map_err(LockError::Redis)?,
        );
        Ok(Self::start(registry, subscriber, instance, chores, todo))
    }

    /// The subscriber of a Redis Cluster reached through `seeds`: sharded
    /// pub/sub (see `subscriber.rs`).
    pub(super) fn new_sharded(
        seeds: &[String],
        options: RedisOptions,
        instance: String,
    ) -> Result<Self, LockError> {
        let registry: Registry = Arc::default();
        let (chores, todo) = mpsc::unbounded_channel();
        let push = on_push(&registry, &chores, &instance);
        let subscriber = Subscriber::Sharded(Arc::new(
            ShardedSubscriber::new(seeds, options, push).map_err(LockError::Redis)?,
        ));
        Ok(Self::start(registry, subscriber, instance, chores, todo))
    }

    fn start(
        registry: Registry,
        subscriber: Subscriber,
        instance: String,
        chores: mpsc::UnboundedSender<Chore>,
        todo: mpsc::UnboundedReceiver<Chore>,
    ) -> Self {
        let chores_task = tokio::spawn(do_chores(
            subscriber.clone(),
            registry.clone(),
            instance.clone(),
            todo,
        ));
        Self {
            registry,
            subscriber,
            instance,
            chores,
            _chores_task: AbortOnDrop(chores_task),
        }
    }

    /// True when a caller may try at once: nobody of this process is in line
    /// for the lock, or the caller already holds it (reentrancy).
    pub(super) fn may_try_at_once(&self, channel: &str, owner: &str) -> bool {
        lock_registry(&self.registry)
            .get(channel)
            .is_none_or(|channel| channel.line.is_empty() || channel.holders.contains_key(owner))
    }

    /// After a refused try: when the holder's lease (or a grant) should
    /// end, and whether the try put this process in the line.
    pub(super) fn note_refused(&self, keys: &Arc<Keys>, pttl: Option<Duration>, line: Line) {
        let expiry = Instant::now() + pttl.unwrap_or(NO_EXPIRY_RECHECK);
        let mut registry = lock_registry(&self.registry);
        let channel = registry
            .entry(keys.channel.clone())
            .or_insert_with(|| Channel::new(keys.clone()));
        channel.expiry = Some(expiry);
        channel.in_line |= line.will_wait;
    }

    /// After a successful try: the process left the line, or went to its back.
    pub(super) fn note_served(&self, channel: &str, line: Line) {
        if let Some(channel) = lock_registry(&self.registry).get_mut(channel) {
            channel.in_line = line.more_waiting || (channel.in_line && !line.queued);
            channel.granted = false;
        }
    }

    /// Whether this process may be in Redis's line for the lock: then a
    /// successful try must take it out.
    pub(super) fn may_be_in_line(&self, channel: &str) -> bool {
        lock_registry(&self.registry)
            .get(channel)
            .is_some_and(|channel| channel.in_line || channel.granted || !channel.line.is_empty())
    }

    /// Whether tasks of this process wait for the lock.
    pub(super) fn has_waiters(&self, channel: &str) -> bool {
        lock_registry(&self.registry)
            .get(channel)
            .is_some_and(|channel| !channel.line.is_empty())
    }

    pub(super) fn expiry(&self, channel: &str) -> Option<Instant> {
        lock_registry(&self.registry)
            .get(channel)
            .and_then(|channel| channel.expiry)
    }

    /// Records a hold taken by `owner` in this process.
    pub(super) fn add_holder(&self, keys: &Arc<Keys>, owner: &str, expiry: Instant) {
        let mut registry = lock_registry(&self.registry);
        let channel = registry
            .entry(keys.channel.clone())
            .or_insert_with(|| Channel::new(keys.clone()));
        *channel.holders.entry(owner.to_owned()).or_default() += 1;
        channel.expiry = Some(expiry);
        channel.granted = false;
    }

    /// Forgets one hold of `owner` (the guard was released or dropped).
    pub(super) fn forget_holder(&self, name: &str, owner: &str) {
        let mut registry = lock_registry(&self.registry);
        let Some(channel) = registry.get_mut(name) else {
            return;
        };
        if let Some(count) = channel.holders.get_mut(owner) {
            *count -= 1;
            if *count == 0 {
                channel.holders.remove(owner);
            }
        }
        remove_if_unused(&mut registry, name);
    }

    /// Puts the current task at the end of the lock's line.
    pub(super) fn enqueue(&self, keys: &Arc<Keys>) -> Waiter<'_> {
        let slot = Arc::new(Slot {
            wake: Notify::new(),
            try_now: AtomicBool::new(false),
        });
        lock_registry(&self.registry)
            .entry(keys.channel.clone())
            .or_insert_with(|| Channel::new(keys.clone()))
            .line
            .push_back(slot.clone());
        Waiter {
            wakeups: self,
            channel: keys.channel.clone(),
            slot,
            left: false,
        }
    }

    /// Makes sure this process is subscribed to `channel`. The first waiter
    /// sends SUBSCRIBE and waits for Redis to confirm it; the others find it
    /// done. Only a confirmed subscription counts: that is what makes the
    /// "subscribe, then try" order hold.
    pub(super) async fn subscribe(&self, channel: &str) -> Result<(), LockError> {
        let subscribed = lock_registry(&self.registry)
            .get(channel)
            .map(|entry| entry.subscribed.clone())
            .expect("a waiter's channel stays registered while it waits");
        let mut subscribed = subscribed.lock().await;
        if !*subscribed {
            self.subscriber
                .subscribe(channel)
                .await
                .map_err(LockError::from_redis)?;
            *subscribed = true;
        }
        Ok(())
    }

    /// Called when a line becomes empty: unsubscribe after [`LINGER`], unless
    /// someone joined the line in the meantime.
    fn schedule_unsubscribe(&self, registry: &mut HashMap<String, Channel>, name: &str) {
        let Some(channel) = registry.get_mut(name) else {
            return;
        };
        if channel.unsubscribe_scheduled {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        channel.unsubscribe_scheduled = true;
        let subscribed = channel.subscribed.clone();
        let keys = channel.keys.clone();
        let registry = self.registry.clone();
        let subscriber = self.subscriber.clone();
        let instance = self.instance.clone();
        let name = name.to_owned();
        runtime.spawn(async move {
            tokio::time::sleep(LINGER).await;
            let still_idle = |registry: &mut HashMap<String, Channel>| match registry.get_mut(&name)
            {
                Some(channel) if channel.line.is_empty() => true,
                Some(channel) => {
                    channel.unsubscribe_scheduled = false;
                    false
                }
                None => false,
            };
            if !still_idle(&mut lock_registry(&registry)) {
                return;
            }
            // Hold the subscription state across UNSUBSCRIBE: a waiter that
            // arrives now waits here, then subscribes again.
            let mut subscribed = subscribed.lock().await;
            if !still_idle(&mut lock_registry(&registry)) {
                return;
            }
            if *subscribed {
                if let Some(channel) = lock_registry(&registry).get_mut(&name) {
                    channel.in_line = false;
                }
                // Deaf from now on, so out of the line of processes too: a
                // grant we cannot hear would only make the others wait. (If
                // Redis is down these fail; the line's expiry cleans up, and
                // a stray subscription only costs messages nobody reads.)
                let _ = subscriber.unsubscribe(&name).await;
                let _: redis::RedisResult<i64> = subscriber
                    .query(redis::cmd("LREM").arg(&keys.line).arg(0).arg(&instance))
                    .await;
                *subscribed = false;
            }
            drop(subscribed);
            let mut registry = lock_registry(&registry);
            if let Some(channel) = registry.get_mut(&name) {
                channel.unsubscribe_scheduled = false;
            }
            remove_if_unused(&mut registry, &name);
        });
    }
}

/// What the subscriber does with each message Redis pushes: a release
/// (`message`, or `smessage` on a cluster) is handled right where the
/// connection reads it, a lookup and a `notify_one`, no extra task in
/// between; a dropped connection (on a cluster: to one of the masters)
/// becomes a chore.
fn on_push(
    registry: &Registry,
    chores: &mpsc::UnboundedSender<Chore>,
    instance: &str,
) -> impl Fn(PushInfo) -> Result<(), std::convert::Infallible> + Send + Sync + 'static {
    let registry = registry.clone();
    let chores = chores.clone();
    let instance = instance.to_owned();
    move |push: PushInfo| {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let Some(message) = Msg::from_push_info(push) {
                    let named: String = message.get_payload().unwrap_or_default();
                    on_release(
                        &registry,
                        &chores,
                        &instance,
                        message.get_channel_name(),
                        &named,
                    );
                }
            }
            PushKind::Disconnection => {
                let _ = chores.send(Chore::Reconnect);
            }
            _ => {}
        }
        Ok(())
    }
}

/// A release was announced on `channel`, handing the lock to `named` (an
/// instance id; empty: to anyone).
fn on_release(
    registry: &Registry,
    chores: &mpsc::UnboundedSender<Chore>,
    instance: &str,
    channel: &str,
    named: &str,
) {
    let mut registry = lock_registry(registry);
    let Some(channel) = registry.get_mut(channel) else {
        return;
    };
    if named.is_empty() {
        channel.wake_head(true);
    } else if named == instance {
        if channel.line.is_empty() {
            // Nobody here wants it any more: hand it on now rather than
            // make everyone wait for the grant to run out.
            let _ = chores.send(Chore::PassOn(channel.keys.clone()));
        } else {
            channel.granted = true;
            channel.wake_head(true);
        }
    } else {
        // Another process's turn. Should it have died, its grant runs out
        // soon: look again then, not at the end of the old holder's lease.
        channel.expiry = Some(Instant::now() + GRANT_TIME + Duration::from_millis(5));
        channel.wake_head(false);
    }
}

/// Drops a channel's entry once nothing refers to it: nobody waits, nobody
/// here holds the lock, and it is not subscribed.
fn remove_if_unused(registry: &mut HashMap<String, Channel>, name: &str) {
    let unused = registry.get(name).is_some_and(|channel| {
        channel.line.is_empty()
            && channel.holders.is_empty()
            && !channel.unsubscribe_scheduled
            && channel
                .subscribed
                .try_lock()
                .is_ok_and(|subscribed| !*subscribed)
    });
    if unused {
        registry.remove(name);
    }
}

/// A task's place in line. Leaving the line happens in `Drop`, so that a
/// waiter that is cancelled, times out or fails cannot forget to.
pub(super) struct Waiter<'a> {
    wakeups: &'a WakeUps,
    channel: String,
    pub(super) slot: Arc<Slot>,
    left: bool,
}

impl Waiter<'_> {
    /// Whether this task is the head of its line, and how many wait behind it.
    pub(super) fn position(&self) -> (bool, usize) {
        let registry = lock_registry(&self.wakeups.registry);
        let Some(channel) = registry.get(&self.channel) else {
            return (false, 0);
        };
        let head = channel
            .line
            .front()
            .is_some_and(|head| Arc::ptr_eq(head, &self.slot));
        (head, channel.line.len().saturating_sub(1))
    }

    /// Leaves the line holding the lock, whose lease ends at `expiry`.
    pub(super) fn leave_with_lock(mut self, expiry: Instant) {
        self.leave(Some(expiry));
    }

    fn leave(&mut self, acquired: Option<Instant>) {
        if self.left {
            return;
        }
        self.left = true;
        let mut registry = lock_registry(&self.wakeups.registry);
        let Some(channel) = registry.get_mut(&self.channel) else {
            return;
        };
        let position = channel
            .line
            .iter()
            .position(|slot| Arc::ptr_eq(slot, &self.slot));
        if let Some(position) = position {
            channel.line.remove(position);
            if position == 0 {
                if let Some(next) = channel.line.front() {
                    // The next task is now the head. If we leave with the
                    // lock, it just needs to start its timer (our release
                    // will wake it). If we leave without it, we may have
                    // swallowed the wake-up meant for the line: pass it on.
                    if acquired.is_none() {
                        next.try_now.store(true, Ordering::SeqCst);
                    }
                    next.wake.notify_one();
                } else if acquired.is_none() && channel.granted {
                    // The last waiter here gives up holding this process's
                    // grant: hand it to the next process.
                    channel.granted = false;
                    let _ = self
                        .wakeups
                        .chores
                        .send(Chore::PassOn(channel.keys.clone()));
                }
            }
        }
        if let Some(expiry) = acquired {
            channel.expiry = Some(expiry);
            channel.granted = false;
        }
        if channel.line.is_empty() {
            self.wakeups
                .schedule_unsubscribe(&mut registry, &self.channel);
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.leave(None);
    }
}

/// The background task: work that needs to await.
///
/// * **Reconnect.** When the subscriber's connection drops, messages sent
///   meanwhile are lost, and the connection manager reconnects only when a
///   command asks for it. So this PINGs until a connection (with every
///   subscription restored) is back, then wakes every line's head to look at
///   its lock instead of trusting that nothing happened while we were deaf.
/// * **Pass on** a grant nobody here can use (`pass.lua`).
async fn do_chores(
    subscriber: Subscriber,
    registry: Registry,
    instance: String,
    mut todo: mpsc::UnboundedReceiver<Chore>,
) {
    let pass = Script::new(handing_on!("pass.lua"));
    let sharded = matches!(subscriber, Subscriber::Sharded(_));
    while let Some(chore) = todo.recv().await {
        match chore {
            Chore::Reconnect => {
                // Wake the heads now too: if Redis is down their tries fail
                // fast, and they answer "unavailable" instead of sleeping out
                // their lease.
                wake_every_head(&registry);
                let mut pause = Duration::from_millis(50);
                loop {
                    let pong: redis::RedisResult<redis::Value> =
                        subscriber.query(&redis::cmd("PING")).await;
                    if pong.is_ok() {
                        break;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                wake_every_head(&registry);
            }
            Chore::PassOn(keys) => {
                if let Some(channel) = lock_registry(&registry).get_mut(&keys.channel) {
                    channel.in_line = false;
                }
                let passed: redis::RedisResult<i64> = subscriber
                    .invoke(
                        pass.key(&keys.lock)
                            .key(&keys.line)
                            .arg(&instance)
                            .arg(&keys.channel)
                            .arg(super::millis(GRANT_TIME))
                            .arg(if sharded { "1" } else { "0" }),
                    )
                    .await;
                if let Err(err) = passed {
                    tracing::debug!(%err, "could not pass on an unused grant; it runs out by itself");
                }
            }
        }
    }
}

fn wake_every_head(registry: &Registry) {
    for channel in lock_registry(registry).values() {
        channel.wake_head(true);
    }
}

/// Aborts a background task when the client that owns it is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

//! The Redis lock on its own, against a real Redis (one throwaway
//! `redis-server` per test process; every test uses its own key prefix).
//!
//! "Two processes" are two [`LockClient`]s with different instance ids: each
//! has its own command connection, its own subscriber connection and its own
//! local waiting lines, which is everything a second process would have. Only
//! the address space is shared, and the lock never uses it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use level3::lock::{Lease, LockClient, LockError, LockOptions, Released, WaitForRelease, Waiting};
use level3::spin::SPIN_BACKOFF;
use ticket_core::services::Redis;

fn redis_url() -> String {
    Redis::shared()
        .expect("a Redis for the tests (install redis-server or set REDIS_URL)")
        .url()
        .to_owned()
}

/// Options with a key prefix no other test uses.
fn options(waiting: Waiting) -> LockOptions {
    LockOptions {
        key_prefix: format!("test-{:016x}", rand::random::<u64>()),
        waiting,
        ..LockOptions::default()
    }
}

/// Two clients on one Redis, as two server processes would have.
fn two_processes(waiting: Waiting) -> (LockClient, LockClient) {
    let options = options(waiting);
    let url = redis_url();
    (
        LockClient::new(&url, "process-a", options.clone()).unwrap(),
        LockClient::new(&url, "process-b", options).unwrap(),
    )
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Waiting by subscription (the `pubsub` strategy's).
fn pubsub() -> Waiting {
    Arc::new(WaitForRelease)
}

/// Waiting by polling (the `spin` strategy's).
fn spin() -> Waiting {
    Arc::new(SPIN_BACKOFF)
}

/// The read-modify-write every test of mutual exclusion runs: read a counter
/// kept in Redis, yield (so that any other task inside the lock would run
/// now), write it back plus one. Without the lock, updates get lost.
async fn increment_under_lock(
    client: LockClient,
    name: String,
    rounds: u64,
    inside: Arc<AtomicBool>,
) -> u64 {
    let mut conn = raw(&redis_url()).await;
    let counter = format!("{}:counter:{name}", client.options().key_prefix);
    let lock = client.lock(&name);
    for _ in 0..rounds {
        let guard = lock
            .try_lock(Duration::from_secs(20), Lease::Watchdog)
            .await
            .expect("the lock within the wait budget");
        assert!(
            !inside.swap(true, Ordering::SeqCst),
            "two holders inside the lock at once"
        );
        let value: u64 = redis::cmd("GET")
            .arg(&counter)
            .query_async::<Option<u64>>(&mut conn)
            .await
            .unwrap()
            .unwrap_or(0);
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_micros(200)).await;
        let _: () = redis::cmd("SET")
            .arg(&counter)
            .arg(value + 1)
            .query_async(&mut conn)
            .await
            .unwrap();
        inside.store(false, Ordering::SeqCst);
        guard.release().await.expect("release");
    }
    let total: u64 = redis::cmd("GET")
        .arg(&counter)
        .query_async(&mut conn)
        .await
        .unwrap();
    total
}

async fn no_lost_update(waiting: Waiting) {
    let (a, b) = two_processes(waiting);
    let name = "counter".to_owned();
    let inside = Arc::new(AtomicBool::new(false));
    let (tasks, rounds) = (8u64, 25u64);
    let mut handles = Vec::new();
    for i in 0..tasks {
        let client = if i % 2 == 0 { a.clone() } else { b.clone() };
        handles.push(tokio::spawn(increment_under_lock(
            client,
            name.clone(),
            rounds,
            inside.clone(),
        )));
    }
    let mut last = 0;
    for handle in handles {
        last = last.max(handle.await.unwrap());
    }
    assert_eq!(
        last,
        tasks * rounds,
        "every increment under the lock must count"
    );
}

/// Eight tasks in two "processes" increment one counter under the pubsub lock,
/// reading and writing with a pause in between: no update is lost, and no two
/// tasks are ever inside at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_in_two_processes_never_lose_an_update_with_pubsub_waiting() {
    no_lost_update(pubsub()).await;
}

/// The same with spin waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_in_two_processes_never_lose_an_update_with_spin_waiting() {
    no_lost_update(spin()).await;
}

/// The same task may take the lock again; it is free only after as many
/// releases, and the nested hold keeps the outer hold's fencing token.
#[tokio::test(flavor = "multi_thread")]
async fn reentrant_acquire_needs_as_many_releases() {
    let (a, b) = two_processes(pubsub());
    let lock = a.lock("reentrant");
    let outer = lock
        .try_lock(Duration::from_secs(1), Lease::Watchdog)
        .await
        .unwrap();
    let inner = lock
        .try_lock(Duration::from_millis(100), Lease::Watchdog)
        .await
        .expect("the same task takes its own lock again at once");
    assert_eq!(inner.fencing_token(), outer.fencing_token());

    assert_eq!(inner.release().await.unwrap(), Released::StillHeld);
    let other = b
        .lock("reentrant")
        .try_lock(Duration::from_millis(100), Lease::Watchdog)
        .await;
    assert!(
        matches!(other, Err(LockError::Timeout { .. })),
        "one release of two must not free the lock: {other:?}"
    );

    let outer_token = outer.fencing_token();
    assert_eq!(outer.release().await.unwrap(), Released::Free);
    let other = b
        .lock("reentrant")
        .try_lock(Duration::from_millis(100), Lease::Watchdog)
        .await
        .expect("free after the second release");
    assert!(other.fencing_token() > outer_token);
    other.release().await.unwrap();
}

/// Another process, or another task of the same process, cannot release a
/// lock it does not hold: the release is refused with a typed error and the
/// lock stays held.
#[tokio::test(flavor = "multi_thread")]
async fn release_by_a_non_owner_is_refused() {
    let (a, b) = two_processes(pubsub());
    let guard = a
        .lock("mine")
        .try_lock(Duration::from_secs(1), Lease::Watchdog)
        .await
        .unwrap();

    let refused = b.lock("mine").unlock().await;
    assert!(
        matches!(&refused, Err(LockError::NotOwner { owner, .. }) if owner.starts_with("process-b:")),
        "{refused:?}"
    );
    let same_process_other_task = {
        let lock = a.lock("mine");
        tokio::spawn(async move { lock.unlock().await })
            .await
            .unwrap()
    };
    assert!(
        matches!(same_process_other_task, Err(LockError::NotOwner { .. })),
        "{same_process_other_task:?}"
    );
    assert!(
        a.lock("mine").is_locked().await.unwrap(),
        "nothing was deleted"
    );

    assert_eq!(guard.release().await.unwrap(), Released::Free);
    assert!(!a.lock("mine").is_locked().await.unwrap());
}

/// A waiter sleeps on the lock's channel and is woken by the release's
/// PUBLISH within milliseconds, though the holder's lease had 10 s left.
#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_is_woken_by_publish_long_before_the_lease_ends() {
    let (a, b) = two_processes(pubsub());
    let holder = a
        .lock("wake")
        .try_lock(
            Duration::from_secs(1),
            Lease::Fixed(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let waiter = tokio::spawn(async move {
        let guard = b
            .lock("wake")
            .try_lock(Duration::from_secs(8), Lease::Watchdog)
            .await;
        (Instant::now(), guard)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released_at = Instant::now();
    holder.release().await.unwrap();
    let (acquired_at, guard) = waiter.await.unwrap();
    let guard = guard.expect("the waiter gets the lock");
    let latency = acquired_at - released_at;
    assert!(
        latency < Duration::from_millis(100),
        "woken {latency:?} after the release; the lease had 10 s left"
    );
    assert!(guard.waited() >= Duration::from_millis(250));
    guard.release().await.unwrap();
}

/// With no PUBLISH at all (the key deleted behind the lock's back, or a holder
/// that died and whose lease ran out), a waiter still gets the lock once the
/// PTTL it was told has passed, not at the end of its wait budget.
#[tokio::test(flavor = "multi_thread")]
async fn without_publish_a_waiter_gets_the_lock_after_at_most_the_pttl() {
    let (a, b) = two_processes(pubsub());

    // 1. A holder that dies: its fixed 400 ms lease just runs out.
    let dead = a
        .lock("silent")
        .try_lock(
            Duration::from_secs(1),
            Lease::Fixed(Duration::from_millis(400)),
        )
        .await
        .unwrap();
    let dead_at = Instant::now();
    std::mem::forget(dead); // no release, no PUBLISH, ever
    let guard = b
        .lock("silent")
        .try_lock(Duration::from_secs(10), Lease::Watchdog)
        .await
        .expect("the lease runs out and the waiter takes the lock");
    let took = dead_at.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1_000),
        "got the lock after {took:?}, expected about the 400 ms lease"
    );
    guard.release().await.unwrap();

    // 2. The key vanishes without a message while a waiter sleeps on a
    //    1.5 s PTTL: it looks again when that PTTL is up.
    let holder = a
        .lock("silent")
        .try_lock(
            Duration::from_secs(1),
            Lease::Fixed(Duration::from_millis(1_500)),
        )
        .await
        .unwrap();
    let key = holder.name().to_owned();
    let started = Instant::now();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.lock(&key)
                .try_lock(Duration::from_secs(10), Lease::Watchdog)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut conn = raw(&redis_url()).await;
    let _: () = redis::cmd("DEL")
        .arg(a.lock("silent").key())
        .query_async(&mut conn)
        .await
        .unwrap();
    std::mem::forget(holder);
    let guard = waiter.await.unwrap().expect("the waiter gets the lock");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2_500),
        "took {took:?}: a waiter must not sleep past the PTTL it was given"
    );
    guard.release().await.unwrap();
}

/// The watchdog keeps a 1 s lease alive for as long as the guard lives
/// (here 2.5 s), and stops at release.
#[tokio::test(flavor = "multi_thread")]
async fn the_watchdog_keeps_a_short_lease_alive_until_release() {
    let options = LockOptions {
        watchdog_lease: Duration::from_secs(1),
        ..options(pubsub())
    };
    let url = redis_url();
    let a = LockClient::new(&url, "a", options.clone()).unwrap();
    let b = LockClient::new(&url, "b", options).unwrap();
    let guard = a
        .lock("kept")
        .try_lock(Duration::from_secs(1), Lease::Watchdog)
        .await
        .unwrap();
    let denied = b
        .lock("kept")
        .try_lock(Duration::from_millis(2_500), Lease::Watchdog)
        .await;
    assert!(
        matches!(denied, Err(LockError::Timeout { .. })),
        "{denied:?}"
    );
    assert!(!guard.is_lost(), "renewed all along");
    assert_eq!(guard.release().await.unwrap(), Released::Free);
    let after = b
        .lock("kept")
        .try_lock(Duration::from_millis(100), Lease::Watchdog)
        .await
        .expect("free right after release");
    after.release().await.unwrap();
}

/// A fixed lease that runs out makes the guard lost, the next owner gets the
/// lock, and the late release is refused instead of deleting their lock.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_that_ran_out_is_lost_and_its_late_release_deletes_nothing() {
    let (a, b) = two_processes(pubsub());
    let stale = a
        .lock("lease")
        .try_lock(
            Duration::from_secs(1),
            Lease::Fixed(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    assert!(!stale.is_lost());
    let next = b
        .lock("lease")
        .try_lock(Duration::from_secs(2), Lease::Watchdog)
        .await
        .unwrap();
    assert!(stale.is_lost());
    assert!(next.fencing_token() > stale.fencing_token());
    let late = stale.release().await;
    assert!(matches!(late, Err(LockError::Lost { .. })), "{late:?}");
    assert!(b.lock("lease").is_locked().await.unwrap());
    assert_eq!(next.release().await.unwrap(), Released::Free);
}

/// When the watchdog finds its hold gone (deleted behind its back here), the
/// guard turns lost at the next renewal: within a third of the 3 s lease
/// (asserted: within 2 s), while by its own clock the guard would believe in
/// its lease for 3 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_renewal_marks_the_guard_lost() {
    let lease = Duration::from_secs(3);
    let options = LockOptions {
        watchdog_lease: lease,
        ..options(pubsub())
    };
    let a = LockClient::new(&redis_url(), "a", options).unwrap();
    let guard = a
        .lock("renewal")
        .try_lock(Duration::from_secs(1), Lease::Watchdog)
        .await
        .unwrap();
    let deleted = Instant::now();
    let mut conn = raw(&redis_url()).await;
    let _: () = redis::cmd("DEL")
        .arg(a.lock("renewal").key())
        .query_async(&mut conn)
        .await
        .unwrap();
    while !guard.is_lost() {
        assert!(
            deleted.elapsed() < lease / 3 * 2,
            "not lost {:?} after the hold vanished",
            deleted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(matches!(guard.release().await, Err(LockError::Lost { .. })));
}

/// Fencing tokens grow with every hold, from any process, and keep growing
/// after Redis loses all its data (FLUSHALL, or a restart without
/// persistence): the counter has the clock as a floor.
#[tokio::test(flavor = "multi_thread")]
async fn fencing_tokens_only_grow_even_after_redis_forgets_everything() {
    let (a, b) = two_processes(pubsub());
    let mut last = 0;
    for client in [&a, &b, &a, &b] {
        let guard = client
            .lock("fence")
            .try_lock(Duration::from_secs(1), Lease::Watchdog)
            .await
            .unwrap();
        assert!(guard.fencing_token() > last);
        last = guard.fencing_token();
        guard.release().await.unwrap();
    }
    let mut conn = raw(&redis_url()).await;
    let counter = format!("{}:fence", a.lock("fence").key());
    let _: () = redis::cmd("DEL")
        .arg(&counter)
        .query_async(&mut conn)
        .await
        .unwrap();
    let guard = a
        .lock("fence")
        .try_lock(Duration::from_secs(1), Lease::Watchdog)
        .await
        .unwrap();
    assert!(
        guard.fencing_token() > last,
        "token {} after the counter was lost, {last} before",
        guard.fencing_token()
    );
    guard.release().await.unwrap();
}

/// The head of the line gives up (its request was cancelled) just as the
/// lock is released: the wake-up it may have taken goes to the next waiter,
/// who gets the lock at once instead of sleeping out the 10 s lease.
///
/// The first waiter is a future this test polls by hand, not a spawned task:
/// once it waits in line it is never polled again, so it can be woken but can
/// never act on the wake-up. (A spawned task could win the lock in the moment
/// between the release and its cancellation, and then hold it.)
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_waiter_passes_its_wake_up_on() {
    let (a, b) = two_processes(pubsub());
    let holder = a
        .lock("baton")
        .try_lock(
            Duration::from_secs(1),
            Lease::Fixed(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let first_lock = b.lock("baton");
    let mut first = Box::pin(first_lock.try_lock(Duration::from_secs(8), Lease::Watchdog));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut first)
            .await
            .is_err(),
        "the first waiter waits in line"
    );
    let second = {
        let lock = b.lock("baton");
        tokio::spawn(async move {
            let guard = lock.try_lock(Duration::from_secs(8), Lease::Watchdog).await;
            (Instant::now(), guard)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let released_at = Instant::now();
    holder.release().await.unwrap();
    // Let the release's message reach process b and wake its head, the
    // first waiter, which is not polled to act on it; then cancel it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(first);
    let (acquired_at, guard) = second.await.unwrap();
    let guard = guard.expect("the second waiter gets the lock");
    assert!(
        acquired_at - released_at < Duration::from_millis(500),
        "the second waiter slept {:?} after the release",
        acquired_at - released_at
    );
    guard.release().await.unwrap();
}

/// A guard dropped without `release()` (an early return, a cancelled request)
/// still frees the lock right away, not when its lease ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_guard_releases_the_lock() {
    let (a, b) = two_processes(pubsub());
    let guard = a
        .lock("dropped")
        .try_lock(
            Duration::from_secs(1),
            Lease::Fixed(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let started = Instant::now();
    drop(guard);
    let next = b
        .lock("dropped")
        .try_lock(Duration::from_secs(5), Lease::Watchdog)
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    next.release().await.unwrap();
}

/// Tasks of one process take the lock in turns: with four tasks hammering
/// one lock, no task gets more than 1.5 times as many holds as another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_tasks_take_turns() {
    let (a, _) = two_processes(pubsub());
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for _ in 0..4 {
        let lock = a.lock("turns");
        let stop = stop.clone();
        let count = Arc::new(AtomicU64::new(0));
        let counted = count.clone();
        handles.push((
            count,
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let guard = lock
                        .try_lock(Duration::from_secs(5), Lease::Watchdog)
                        .await
                        .unwrap();
                    counted.fetch_add(1, Ordering::Relaxed);
                    guard.release().await.unwrap();
                }
            }),
        ));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut counts = Vec::new();
    for (count, handle) in handles {
        handle.await.unwrap();
        counts.push(count.load(Ordering::Relaxed));
    }
    let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
    assert!(min > 10, "{counts:?}");
    assert!(max as f64 / min as f64 <= 1.5, "unfair: {counts:?}");
}

/// A guard whose lease ran out, dropped after the same task took the lock
/// afresh, does not release that newer hold: releases carry the hold's
/// fencing token.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_guard_cannot_release_its_owners_newer_hold() {
    let (a, b) = two_processes(pubsub());
    let lock = a.lock("stale");
    let old = lock
        .try_lock(
            Duration::from_secs(1),
            Lease::Fixed(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let new = lock
        .try_lock(Duration::from_secs(1), Lease::Watchdog)
        .await
        .unwrap();
    assert!(new.fencing_token() > old.fencing_token());
    drop(old); // its background release must refuse to touch `new`
    tokio::time::sleep(Duration::from_millis(100)).await;
    let other = b
        .lock("stale")
        .try_lock(Duration::from_millis(200), Lease::Watchdog)
        .await;
    assert!(
        matches!(other, Err(LockError::Timeout { .. })),
        "the newer hold survived the stale guard: {other:?}"
    );
    assert_eq!(new.release().await.unwrap(), Released::Free);
}

/// Attempts cancelled at random moments (a buyer hanging up) leave no hold
/// behind that nobody will release, and never undo a hold the same task took
/// afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn cancelled_attempts_leave_no_orphaned_hold() {
    let (a, b) = two_processes(pubsub());
    let lock = a.lock("cancelled");
    for round in 0..200u64 {
        let cut = Duration::from_micros(round * 7 % 400);
        let _ = tokio::time::timeout(
            cut,
            lock.try_lock(
                Duration::from_secs(1),
                Lease::Fixed(Duration::from_secs(30)),
            ),
        )
        .await;
        // The same task, at once: a hold of its own that must stay its own.
        let guard = lock
            .try_lock(
                Duration::from_secs(2),
                Lease::Fixed(Duration::from_secs(30)),
            )
            .await
            .expect("no orphan blocks the lock");
        tokio::time::sleep(Duration::from_micros(300)).await;
        assert!(!guard.is_lost());
        let released = guard.release().await;
        assert!(
            matches!(released, Ok(Released::Free) | Ok(Released::StillHeld)),
            "round {round}: {released:?}"
        );
        if released.unwrap() == Released::StillHeld {
            // The cancelled attempt did run and was reentrant on our hold: it
            // is the abandon script's to give back, and it must.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let other = b
        .lock("cancelled")
        .try_lock(Duration::from_secs(2), Lease::Watchdog)
        .await
        .expect("another process gets the lock: nothing was left behind");
    other.release().await.unwrap();
}

/// Tasks in two processes also take turns: the line of processes in Redis
/// hands each release to the process that has waited longest, so neither
/// process's tasks get more than 1.5 times the holds of the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_of_two_processes_take_turns() {
    let (a, b) = two_processes(pubsub());
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for task in 0..6 {
        let lock = if task % 2 == 0 { &a } else { &b }.lock("turns");
        let stop = stop.clone();
        handles.push(tokio::spawn(async move {
            let mut count = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let guard = lock
                    .try_lock(Duration::from_secs(5), Lease::Watchdog)
                    .await
                    .unwrap();
                count += 1;
                guard.release().await.unwrap();
            }
            count
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut counts = Vec::new();
    for handle in handles {
        counts.push(handle.await.unwrap());
    }
    let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
    assert!(min > 10, "{counts:?}");
    assert!(max as f64 / min as f64 <= 1.5, "unfair: {counts:?}");
}

/// A release hands the lock to a process that has since died (here: a name
/// in the line that nobody answers to). Its grant runs out after 100 ms and
/// the live waiter takes the lock, instead of waiting for the old holder's
/// 10 s lease.
#[tokio::test(flavor = "multi_thread")]
async fn a_grant_to_a_dead_process_runs_out_quickly() {
    let (a, b) = two_processes(pubsub());
    let holder = a
        .lock("ghost")
        .try_lock(
            Duration::from_secs(1),
            Lease::Fixed(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let waiter = {
        let lock = b.lock("ghost");
        tokio::spawn(async move {
            let guard = lock.try_lock(Duration::from_secs(8), Lease::Watchdog).await;
            (Instant::now(), guard)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut conn = raw(&redis_url()).await;
    let line = format!("{}:line", a.lock("ghost").key());
    let _: () = redis::cmd("LPUSH")
        .arg(&line)
        .arg("a-process-that-died")
        .query_async(&mut conn)
        .await
        .unwrap();
    let released_at = Instant::now();
    holder.release().await.unwrap();
    let (acquired_at, guard) = waiter.await.unwrap();
    let guard = guard.expect("the live waiter gets the lock");
    let took = acquired_at - released_at;
    assert!(
        took >= Duration::from_millis(90) && took < Duration::from_millis(600),
        "got the lock {took:?} after the release"
    );
    guard.release().await.unwrap();
}

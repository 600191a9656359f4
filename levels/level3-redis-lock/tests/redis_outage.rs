//! The lock while Redis is stopped, and after it comes back on the same port.
//!
//! Each test runs its own private `redis-server` (this file is its own test
//! process under nextest), which it stops by dropping it and starts again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use level3::lock::{Lease, LockClient, LockError, LockOptions, Released, WaitForRelease};
use ticket_core::services::{free_port, Redis};

async fn start_redis(port: u16) -> Redis {
    tokio::task::spawn_blocking(move || Redis::throwaway_on(port, &[]))
        .await
        .unwrap()
        .expect("a throwaway redis-server (is redis-server installed?)")
}

async fn stop_redis(redis: Redis) {
    tokio::task::spawn_blocking(move || drop(redis))
        .await
        .unwrap();
}

/// With Redis stopped, a lock attempt fails within a second with the typed
/// `Unavailable` error (which a server turns into 503), a waiter that was
/// already waiting gives up just as quickly instead of sleeping out its
/// budget, and once Redis is back on the same port the very next attempt
/// takes the lock.
#[tokio::test(flavor = "multi_thread")]
async fn with_redis_stopped_attempts_fail_fast_and_work_again_once_it_is_back() {
    let port = free_port().unwrap();
    let redis = start_redis(port).await;
    let url = redis.url().to_owned();
    let options = LockOptions {
        waiting: Arc::new(WaitForRelease),
        ..LockOptions::default()
    };
    let client = LockClient::new(&url, "server-a", options.clone()).unwrap();
    let other = LockClient::new(&url, "server-b", options).unwrap();
    let lock = client.lock("outage");

    // Arrange: it works, then another process holds the lock and we wait.
    lock.try_lock(Duration::from_secs(1), Lease::Watchdog)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let held = other
        .lock("outage")
        .try_lock(
            Duration::from_secs(1),
            Lease::Fixed(Duration::from_secs(20)),
        )
        .await
        .unwrap();
    let waiter = {
        let lock = lock.clone();
        tokio::spawn(async move {
            lock.try_lock(Duration::from_secs(15), Lease::Watchdog)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Act: Redis goes away.
    stop_redis(redis).await;
    let stopped = Instant::now();

    // The waiter hears the connection drop and fails fast.
    let waited = waiter.await.unwrap();
    assert!(
        matches!(waited, Err(LockError::Unavailable(_))),
        "{waited:?}"
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "the waiter took {:?} to notice",
        stopped.elapsed()
    );

    // New attempts, and /health's ping, fail fast too.
    for _ in 0..3 {
        let started = Instant::now();
        let attempt = lock.try_lock(Duration::from_secs(5), Lease::Watchdog).await;
        assert!(
            matches!(attempt, Err(LockError::Unavailable(_))),
            "{attempt:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "an attempt took {:?} to fail",
            started.elapsed()
        );
    }
    assert!(matches!(
        client.ping().await,
        Err(LockError::Unavailable(_))
    ));

    // Redis comes back (empty: it keeps nothing on disk).
    let redis = start_redis(port).await;
    let guard = lock
        .try_lock(Duration::from_secs(1), Lease::Watchdog)
        .await
        .expect("the first attempt after Redis is back takes the lock");
    assert!(!guard.is_lost());
    client.ping().await.unwrap();

    // The hold from before the outage died with Redis's memory. Its late
    // release (whose first send meets the dead connection, so it is sent
    // again) must not touch the new holder's lock.
    let late = held.release().await;
    assert!(
        matches!(late, Err(LockError::Lost { .. })),
        "a hold that died with Redis is reported lost: {late:?}"
    );
    assert!(lock.is_locked().await.unwrap(), "the new hold survived");
    assert_eq!(guard.release().await.unwrap(), Released::Free);
    stop_redis(redis).await;
}

/// A watchdog that cannot reach Redis marks its guard lost at its next
/// renewal, so the critical section knows not to commit, long before the
/// guard's own clock would have said so.
///
/// The lease is 6 s, renewed every 2 s, and Redis stops just after a
/// renewal: the watchdog must signal the loss at the next renewal, about
/// 2 s later (asserted: within 4 s), while the guard's own deadline is 6 s
/// away. A guard whose watchdog did nothing would stay "not lost" for those
/// 6 s, and fail here.
#[tokio::test(flavor = "multi_thread")]
async fn a_watchdog_that_cannot_reach_redis_marks_the_guard_lost() {
    let lease = Duration::from_secs(6);
    let port = free_port().unwrap();
    let redis = start_redis(port).await;
    let options = LockOptions {
        watchdog_lease: lease,
        ..LockOptions::default()
    };
    let client = LockClient::new(redis.url(), "server-a", options).unwrap();
    let lock = client.lock("renewal");
    let guard = lock
        .try_lock(Duration::from_secs(1), Lease::Watchdog)
        .await
        .unwrap();

    // Wait for a renewal: the key's remaining lease jumps back up.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pttl = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let key = lock.key().to_owned();
        async move {
            redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    let mut last = pttl(&mut conn).await;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = pttl(&mut conn).await;
        if now > last + 200 {
            break;
        }
        last = now;
    }
    drop(conn);
    stop_redis(redis).await;
    let stopped = Instant::now();

    while !guard.is_lost() {
        assert!(
            stopped.elapsed() < lease / 3 * 2,
            "no loss signalled {:?} after Redis stopped; the watchdog renews every {:?}",
            stopped.elapsed(),
            lease / 3
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let release = guard.release().await;
    assert!(
        matches!(release, Err(LockError::Unavailable(_))),
        "{release:?}"
    );
}

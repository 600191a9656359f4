//! What a guard believes is what Redis holds: reentrant holds never cut an
//! outer hold's lease short, and an attempt whose caller stopped listening
//! (cancelled, or its reply timed out) leaves nothing behind.
//!
//! Each test runs its own private `redis-server`: some of them pause it with
//! `CLIENT PAUSE`, which would stall any other test sharing it.

use std::time::{Duration, Instant};

use level3::lock::{Lease, LockClient, LockError, LockGuard, LockOptions, RedisLock, Released};
use ticket_core::services::Redis;

async fn private_redis() -> Redis {
    tokio::task::spawn_blocking(Redis::throwaway)
        .await
        .unwrap()
        .expect("a throwaway redis-server (is redis-server installed?)")
}

fn client(url: &str, options: LockOptions) -> LockClient {
    LockClient::new(url, "process-a", options).unwrap()
}

/// Watches the lock's key for `watch` and fails the moment Redis has let the
/// key go while `guard` still believes it holds the lock.
async fn assert_guard_never_outlives_the_key(lock: &RedisLock, guard: &LockGuard, watch: Duration) {
    let until = Instant::now() + watch;
    while Instant::now() < until {
        // Ask the guard first: if it still believes, the key must be there.
        let believes = !guard.is_lost();
        let exists = lock.is_locked().await.unwrap();
        assert!(
            exists || !believes,
            "Redis let the key go while the outer guard still believes it holds the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A reentrant acquisition with a short fixed lease does not cut the outer
/// hold's long lease short: the lease may grow, never shrink.
#[tokio::test(flavor = "multi_thread")]
async fn a_reentrant_acquire_never_shortens_the_outer_lease() {
    let redis = private_redis().await;
    let lock = client(redis.url(), LockOptions::default()).lock("nested");
    let outer = lock
        .try_lock(
            Duration::from_secs(1),
            Lease::Fixed(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let inner = lock
        .try_lock(
            Duration::from_secs(1),
            Lease::Fixed(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    // Three times the inner lease: long past the moment it would have ended.
    assert_guard_never_outlives_the_key(&lock, &outer, Duration::from_millis(300)).await;
    assert!(!outer.is_lost(), "the outer lease has 9 s left");
    assert_eq!(inner.release().await.unwrap(), Released::StillHeld);
    assert_eq!(outer.release().await.unwrap(), Released::Free);
}

/// Giving back a reentrant hold does not re-arm the key with another lease
/// (the watchdog's, 100 ms here) below the outer hold's.
#[tokio::test(flavor = "multi_thread")]
async fn a_reentrant_release_never_shortens_the_outer_lease() {
    let redis = private_redis().await;
    let options = LockOptions {
        watchdog_lease: Duration::from_millis(100),
        ..LockOptions::default()
    };
    let lock = client(redis.url(), options).lock("nested");
    let outer = lock
        .try_lock(
            Duration::from_secs(1),
            Lease::Fixed(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let inner = lock
        .try_lock(
            Duration::from_secs(1),
            Lease::Fixed(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(inner.release().await.unwrap(), Released::StillHeld);
    assert_guard_never_outlives_the_key(&lock, &outer, Duration::from_millis(300)).await;
    assert!(!outer.is_lost());
    assert_eq!(outer.release().await.unwrap(), Released::Free);
}

/// An outer hold kept by a watchdog with a 100 ms lease does not cut short a
/// reentrant hold that took a 10 s fixed lease: neither its renewals nor its
/// release shrink the key's lease below what the inner guard believes.
#[tokio::test(flavor = "multi_thread")]
async fn a_watchdog_renewal_never_shortens_a_longer_reentrant_lease() {
    let redis = private_redis().await;
    let options = LockOptions {
        watchdog_lease: Duration::from_millis(100),
        ..LockOptions::default()
    };
    let lock = client(redis.url(), options).lock("nested");
    let outer = lock
        .try_lock(Duration::from_secs(1), Lease::Watchdog)
        .await
        .unwrap();
    let inner = lock
        .try_lock(
            Duration::from_secs(1),
            Lease::Fixed(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    // A few renewals (every 33 ms), then the outer hold goes.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(outer.release().await.unwrap(), Released::StillHeld);
    assert_guard_never_outlives_the_key(&lock, &inner, Duration::from_millis(300)).await;
    assert!(!inner.is_lost());
    assert_eq!(inner.release().await.unwrap(), Released::Free);
}

/// Pauses every client of `redis` for `pause` (`CLIENT PAUSE ... ALL`): the
/// commands they send meanwhile run when it ends. Returns once the pause is
/// in force, with a connection that [`wait_for_unpause`] uses (made before
/// the pause: making one during it would stall).
async fn pause_redis(url: &str, pause: Duration) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(pause.as_millis().to_string())
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .unwrap();
    conn
}

/// Waits until a pause ends: a PING is held back until then.
async fn wait_for_unpause(mut conn: redis::aio::MultiplexedConnection) {
    let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
}

/// An acquire whose reply times out (Redis is stalled for longer than the
/// client's response timeout) runs once Redis resumes and takes the lock for
/// a caller who has already given up. It must not leave that hold behind:
/// the client undoes the attempt, so the lock is free, not held for 30 s.
#[tokio::test(flavor = "multi_thread")]
async fn an_acquire_whose_reply_timed_out_leaves_no_hold() {
    let redis = private_redis().await;
    let options = LockOptions {
        response_timeout: Duration::from_millis(200),
        ..LockOptions::default()
    };
    let client = client(redis.url(), options);
    // Connected, and every script known to Redis, before the pause: what
    // runs after it must be the attempt and its undoing, not an upload.
    client.load_scripts().await.unwrap();
    let lock = client.lock("timed-out");

    let paused = pause_redis(redis.url(), Duration::from_millis(1_500)).await;
    let attempt = lock
        .try_lock(
            Duration::from_secs(5),
            Lease::Fixed(Duration::from_secs(30)),
        )
        .await;
    assert!(
        matches!(attempt, Err(LockError::Unavailable(_))),
        "{attempt:?}"
    );
    wait_for_unpause(paused).await;

    // Sent on the client's own connection: it runs after the attempt and
    // whatever the client sent after it.
    assert!(
        !lock.is_locked().await.unwrap(),
        "the timed-out attempt left a hold nobody will release"
    );
}

/// A reentrant attempt cancelled while Redis is stalled still runs when it
/// resumes, adding a second hold to the task's own. That count must be given
/// back: the outer release then frees the lock, instead of leaving it held
/// until its lease ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_reentrant_attempt_leaks_no_count() {
    let redis = private_redis().await;
    // A response timeout longer than the pause: the undoing is answered.
    let options = LockOptions {
        response_timeout: Duration::from_secs(5),
        ..LockOptions::default()
    };
    let client = client(redis.url(), options);
    client.load_scripts().await.unwrap();
    let lock = client.lock("reentrant");
    let outer = lock
        .try_lock(
            Duration::from_secs(1),
            Lease::Fixed(Duration::from_secs(30)),
        )
        .await
        .unwrap();

    let paused = pause_redis(redis.url(), Duration::from_millis(1_500)).await;
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        lock.try_lock(
            Duration::from_secs(1),
            Lease::Fixed(Duration::from_secs(30)),
        ),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "the reentrant attempt waited on the pause"
    );
    wait_for_unpause(paused).await;

    assert_eq!(
        outer.release().await.unwrap(),
        Released::Free,
        "the cancelled attempt's hold was given back"
    );
    assert!(!lock.is_locked().await.unwrap());
}

//! What `WAIT 1` after every acquisition costs (`--wait-replicas 1`):
//! lock+unlock cycles per second with and without it, on the same master
//! and its one replica, in the same run.
//!
//! ```text
//! cargo bench -p level3 --bench wait
//! ```
//!
//! Starts a throwaway `redis-server` and a second one as its replica
//! (`REPLICAOF`), then measures, in alternating turns so that a busy
//! machine hurts both sides alike:
//!
//! - *uncontended*: one task takes and releases one lock, again and again;
//! - *contended*: 8 tasks over two clients (as two servers would be) fight
//!   over one lock.
//!
//! Each turn runs for [`TURN`]; the table shows the median of the turns
//! and the ratio of "with WAIT" to "without". The wait is Level 3's own
//! ([`level3::lock::ReplicaWait`]): `WAIT 1 100` on the connection that ran
//! the acquire script, and the hold given back if no replica acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use level3::lock::{Lease, LockClient, LockOptions, ReplicaWait};
use ticket_core::services::Redis;

/// How long each turn of one mode runs.
const TURN: Duration = Duration::from_secs(2);
/// Turns per mode and shape (alternating: without, with, without, ...).
const TURNS: usize = 5;
/// Tasks fighting over one lock in the contended shape.
const TASKS: usize = 8;
/// The lease of each hold (no watchdog: it would add renewals to both sides).
const LEASE: Lease = Lease::Fixed(Duration::from_secs(5));
/// `--wait-timeout-ms` of the "with WAIT" side.
const WAIT_TIMEOUT: Duration = Duration::from_millis(100);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let master = Redis::throwaway().expect("a throwaway redis-server (the master)");
    let replica = Redis::throwaway().expect("a throwaway redis-server (the replica)");
    runtime.block_on(attach(&master, &replica));

    println!("WAIT after acquisition: lock+unlock cycles/s, median of {TURNS} turns of {TURN:?}");
    println!("(master and replica: two redis-server processes on loopback)\n");
    println!("| shape | without WAIT | with WAIT 1 | with / without |");
    println!("| --- | ---: | ---: | ---: |");
    for (shape, tasks) in [
        ("uncontended (1 task)", 1),
        ("contended (8 tasks, 2 clients)", TASKS),
    ] {
        let mut without = Vec::new();
        let mut with = Vec::new();
        for _ in 0..TURNS {
            without.push(runtime.block_on(turn(master.url(), tasks, None)));
            with.push(runtime.block_on(turn(
                master.url(),
                tasks,
                Some(ReplicaWait {
                    replicas: 1,
                    timeout: WAIT_TIMEOUT,
                }),
            )));
        }
        let (without, with) = (median(without), median(with));
        println!(
            "| {shape} | {without:.0} | {with:.0} | {:.2} |",
            with / without
        );
    }
    drop(replica);
}

/// Makes `replica` replicate `master`, and waits until the link is up.
async fn attach(master: &Redis, replica: &Redis) {
    let client = redis::Client::open(replica.url()).expect("the replica's URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("the replica answers");
    let port = master.port().expect("a throwaway master has a port");
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(port)
        .query_async(&mut conn)
        .await
        .expect("REPLICAOF");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .expect("INFO");
        if info.contains("master_link_status:up") {
            return;
        }
        assert!(Instant::now() < deadline, "the replica never synced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One turn: `tasks` tasks cycle on one lock for [`TURN`]; cycles per second.
async fn turn(url: &str, tasks: usize, replicas: Option<ReplicaWait>) -> f64 {
    let options = LockOptions {
        key_prefix: format!("bench-wait-{:08x}", rand::random::<u32>()),
        replicas,
        ..LockOptions::default()
    };
    let clients = [
        LockClient::new(url, "bench-a", options.clone()).expect("a client"),
        LockClient::new(url, "bench-b", options).expect("a client"),
    ];
    for client in &clients {
        client.load_scripts().await.expect("Redis answers");
    }
    let cycles = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + TURN;
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let lock = clients[task % 2].lock("bench");
            let cycles = cycles.clone();
            tokio::spawn(async move {
                while Instant::now() < end {
                    if let Ok(guard) = lock.try_lock(Duration::from_secs(1), LEASE).await {
                        guard.release().await.expect("release");
                        cycles.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("a bench task");
    }
    cycles.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

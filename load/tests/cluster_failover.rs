//! Level 3 through a Redis Cluster failover, with real processes: the
//! master that holds the ticket's lock dies, and its replica takes over.
//!
//! - A lock acknowledged by a master that dies before replicating it is
//!   granted a second time by the promoted replica (what Redisson's users
//!   report, e.g. redisson#1763). Reproduced on demand: the replica's link
//!   is cut first, so it cannot have the hold. Fencing at the database
//!   keeps exactly one sale; with `--fencing off` the ticket is oversold.
//!
//! Each run prints how long the replica took to take over after the kill
//! (`failover: ...`), the figure docs/08-cluster.md quotes.
//!
//! Each test starts its own cluster (it kills one of its nodes).

mod common;

use std::time::{Duration, Instant};

use common::fresh_database;
use load::servers::{start_in_process, urls, ServerSpec};
use ticket_core::services::RedisCluster;
use ticket_core::{db, RunningServer, TicketId};

/// The lock of ticket 1, as Level 3's servers name it.
const LOCK_KEY: &str = "ticket-rush:lock:{ticket:1}";
/// How long the first holder stalls after its last "still mine?" check.
/// Longer than a failover here (node timeout 2 s, then an election) by
/// three times at least, so that the second grant lands inside the stall.
const STALL_MS: u64 = 15_000;

async fn own_cluster() -> RedisCluster {
    tokio::task::spawn_blocking(RedisCluster::throwaway)
        .await
        .expect("the start did not panic")
        .expect("a throwaway Redis Cluster (redis-server and redis-cli on PATH)")
}

async fn node(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|err| panic!("node {port} answers: {err}"))
}

async fn info_replication(port: u16) -> String {
    redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut node(port).await)
        .await
        .unwrap()
}

/// The port of `master`'s replica (`slave0:ip=...,port=N,...`).
async fn replica_of(master: u16) -> u16 {
    let info = info_replication(master).await;
    let line = info
        .lines()
        .find(|l| l.starts_with("slave0:"))
        .unwrap_or_else(|| panic!("master {master} has a replica:\n{info}"));
    line.split(',')
        .find_map(|f| f.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .expect("a replica port")
}

/// Cuts the replication link from `master` to `replica` and keeps it cut:
/// the replica is told to log in as a user the master does not have, then
/// the master drops its replica connection. Every write to the master from
/// now on stays on the master alone. Waits until the master counts no
/// replica.
async fn cut_replication(master: u16, replica: u16) {
    let mut r = node(replica).await;
    for (name, value) in [("masteruser", "nobody-here"), ("masterauth", "wrong")] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut r)
            .await
            .unwrap();
    }
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(&mut node(master).await)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !info_replication(master)
        .await
        .contains("connected_slaves:0")
    {
        assert!(Instant::now() < deadline, "the replica kept its link");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until the lock on node `port` is held by an owner whose
/// id starts with `prefix`.
async fn wait_for_holder(port: u16, prefix: &str, within: Duration) {
    let mut conn = node(port).await;
    let deadline = Instant::now() + within;
    loop {
        let owners: Vec<String> = redis::cmd("HKEYS")
            .arg(LOCK_KEY)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if owners.iter().any(|o| o.starts_with(prefix)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no holder {prefix}* on node {port} within {within:?} (owners: {owners:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The instance-id prefix of an in-process level3 server's lock owners.
fn owner_prefix(server: &RunningServer) -> String {
    let port = server.url().rsplit(':').next().unwrap().to_owned();
    format!("level3-{port}-")
}

/// One buyer who clicks again on 503 (Redis away, lock busy, a stale hold
/// refused), as the load tool's buyers do, for at most a minute. Returns
/// the final status and error code.
async fn buy(server: String, user: i64) -> (u16, String) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = client
            .post(format!("{server}/tickets/1/orders"))
            .json(&serde_json::json!({ "user_id": user }))
            .send()
            .await
            .expect("the server answers");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let code = body["code"].as_str().unwrap_or("").to_owned();
        if status != 503 || Instant::now() > deadline {
            return (status, code);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills `master` and waits (bounded) until its replica has taken over;
/// answers how long that took.
async fn kill_and_fail_over(cluster: RedisCluster, master: u16) -> (RedisCluster, Duration) {
    tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        let killed = Instant::now();
        cluster.kill_node(master).expect("the master stops");
        // Five nodes left, every slot served again: the replica was promoted.
        cluster.wait_until_ok(5).expect("the replica takes over");
        let took = killed.elapsed();
        (cluster, took)
    })
    .await
    .unwrap()
}

/// The double grant, on demand. Ticket 1 has one unit. Server A's buyer
/// takes the lock on a master whose replica link is cut, sells, passes its
/// last "still mine?" check and stalls (`--pause-before-commit-ms`, a GC
/// pause). The master dies; the replica, which never saw A's hold, is
/// promoted and grants the same lock to server B's buyer while A still
/// believes it holds it. Returns the two buyers' answers and the database's
/// buyers.
async fn double_grant(fencing: &str) -> ((u16, String), (u16, String), Vec<i64>) {
    let cluster = own_cluster().await;
    let database = fresh_database().await;
    let spec = |stall: u64| {
        ServerSpec::new(3, "pubsub")
            .args(["--fencing", fencing, "--pause-before-commit-ms"])
            .args([stall.to_string()])
    };
    let a = start_in_process(&spec(STALL_MS), &database, Some(cluster.url()), 1)
        .await
        .unwrap();
    let b = start_in_process(&spec(0), &database, Some(cluster.url()), 1)
        .await
        .unwrap();
    let pool = load::rush::open_database(&database).await.unwrap();
    let ticket = TicketId::parse(1).unwrap();
    db::reset_ticket(&pool, ticket, "failover", 1)
        .await
        .unwrap();

    let master = cluster.master_of_key(LOCK_KEY).unwrap();
    let replica = replica_of(master).await;
    cut_replication(master, replica).await;

    let first = tokio::spawn(buy(urls(&a)[0].clone(), 1));
    wait_for_holder(master, &owner_prefix(&a[0]), Duration::from_secs(20)).await;
    let (_cluster, failover) = kill_and_fail_over(cluster, master).await;
    eprintln!("failover: the replica took the lock's slot {failover:?} after the kill");

    let second = tokio::spawn(buy(urls(&b)[0].clone(), 2));
    // The second grant: the promoted replica hands B the lock that A still
    // holds as far as A knows (A has not answered yet: it is stalled).
    wait_for_holder(replica, &owner_prefix(&b[0]), Duration::from_secs(20)).await;
    assert!(
        !first.is_finished(),
        "A was still inside its sale when B was granted the same lock"
    );

    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    let buyers: Vec<i64> = sqlx::query_scalar(
        "SELECT user_id FROM ticket_orders WHERE ticket_id = 1 ORDER BY user_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for server in a.into_iter().chain(b) {
        let _ = server.stop().await;
    }
    (first, second, buyers)
}

/// With fencing, the double grant costs a refused sale, never an extra
/// one: A committed first under its token, B's write (same or newer token,
/// but the row changed since B read it) is refused, B clicks again and
/// hears sold_out. The one buyer answered 201 is the one buyer holding a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_granted_twice_after_an_unreplicated_failover_sells_once_with_fencing() {
    let (first, second, buyers) = double_grant("on").await;
    assert_eq!(
        first,
        (201, String::new()),
        "A's sale, committed after its stall"
    );
    assert_eq!(
        second,
        (409, "sold_out".to_owned()),
        "B was refused, then told sold out"
    );
    assert_eq!(buyers, vec![1], "exactly A holds the one unit");
}

/// The same double grant without fencing: both holders sell the one unit,
/// and both are answered 201. This is the failure the fencing token exists
/// for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_granted_twice_after_an_unreplicated_failover_oversells_without_fencing() {
    let (first, second, buyers) = double_grant("off").await;
    assert_eq!(first.0, 201);
    assert_eq!(second.0, 201);
    assert_eq!(buyers, vec![1, 2], "two orders for one unit: oversold");
}

//! Level 6 through HTTP: one decider per partition, fenced leases, and the
//! faults the design must survive (a decider killed mid-batch, a decider
//! stalled past its lease, Redis restarting), each judged from PostgreSQL.
//!
//! Every test uses real Redis and PostgreSQL servers: a fresh database each
//! (Level 6 keys its Redis streams by database), the test process's Redis,
//! or a private one where the test restarts it.

mod common;

use std::time::{Duration, Instant};

use common::{assert_exactly_sold, fresh_database, plan, redis_url, servers, stop};
use futures::FutureExt as _;
use load::rush::{rush, RushPlan};
use load::servers::{start_in_process, start_processes, ServerProcess, ServerSpec};
use nix::sys::signal::{kill, Signal};
use ticket_core::services::{free_port, Redis};
use ticket_core::{db, TicketId};

const TICKET: i64 = 1;
const PARTITIONS: u32 = 4;

/// A Level 6 server. Buyers wait up to a minute for their decider: on a
/// test machine with both cores busy a debug-build rush can take longer
/// than the default 10 s, and a 202 is not a 201 to the verdict.
fn spec(strategy: &str) -> ServerSpec {
    ServerSpec::new(6, strategy)
        .think_time_ms(level6::RACE_THINK_TIME_MS)
        .args(["--reply-timeout-ms", "60000"])
}

/// The ticket's partition stream, for this database.
async fn ticket_stream(database: &str) -> String {
    let pool = db::connect(database, 1, Duration::from_secs(10))
        .await
        .unwrap();
    let namespace = level6::schema::namespace(&pool).await.unwrap();
    pool.close().await;
    let ticket = TicketId::parse(i128::from(TICKET)).unwrap();
    level6::log::Keys::new(&namespace).stream(level6::log::partition_of(ticket, PARTITIONS))
}

/// A server's `GET /partitions`.
async fn partitions(url: &str) -> serde_json::Value {
    reqwest::get(format!("{url}/partitions"))
        .await
        .and_then(|r| r.error_for_status())
        .expect("/partitions answers")
        .json()
        .await
        .unwrap()
}

/// Waits (at most `within`) until `check` holds, polling every 50 ms.
async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the servers at `urls` own every partition between them.
async fn wait_until_all_owned(urls: &[String]) {
    wait_until(Duration::from_secs(30), "every partition owned", || async {
        let mut owned = 0;
        for url in urls {
            owned += partitions(url).await["owned"].as_array().unwrap().len();
        }
        owned == PARTITIONS as usize
    })
    .await;
}

/// Entries read from the ticket's stream and not yet acknowledged.
async fn pending(redis: &str, stream: &str) -> u64 {
    let client = redis::Client::open(redis).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(level6::log::GROUP)
        .query_async(&mut conn)
        .await
        .unwrap_or(redis::Value::Nil);
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(count)) => *count as u64,
            _ => 0,
        },
        _ => 0,
    }
}

/// 1000 buyers for 100 tickets over two servers, three rounds on the same
/// servers (each round resets the ticket in PostgreSQL behind the
/// deciders' backs: the batch sees the row changed and reloads it).
async fn two_servers_sell_exactly_the_stock(strategy: &str) {
    let (servers, database) = servers(&spec(strategy), 2).await;
    for round in 0..3 {
        let report = rush(&RushPlan {
            seed: round,
            ..plan(&servers, &database)
        })
        .await
        .expect("the rush runs");
        assert_exactly_sold(&report, 100);
        assert_eq!(report.sold_out, 900, "round {round}");
    }
    stop(servers).await;
}

/// `partitioned` on two servers: exactly the stock, three rounds running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_on_two_servers_sells_exactly_the_stock_three_rounds_running() {
    two_servers_sell_exactly_the_stock("partitioned").await;
}

/// `state-store` on two servers: exactly the stock, three rounds running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_store_on_two_servers_sells_exactly_the_stock_three_rounds_running() {
    two_servers_sell_exactly_the_stock("state-store").await;
}

/// One person clicking 20 times at once over two servers: one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_clicking_twenty_times_gets_one_order() {
    let (servers, database) = servers(&spec("partitioned"), 2).await;
    common::assert_twenty_clicks_make_one_order(&servers, &database, "level 6").await;
    stop(servers).await;
}

/// Server A, a child process, owns every partition and decides slowly
/// (`think`); server B, in this process, waits for the leases. Buyers are
/// all sent to B, so every answer they get travels over the log.
async fn a_owns_b_waits(
    database: &str,
    redis: &str,
    think_ms: u64,
) -> (ServerProcess, Vec<ticket_core::RunningServer>) {
    let lease = ["--lease-ms", "1000"];
    // A keeps every partition when B joins (B must wait, not share), and
    // B, once it took them all, does not give any back to A's member
    // entry while that lingers for a lease after A died.
    let keep = ["--rebalance", "false"];
    let a = start_processes(
        std::path::Path::new(env!("CARGO_BIN_EXE_load")),
        &spec("partitioned")
            .think_time_ms(think_ms)
            .args(lease)
            .args(keep),
        database,
        Some(redis),
        1,
    )
    .await
    .expect("server A starts")
    .pop()
    .unwrap();
    wait_until_all_owned(&[a.url().to_owned()]).await;
    let b = start_in_process(
        &spec("partitioned").args(lease).args(keep),
        database,
        Some(redis),
        1,
    )
    .await
    .expect("server B starts");
    (a, b)
}

/// How many partitions each server holds the lease of, judged from the
/// lease hashes in Redis (Level 3's lock: the owner field is
/// `<instance>:task-<id>`), by instance name.
async fn lease_owners(database: &str, redis: &str) -> std::collections::BTreeMap<String, usize> {
    let pool = db::connect(database, 1, Duration::from_secs(10))
        .await
        .unwrap();
    let keys = level6::log::Keys::new(&level6::schema::namespace(&pool).await.unwrap());
    pool.close().await;
    let options = level3::lock::LockOptions {
        key_prefix: keys.lease_prefix(),
        ..level3::lock::LockOptions::default()
    };
    let probe = level3::lock::LockClient::new(redis, "probe", options).unwrap();
    let client = redis::Client::open(redis).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut owners = std::collections::BTreeMap::new();
    for p in 0..PARTITIONS {
        let lease = probe.lock(&level6::log::Keys::lease_name(p));
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(lease.key())
            .query_async(&mut conn)
            .await
            .unwrap();
        for field in fields.keys() {
            if let Some((instance, _task)) = field.split_once(':') {
                *owners.entry(instance.to_owned()).or_insert(0) += 1;
            }
        }
    }
    owners
}

/// A server's instance name, from its `GET /partitions`.
async fn instance(url: &str) -> String {
    partitions(url).await["instance"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Rebalancing: server A starts alone and takes all four partitions; when
/// server B joins, A is above its share (ceil(4 / 2) = 2), gives two
/// leases up, and B takes them: two each, judged from the lease owners in
/// Redis. A sale over both servers is then exactly right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_owns_every_partition_gives_half_up_when_a_second_joins() {
    let database = fresh_database().await;
    let redis = redis_url();
    let spec = spec("partitioned").args(["--lease-ms", "1000"]);
    let mut servers = start_in_process(&spec, &database, Some(&redis), 1)
        .await
        .expect("server A starts");
    let a = instance(&servers[0].url()).await;
    wait_until(
        Duration::from_secs(30),
        "A to own every partition",
        || async { lease_owners(&database, &redis).await.get(&a) == Some(&(PARTITIONS as usize)) },
    )
    .await;

    servers.extend(
        start_in_process(&spec, &database, Some(&redis), 1)
            .await
            .expect("server B starts"),
    );
    let b = instance(&servers[1].url()).await;
    let shared = std::collections::BTreeMap::from([(a, 2), (b, 2)]);
    wait_until(Duration::from_secs(60), "two partitions each", || async {
        lease_owners(&database, &redis).await == shared
    })
    .await;

    let report = rush(&plan(&servers, &database))
        .await
        .expect("the rush runs");
    assert_exactly_sold(&report, 100);
    stop(servers).await;
}

/// A decider is SIGKILLed with a batch decided and not committed: its
/// lease runs out, the other server takes the partition, claims the
/// entries the dead one had read (XAUTOCLAIM) and decides them. Exactly
/// 100 sold, and every 201 is an order (the load tool's verdict).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decider_killed_mid_batch_is_replaced_and_exactly_the_stock_is_sold() {
    let database = fresh_database().await;
    let redis = redis_url();
    let (mut a, b) = a_owns_b_waits(&database, &redis, 600_000).await;
    let stream = ticket_stream(&database).await;

    let buyers = RushPlan::new(vec![b[0].url()], &database);
    let sale = tokio::spawn(async move { rush(&buyers).await });
    wait_until(Duration::from_secs(30), "A to read a batch", || {
        pending(&redis, &stream).then(|n| async move { n > 0 })
    })
    .await;
    a.kill().await.unwrap();

    let report = sale.await.unwrap().expect("the rush runs");
    assert_exactly_sold(&report, 100);
    assert_eq!(
        pending(&redis, &stream).await,
        0,
        "every entry acknowledged"
    );
    stop(b).await;
}

/// A decider's process stops (SIGSTOP: a long pause, a frozen VM) with a
/// batch decided: it stops renewing its lease, the other server takes the
/// partition and sells everything. When the first one wakes up and tries
/// to commit its batch under its old token, PostgreSQL refuses it (the
/// fence), and it steps down. Exactly 100 sold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decider_stalled_past_its_lease_has_its_batch_refused_by_the_fence() {
    let database = fresh_database().await;
    let redis = redis_url();
    let (a, b) = a_owns_b_waits(&database, &redis, 3_000).await;
    let stream = ticket_stream(&database).await;
    let pid = nix::unistd::Pid::from_raw(a.pid().unwrap() as i32);

    let buyers = RushPlan::new(vec![b[0].url()], &database);
    let sale = tokio::spawn(async move { rush(&buyers).await });
    wait_until(Duration::from_secs(30), "A to read a batch", || {
        pending(&redis, &stream).then(|n| async move { n > 0 })
    })
    .await;
    kill(pid, Signal::SIGSTOP).unwrap();
    let report = sale.await.unwrap().expect("the rush runs");
    kill(pid, Signal::SIGCONT).unwrap();

    assert_exactly_sold(&report, 100);
    wait_until(
        Duration::from_secs(30),
        "A's batch to be fenced off",
        || async { partitions(a.url()).await["fenced_batches"].as_u64() >= Some(1) },
    )
    .await;
    let truth = db::truth(
        &db::connect(&database, 1, Duration::from_secs(10))
            .await
            .unwrap(),
        TicketId::parse(i128::from(TICKET)).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!((truth.orders, truth.stock), (100, 0), "A wrote nothing");
    a.stop().await.unwrap();
    stop(b).await;
}

/// Redis restarts empty between two sales (no persistence): the streams,
/// the consumer groups, the leases and the fencing counters are gone. The
/// deciders notice, take the partitions again (the fence in PostgreSQL
/// refuses any token below the last one), and the next sale sells exactly
/// its stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_empty_the_next_sale_is_exactly_right() {
    let port = free_port().unwrap();
    let start_redis = || async move {
        tokio::task::spawn_blocking(move || Redis::throwaway_on(port, &[]))
            .await
            .unwrap()
            .expect("a private redis-server")
    };
    let redis_server = start_redis().await;
    let redis = redis_server.url().to_owned();
    let database = fresh_database().await;
    let servers = start_in_process(&spec("state-store"), &database, Some(&redis), 2)
        .await
        .expect("servers start");
    let urls = load::servers::urls(&servers);

    let first = rush(&plan(&servers, &database)).await.unwrap();
    assert_exactly_sold(&first, 100);

    drop(redis_server);
    let _redis_server = start_redis().await;
    wait_until_all_owned(&urls).await;
    let second = rush(&RushPlan {
        seed: 1,
        ..plan(&servers, &database)
    })
    .await
    .unwrap();
    assert_exactly_sold(&second, 100);
    stop(servers).await;
}

/// No answer in time is 202 with a URL to poll, never a guess: with a
/// decider slower than the reply timeout, the purchase is accepted, and
/// the poll gives the 201 once the order is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_is_202_and_the_poll_gives_the_order_once_committed() {
    let slow = ServerSpec::new(6, "partitioned")
        .think_time_ms(1_000)
        .args(["--reply-timeout-ms", "50"]);
    let (servers, database) = servers(&slow, 1).await;
    let pool = db::connect(&database, 1, Duration::from_secs(10))
        .await
        .unwrap();
    let ticket = TicketId::parse(i128::from(TICKET)).unwrap();
    db::reset_ticket(&pool, ticket, "late", 5).await.unwrap();
    let client = reqwest::Client::new();
    let base = servers[0].url();

    let accepted = client
        .post(format!("{base}/tickets/{TICKET}/orders"))
        .json(&serde_json::json!({"user_id": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let location = accepted.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/requests/"), "{location}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let response = client
            .get(format!("{base}{location}"))
            .send()
            .await
            .unwrap();
        if response.status() != 202 {
            break (response.status().as_u16(), response.text().await.unwrap());
        }
        assert!(Instant::now() < deadline, "the poll never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, body) = answer;
    assert_eq!(status, 201, "{body}");
    assert_eq!(db::order_holders(&pool, ticket).await.unwrap(), vec![7]);
    stop(servers).await;
}

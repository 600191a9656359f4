//! Level 4 through HTTP: sales decided in Redis, persisted later through a
//! Redis stream, and judged from PostgreSQL once the stream is drained.
//!
//! Every test uses real Redis and PostgreSQL servers. Most share the test
//! process's servers (a fresh database each, and Level 4 keys its Redis data
//! by database, so tests never see each other's stock); the outage tests
//! start private ones they can stop.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{assert_exactly_sold, fresh_database, plan, redis_url, servers, stop};
use level4::drain;
use level4::persist::{PersistOptions, Worker};
use level4::reconcile::{reconcile, DriftKind};
use level4::store::SaleStore;
use load::levels::SettleArgs;
use load::rush::{rush, RushPlan, Settle};
use load::servers::{start_in_process, start_processes, urls, wait_until_ready, ServerSpec};
use ticket_core::metrics::Metrics;
use ticket_core::services::{free_port, Postgres, Redis};
use ticket_core::{db, TicketId};

const TICKET: i64 = 1;

fn ticket() -> TicketId {
    TicketId::parse(i128::from(TICKET)).unwrap()
}

fn spec() -> ServerSpec {
    ServerSpec::new(4, "redis-lua").think_time_ms(level4::RACE_THINK_TIME_MS)
}

/// The load tool's own settle step for Level 4: wait until the stream is
/// drained into PostgreSQL.
fn settle(database: &str, redis: &str) -> Settle {
    let settle = load::levels::level(4)
        .unwrap()
        .settle
        .expect("Level 4 settles");
    let args = SettleArgs {
        database_url: database.to_owned(),
        redis_url: Some(redis.to_owned()),
        ticket_id: TICKET,
    };
    Settle(Arc::new(move || settle(args.clone())))
}

async fn store(database: &str, redis: &str) -> SaleStore {
    SaleStore::connect(database, redis)
        .await
        .expect("both stores answer")
}

/// Every order in PostgreSQL carries the order id Redis answered its buyer
/// with, and every buyer Redis recorded has exactly that row.
async fn assert_rows_match_redis(store: &SaleStore) {
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT user_id, id FROM ticket_orders WHERE ticket_id = $1")
            .bind(TICKET)
            .fetch_all(store.pool())
            .await
            .unwrap();
    let rows: HashMap<i64, i64> = rows.into_iter().collect();
    let buyers: HashMap<i64, i64> = store
        .redis()
        .query(redis::cmd("HGETALL").arg(store.keys().buyers(ticket())))
        .await
        .unwrap();
    assert_eq!(rows, buyers, "PostgreSQL's orders and Redis's buyers");
}

/// The reported persistence lag runs from the last 201 to the newest row.
/// The last 201 came after Redis decided the last sale (`sold_at`, same
/// machine, same clock), so the lag can be no longer than the newest row's
/// `created_at` minus the newest `sold_at`: a lag measured from an earlier
/// moment (the first 201, the start of the rush) is longer than that.
async fn assert_lag_is_from_the_last_201(database: &str, report: &load::rush::Report) {
    let lag = report
        .persistence_lag_ms
        .expect("the lag is measured for Level 4");
    let pool = db::connect(database, 1, Duration::from_secs(10))
        .await
        .unwrap();
    let bound: f64 = sqlx::query_scalar(
        "SELECT (EXTRACT(EPOCH FROM max(created_at) - max(sold_at)) * 1000)::float8 \
         FROM ticket_orders WHERE ticket_id = $1",
    )
    .bind(TICKET)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    // 1 ms for the rounding of three clocks' readings on one machine.
    assert!(
        (0.0..=bound + 1.0).contains(&lag),
        "lag {lag} ms, yet the newest row landed {bound} ms after the last sale was decided"
    );
}

/// 1000 buyers for 100 tickets over two servers, three rounds on the same
/// servers (each round resets the ticket; the servers hear of it through
/// PostgreSQL's NOTIFY and load the new sale): exactly 100 orders in
/// PostgreSQL once drained, stock 0, no duplicates, 100 HTTP 201s, and the
/// persistence lag measured from the last 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_sell_exactly_the_stock_three_rounds_running() {
    let (servers, database) = servers(&spec(), 2).await;
    let redis = redis_url();

    for round in 0..3 {
        let report = rush(&RushPlan {
            seed: round,
            settle: Some(settle(&database, &redis)),
            ..plan(&servers, &database)
        })
        .await
        .expect("the rush runs");

        assert_exactly_sold(&report, 100);
        assert_eq!(report.db_stock, 0, "round {round}");
        assert_eq!(report.sold_out, 900, "round {round}");
        assert_lag_is_from_the_last_201(&database, &report).await;
    }
    let store = store(&database, &redis).await;
    assert_rows_match_redis(&store).await;
    stop(servers).await;
}

/// One person clicking 20 times at once over two servers: one order, 19
/// answers of 409 already_purchased, and one unit of stock spent, in Redis
/// and in PostgreSQL (the script checks the buyer before the stock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_clicking_twenty_times_gets_one_order() {
    let (servers, database) = servers(&spec(), 2).await;
    let redis = redis_url();

    let report = rush(&RushPlan {
        buyers: 20,
        distinct_users: Some(1),
        settle: Some(settle(&database, &redis)),
        ..plan(&servers, &database)
    })
    .await
    .expect("the rush runs");

    assert_eq!(report.succeeded, 1, "{report:#?}");
    assert_eq!(report.already_purchased, 19);
    assert_eq!(report.db_orders, 1);
    assert_eq!(report.db_stock, 99, "one unit spent in PostgreSQL");
    assert_eq!(report.duplicate_orders, 0);
    assert_eq!(report.server_errors, 0);
    assert_eq!(report.verdict, ticket_core::Verdict::Correct);
    let status = store(&database, &redis)
        .await
        .status(ticket())
        .await
        .unwrap();
    let sale = status.redis.expect("the sale is in Redis");
    assert_eq!(
        (sale.stock, sale.buyers),
        (99, 1),
        "one unit spent in Redis"
    );
    stop(servers).await;
}

/// A persistence worker dies (SIGKILL) in the middle of a batch: its
/// transaction is rolled back and its entries stay pending in its name.
/// Another consumer of the group claims them (XAUTOCLAIM) once they have
/// been idle long enough, and persists them with the rest: exactly 100
/// orders, each once, each with the order id its buyer was answered with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_leaves_its_entries_to_another_consumer() {
    let database = fresh_database().await;
    let redis = redis_url();
    // Server A is a separate process whose worker stalls inside its first
    // batch's transaction; server B runs no worker at all.
    let stalled = spec().args(["--persist-pause-ms", "600000", "--claim-idle-ms", "1000"]);
    let mut a = start_processes(
        std::path::Path::new(env!("CARGO_BIN_EXE_load")),
        &stalled,
        &database,
        Some(&redis),
        1,
    )
    .await
    .expect("server A starts")
    .pop()
    .unwrap();
    let b = start_in_process(&spec().args(["--no-persist"]), &database, Some(&redis), 1)
        .await
        .expect("server B starts");

    let report = rush(&RushPlan {
        targets: vec![a.url().to_owned(), b[0].url()],
        ..RushPlan::new(Vec::new(), &database)
    })
    .await
    .expect("the rush runs");
    assert_eq!(report.succeeded, 100, "every unit sold: {report:#?}");
    assert_eq!(
        report.db_orders, 0,
        "nothing committed yet: A's worker stalls"
    );

    let store = store(&database, &redis).await;
    let held = pending_of_others(&store, "rescuer").await;
    assert!(held > 0, "A's worker holds entries it has not acknowledged");

    // A dies mid-transaction; a new consumer joins the group.
    a.kill().await.unwrap();
    let rescuer = Worker::new(
        store.clone(),
        PersistOptions {
            claim_idle: Duration::from_millis(1000),
            ..PersistOptions::new("rescuer")
        },
        Metrics::new(),
    )
    .unwrap();
    let rescuer_stats = rescuer.stats();
    let rescuer = rescuer.spawn();
    let status = drain::wait_with(&store, ticket(), Duration::from_secs(60))
        .await
        .expect("the rescuer persists everything");

    // The rescuer counts a batch after its commit and acknowledgement: stop
    // it (it finishes its batch first) before reading its counts.
    rescuer.stop().await;
    let stats = rescuer_stats.snapshot();
    assert!(
        stats.claimed >= held,
        "the rescuer claimed A's {held} entries: {stats:?}"
    );
    assert_eq!(stats.persisted, 100, "{stats:?}");
    assert_eq!(status.queue.pending, 0);
    let truth = db::truth(store.pool(), ticket()).await.unwrap();
    assert_eq!(truth.orders, 100);
    assert_eq!(truth.distinct_buyers, 100, "none twice");
    assert_eq!(truth.stock, 0);
    assert_rows_match_redis(&store).await;
    stop(b).await;
}

/// Entries pending in the hands of consumers other than `me`.
async fn pending_of_others(store: &SaleStore, me: &str) -> u64 {
    let reply: redis::streams::StreamPendingReply = store
        .redis()
        .query(
            redis::cmd("XPENDING")
                .arg(store.keys().orders())
                .arg(level4::keys::GROUP),
        )
        .await
        .unwrap();
    match reply {
        redis::streams::StreamPendingReply::Data(data) => data
            .consumers
            .iter()
            .filter(|c| c.name != me)
            .map(|c| c.pending as u64)
            .sum(),
        _ => 0,
    }
}

/// PostgreSQL stops after the sale was loaded and before the buyers come:
/// Redis goes on deciding (100 answers of 201, 900 sold out), the workers
/// retry with backoff, and when PostgreSQL is back every order lands: 100
/// rows, none lost, none twice. Two poison entries on the stream (one
/// malformed, one whose timestamp PostgreSQL cannot store, refused on every
/// attempt) end in the dead letter stream with their reasons, and do not
/// hold up the orders around them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_stopped_sales_go_on_and_every_order_lands_when_it_returns() {
    let postgres = tokio::task::spawn_blocking(Postgres::throwaway)
        .await
        .unwrap()
        .expect("a private PostgreSQL");
    let database = postgres.fresh_database().await.unwrap();
    let redis = redis_url();
    let spec = spec().args([
        "--persist-backoff-max-ms",
        "300",
        "--acquire-timeout-ms",
        "1000",
        "--persist-max-attempts",
        "3",
    ]);
    let servers = start_in_process(&spec, &database, Some(&redis), 2)
        .await
        .expect("servers start");
    // Both servers must be able to sell before PostgreSQL goes: each reads
    // its Redis namespace from it once, when it starts.
    for url in urls(&servers) {
        wait_until_ready(&url, Duration::from_secs(30))
            .await
            .expect("the server is ready");
    }
    let store = store(&database, &redis).await;
    db::reset_ticket(store.pool(), ticket(), "Outage", 100)
        .await
        .unwrap();
    // The sale's first buyer would load it from PostgreSQL; do it now.
    let loaded = store.ensure_loaded(ticket()).await.unwrap();
    store.pool().close().await;

    let pg = Arc::new(postgres);
    {
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || pg.stop())
            .await
            .unwrap()
            .expect("PostgreSQL stops");
    }

    // 1000 buyers, dealt over both servers, while PostgreSQL is down.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let targets = urls(&servers);
    let answers = futures::future::join_all((0..1000).map(|i| {
        let client = client.clone();
        let url = format!("{}/tickets/{TICKET}/orders", targets[i % targets.len()]);
        async move {
            client
                .post(url)
                .json(&serde_json::json!({ "user_id": 5_000_000 + i }))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    }))
    .await;
    let count = |status: u16| answers.iter().filter(|&&s| s == status).count();
    assert_eq!(count(201), 100, "sales go on without PostgreSQL");
    assert_eq!(count(409), 900, "then sold out");

    // Two poison entries, queued behind the sales.
    let redis_only = level4::store::RedisConn::new(&redis, Duration::from_secs(1)).unwrap();
    let _: String = redis_only
        .query(
            redis::cmd("XADD")
                .arg(store.keys().orders())
                .arg("*")
                .arg("order")
                .arg("not-a-number"),
        )
        .await
        .unwrap();
    let _: String = redis_only
        .query(
            redis::cmd("XADD")
                .arg(store.keys().orders())
                .arg("*")
                .arg("order")
                .arg(42)
                .arg("ticket")
                .arg(TICKET)
                .arg("user")
                .arg(4_242)
                .arg("epoch")
                .arg(loaded.epoch)
                .arg("sold_us")
                .arg(i64::MAX),
        )
        .await
        .unwrap();
    // Let the workers fail against the stopped database for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;

    {
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || pg.start())
            .await
            .unwrap()
            .expect("PostgreSQL starts again");
    }
    let status = drain::wait_until_persisted(&database, &redis, TICKET, Duration::from_secs(60))
        .await
        .expect("everything lands once PostgreSQL is back");
    assert!(status.all_persisted(), "{status:?}");

    let store = level4::store::SaleStore::connect(&database, &redis)
        .await
        .unwrap();
    let truth = db::truth(store.pool(), ticket()).await.unwrap();
    assert_eq!(truth.orders, 100, "0 lost");
    assert_eq!(truth.distinct_buyers, 100, "none twice");
    assert_eq!(truth.stock, 0);
    assert_rows_match_redis(&store).await;

    let dead: redis::streams::StreamRangeReply = store
        .redis()
        .query(
            redis::cmd("XRANGE")
                .arg(store.keys().dead_letters())
                .arg("-")
                .arg("+"),
        )
        .await
        .unwrap();
    let reasons: Vec<String> = dead
        .ids
        .iter()
        .map(|e| e.get::<String>("reason").unwrap_or_default())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("malformed")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("refused it 3 times") && r.contains("out of range")),
        "{reasons:?}"
    );
    stop(servers).await;
    store.pool().close().await;
}

/// Redis restarts after a sale, with its append-only file on: it comes back
/// with the sale as it was. The next rush on the same sale sells nothing
/// more (no oversell), reconcile finds the two stores in agreement, and the
/// next sale (a reset) sells exactly its stock again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_with_aof_nothing_is_oversold_and_reconcile_finds_no_drift() {
    let port = free_port().unwrap();
    // Our own directory for the AOF: the throwaway's own is removed when it
    // stops, and a later `--dir` wins over the first.
    let dir = std::env::temp_dir().join(format!("ticket-rush-l4-aof-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_arg = dir.to_string_lossy().into_owned();
    let start_redis = || {
        let dir_arg = dir_arg.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                Redis::throwaway_on(
                    port,
                    &[
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        "everysec",
                        "--dir",
                        &dir_arg,
                    ],
                )
            })
            .await
            .unwrap()
            .expect("a private redis-server")
        }
    };
    let redis_server = start_redis().await;
    let redis = redis_server.url().to_owned();
    let database = fresh_database().await;
    let servers = start_in_process(&spec(), &database, Some(&redis), 2)
        .await
        .expect("servers start");

    let first = rush(&RushPlan {
        settle: Some(settle(&database, &redis)),
        ..plan(&servers, &database)
    })
    .await
    .expect("the first rush runs");
    assert_exactly_sold(&first, 100);

    // Redis stops (SIGTERM: it flushes its AOF) and starts again.
    tokio::task::spawn_blocking(move || drop(redis_server))
        .await
        .unwrap();
    let redis_server = start_redis().await;

    let store = store(&database, &redis).await;
    let reports = reconcile(&store, &[ticket()], false).await.unwrap();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].loaded, "the sale survived the restart");
    assert!(reports[0].drift.is_empty(), "{}", reports[0]);

    // The same sale again, 1000 new buyers: nothing left to sell.
    let again = rush(&RushPlan {
        seed: 7,
        reset: false,
        settle: Some(settle(&database, &redis)),
        ..plan(&servers, &database)
    })
    .await
    .expect("the second rush runs");
    assert_eq!(again.succeeded, 0, "{again:#?}");
    assert_eq!(again.sold_out, 1000);
    assert_eq!(
        (again.db_orders, again.db_stock, again.oversold),
        (100, 0, 0)
    );

    // The next sale sells exactly its stock.
    let next = rush(&RushPlan {
        seed: 8,
        settle: Some(settle(&database, &redis)),
        ..plan(&servers, &database)
    })
    .await
    .expect("the next sale runs");
    assert_exactly_sold(&next, 100);
    let reports = reconcile(&store, &[ticket()], false).await.unwrap();
    assert!(reports[0].drift.is_empty(), "{}", reports[0]);

    stop(servers).await;
    tokio::task::spawn_blocking(move || drop(redis_server))
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Makes Redis forget `count` persisted sales, as losing its last second
/// of writes would: their buyers and their units (the script's effects go
/// together, so their stream entries would be gone too).
async fn forget_sales(store: &SaleStore, count: usize) {
    let buyers: HashMap<i64, i64> = store
        .redis()
        .query(redis::cmd("HGETALL").arg(store.keys().buyers(ticket())))
        .await
        .unwrap();
    let victims: Vec<i64> = buyers.keys().copied().take(count).collect();
    let _: () = store
        .redis()
        .pipe(
            redis::pipe()
                .atomic()
                .cmd("HDEL")
                .arg(store.keys().buyers(ticket()))
                .arg(&victims)
                .ignore()
                .cmd("HINCRBY")
                .arg(store.keys().sale(ticket()))
                .arg("stock")
                .arg(victims.len())
                .ignore(),
        )
        .await
        .unwrap();
}

/// What `appendfsync everysec` can leave behind after a machine crash:
/// Redis forgot sales the worker had already persisted. Reconcile sees it,
/// and `--repair` puts the forgotten buyers back: a new rush on the same
/// sale sells nothing. Left alone, Redis sells those units again, and only
/// PostgreSQL's `CHECK (stock >= 0)` keeps the extra orders out; they end
/// in the dead letters although their buyers were answered 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_repairs_a_redis_that_forgot_persisted_sales() {
    let spec = spec().args([
        "--persist-max-attempts",
        "2",
        "--persist-backoff-max-ms",
        "100",
    ]);
    let (servers, database) = servers(&spec, 2).await;
    let redis = redis_url();
    let again = |seed: u64| RushPlan {
        seed,
        reset: false,
        settle: Some(settle(&database, &redis)),
        ..plan(&servers, &database)
    };
    let first = rush(&RushPlan {
        settle: Some(settle(&database, &redis)),
        ..plan(&servers, &database)
    })
    .await
    .unwrap();
    assert_exactly_sold(&first, 100);
    let store = store(&database, &redis).await;

    // Redis forgets five persisted sales; reconcile notices and repairs.
    forget_sales(&store, 5).await;
    let found = reconcile(&store, &[ticket()], false).await.unwrap();
    let kinds: Vec<DriftKind> = found[0].drift.iter().map(|d| d.kind).collect();
    assert_eq!(kinds, vec![DriftKind::RedisForgotOrders], "{}", found[0]);
    assert!(found[0].has_drift());
    let repaired = reconcile(&store, &[ticket()], true).await.unwrap();
    assert!(!repaired[0].has_drift(), "{}", repaired[0]);
    let after = rush(&again(11)).await.unwrap();
    assert_eq!(after.succeeded, 0, "nothing left to sell: {after:#?}");
    assert_eq!((after.db_orders, after.db_stock), (100, 0));

    // Again, left alone this time: five more 201s for units that are gone.
    forget_sales(&store, 5).await;
    let unrepaired = rush(&again(12)).await.unwrap();
    assert_eq!(
        unrepaired.succeeded, 5,
        "Redis sold the forgotten units again"
    );
    assert_eq!(unrepaired.db_orders, 100, "the CHECK kept them out");
    // The refused entries reach the dead letters after their attempts and
    // backoff; on a loaded machine that can outlast the settle step.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let status = store.status(ticket()).await.unwrap();
        if status.queue.dead_letters >= 5 || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(status.queue.dead_letters, 5, "{status:?}");
    let found = reconcile(&store, &[ticket()], false).await.unwrap();
    let kinds: Vec<DriftKind> = found[0].drift.iter().map(|d| d.kind).collect();
    assert!(
        kinds.contains(&DriftKind::RedisForgotOrders),
        "{}",
        found[0]
    );
    assert!(kinds.contains(&DriftKind::DeadLettered), "{}", found[0]);
    stop(servers).await;
}

/// Cancels through HTTP put units back on sale in both stores, whether the
/// worker has written the order yet or not: five orders cancelled before any
/// worker runs, five after. A repeated cancel gets the same answer and
/// restocks nothing; someone else's order is 403, an unknown one 404. The
/// next rush on the same sale sells exactly the ten freed units, and the two
/// stores agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_orders_go_back_on_sale_in_both_stores() {
    let (servers, database) = servers(&spec().args(["--no-persist"]), 2).await;
    let redis = redis_url();
    let first = rush(&plan(&servers, &database)).await.unwrap();
    assert_eq!(first.succeeded, 100);
    assert_eq!(first.db_orders, 0, "no worker yet");
    let store = store(&database, &redis).await;
    let buyers: HashMap<i64, i64> = store
        .redis()
        .query(redis::cmd("HGETALL").arg(store.keys().buyers(ticket())))
        .await
        .unwrap();
    let mut holders: Vec<(i64, i64)> = buyers.into_iter().collect();
    holders.sort_unstable();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = servers[0].url();
    let cancel = |user: i64, order: i64| {
        let request = client
            .delete(format!("{base}/tickets/{TICKET}/orders/{order}"))
            .json(&serde_json::json!({ "user_id": user }));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };

    // Five cancelled before the worker has written them.
    for &(user, order) in &holders[..5] {
        let (status, body) = cancel(user, order).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"cancelled\""), "{body}");
    }
    let worker = Worker::new(
        store.clone(),
        PersistOptions::new("cancel-test"),
        Metrics::new(),
    )
    .unwrap()
    .spawn();
    drain::wait_with(&store, ticket(), Duration::from_secs(60))
        .await
        .unwrap();
    let truth = db::truth(store.pool(), ticket()).await.unwrap();
    assert_eq!(
        (truth.orders, truth.stock),
        (95, 5),
        "the worker skipped them"
    );

    // Five after; one repeated; wrong user; unknown order.
    for &(user, order) in &holders[5..10] {
        assert_eq!(cancel(user, order).await.0, 200);
    }
    let (user, order) = holders[7];
    let again = cancel(user, order).await;
    assert_eq!(again.0, 200, "a repeated cancel: {}", again.1);
    let (_, someone_elses) = holders[20];
    assert_eq!(cancel(holders[21].0, someone_elses).await.0, 403);
    assert_eq!(cancel(user, 12_345).await.0, 404);

    let truth = db::truth(store.pool(), ticket()).await.unwrap();
    assert_eq!((truth.orders, truth.stock), (90, 10));
    let sale = store.status(ticket()).await.unwrap().redis.unwrap();
    assert_eq!(
        (sale.stock, sale.buyers),
        (10, 90),
        "Redis put them back too"
    );
    let cancelled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM cancelled_orders WHERE ticket_id = $1")
            .bind(TICKET)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(cancelled, 10);

    // The freed units sell again, exactly.
    let next = rush(&RushPlan {
        seed: 9,
        reset: false,
        settle: Some(settle(&database, &redis)),
        ..plan(&servers, &database)
    })
    .await
    .unwrap();
    assert_eq!(next.succeeded, 10, "{next:#?}");
    assert_eq!((next.db_orders, next.db_stock, next.oversold), (100, 0, 0));
    let reports = reconcile(&store, &[ticket()], false).await.unwrap();
    assert!(reports[0].drift.is_empty(), "{}", reports[0]);
    worker.stop().await;
    stop(servers).await;
}

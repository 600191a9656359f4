//! Idempotency keys through HTTP, two servers, verified from the database:
//! identical concurrent requests get one answer and at most one order; a key
//! reused for another request is refused; an expired key is processed anew;
//! Level 4, which decides in Redis and records the answer afterwards, answers
//! a key whose first answer was lost with the order it sold; and the broken
//! check-then-insert design is shown failing.

mod common;

use std::time::Duration;

use common::{redis_url, servers, stop};
use futures::future::join_all;
use load::servers::ServerSpec;
use ticket_core::{db, RunningServer, TicketId};

#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    body: String,
    replayed: bool,
}

/// Sends `copies` identical purchases with one key, all at once, dealt over
/// the servers.
async fn duplicates(
    servers: &[RunningServer],
    ticket: i64,
    user: i64,
    key: &str,
    copies: usize,
) -> Vec<Answer> {
    let client = reqwest::Client::new();
    let requests = (0..copies).map(|i| {
        let url = format!(
            "{}/tickets/{ticket}/orders",
            servers[i % servers.len()].url()
        );
        let request = client
            .post(url)
            .header("idempotency-key", key)
            .json(&serde_json::json!({ "user_id": user }))
            .send();
        async move {
            let response = request.await.expect("an answer");
            let replayed = response.headers().contains_key("idempotent-replayed");
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            Answer {
                status,
                body,
                replayed,
            }
        }
    });
    join_all(requests).await
}

async fn reset(database: &str, ticket: i64, stock: i32) -> sqlx::PgPool {
    let pool = load::rush::open_database(database).await.unwrap();
    db::reset_ticket(
        &pool,
        TicketId::parse(ticket.into()).unwrap(),
        "Keyed",
        stock,
    )
    .await
    .unwrap();
    pool
}

/// 2, 3, 10 and 50 identical concurrent requests with one key, across both
/// servers, for a sale and for a sold-out ticket: one answer, byte for byte,
/// at most one order, and no 5xx, for every correct strategy, Level 4's
/// included (judged once its stream has drained into PostgreSQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_requests_get_one_answer_and_at_most_one_order() {
    let strategies = common::correct_db_strategies()
        .into_iter()
        .chain([(4, "redis-lua")]);
    for (level, strategy) in strategies {
        let (servers, database) = servers(&ServerSpec::new(level, strategy), 2).await;
        let mut ticket = 100;
        for copies in [2, 3, 10, 50] {
            for stock in [100, 0] {
                ticket += 1;
                let pool = reset(&database, ticket, stock).await;
                let key = format!("order-{level}-{strategy}-{copies}-{stock}");

                let answers = duplicates(&servers, ticket, 7, &key, copies).await;

                let what = format!("level {level} {strategy}, {copies} copies, stock {stock}");
                let first = &answers[0];
                assert!(first.status < 500, "{what}: {first:?}");
                assert_eq!(
                    first.status,
                    if stock > 0 { 201 } else { 409 },
                    "{what}: {first:?}"
                );
                for answer in &answers {
                    assert_eq!(
                        (answer.status, &answer.body),
                        (first.status, &first.body),
                        "{what}"
                    );
                }
                assert_eq!(
                    answers.iter().filter(|a| !a.replayed).count(),
                    1,
                    "{what}: one did the work"
                );
                if level == 4 {
                    level4::drain::wait_until_persisted(
                        &database,
                        &redis_url(),
                        ticket,
                        Duration::from_secs(30),
                    )
                    .await
                    .expect("Level 4's stream drains");
                }
                let truth = db::truth(&pool, TicketId::parse(ticket.into()).unwrap())
                    .await
                    .unwrap();
                assert_eq!(truth.orders, i64::from(stock > 0), "{what}");
                assert_eq!(
                    i64::from(truth.stock) + truth.orders,
                    i64::from(stock),
                    "{what}"
                );
            }
        }
        stop(servers).await;
    }
}

/// The same key for another user is 422 and writes nothing; once the key
/// has expired, the same request is processed anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_keys_are_refused_and_expired_keys_are_processed_anew() {
    let spec = ServerSpec::new(2, "atomic").args(["--idempotency-ttl-secs", "1"]);
    let (servers, database) = servers(&spec, 2).await;
    let pool = reset(&database, 5, 0).await;

    // Sold out: the answer is recorded, and replayed while the key lives.
    let first = duplicates(&servers, 5, 1, "k1", 1).await.remove(0);
    assert_eq!(first.status, 409);
    // More stock arrives; while the key lives it still answers "sold out".
    sqlx::query("UPDATE tickets SET total = 10, stock = 10 WHERE id = 5")
        .execute(&pool)
        .await
        .unwrap();
    let replay = duplicates(&servers[1..], 5, 1, "k1", 1).await.remove(0);
    assert_eq!(
        (replay.status, &replay.body, replay.replayed),
        (409, &first.body, true)
    );

    // Another user with the same key: 422, nothing written.
    let mismatch = duplicates(&servers, 5, 2, "k1", 1).await.remove(0);
    assert_eq!(mismatch.status, 422, "{mismatch:?}");
    assert!(mismatch.body.contains("idempotency_key_mismatch"));
    let truth = db::truth(&pool, TicketId::parse(5).unwrap()).await.unwrap();
    assert_eq!((truth.orders, truth.stock), (0, 10));

    // After the key expires, the same request is new work: now it sells.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let anew = duplicates(&servers, 5, 1, "k1", 1).await.remove(0);
    assert_eq!((anew.status, anew.replayed), (201, false), "{anew:?}");
    let truth = db::truth(&pool, TicketId::parse(5).unwrap()).await.unwrap();
    assert_eq!((truth.orders, truth.stock), (1, 9));
    stop(servers).await;
}

/// A malformed key is a 400 and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_keys_are_400() {
    let (servers, database) = servers(&ServerSpec::new(2, "atomic"), 1).await;
    let pool = reset(&database, 1, 10).await;

    let answer = duplicates(&servers, 1, 1, "has space", 1).await.remove(0);

    assert_eq!(answer.status, 400);
    assert!(answer.body.contains("invalid_idempotency_key"));
    let truth = db::truth(&pool, TicketId::parse(1).unwrap()).await.unwrap();
    assert_eq!(truth.orders, 0);
    stop(servers).await;
}

/// The design one of the original projects shipped (look the key up, buy,
/// then save the key) breaks as soon as duplicates arrive together: they
/// all miss the lookup, and all but one fail to save the key. With a race
/// window every run shows it; the correct design, same window, does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_then_insert_breaks_under_concurrent_duplicates_and_atomic_does_not() {
    for (mode, should_break) in [("check-then-insert", true), ("atomic", false)] {
        let spec = ServerSpec::new(2, "atomic")
            .think_time_ms(20)
            .args(["--idempotency", mode]);
        let (servers, database) = servers(&spec, 2).await;
        let _pool = reset(&database, 9, 100).await;

        let answers = duplicates(&servers, 9, 3, "double-click", 3).await;

        let all_identical = answers
            .iter()
            .all(|a| (a.status, &a.body) == (answers[0].status, &answers[0].body));
        let server_errors = answers.iter().filter(|a| a.status >= 500).count();
        if should_break {
            assert!(!all_identical, "{mode}: {answers:?}");
            assert!(
                server_errors > 0,
                "{mode}: the duplicate key surfaces as a 500: {answers:?}"
            );
        } else {
            assert!(all_identical, "{mode}: {answers:?}");
            assert_eq!(server_errors, 0, "{mode}: {answers:?}");
        }
        stop(servers).await;
    }
}

/// A duplicate that arrives while the first request is still at work waits
/// for it, but only up to `--idempotency-wait-ms`: past that it is told 409
/// request_in_progress, and once the first finishes its answer is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_waits_only_so_long_for_the_first_request() {
    let spec = ServerSpec::new(2, "atomic")
        .think_time_ms(600)
        .args(["--idempotency-wait-ms", "50"]);
    let (servers, database) = servers(&spec, 2).await;
    let pool = reset(&database, 4, 10).await;

    let first = duplicates(&servers[..1], 4, 8, "slow", 1);
    let second = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        duplicates(&servers[1..], 4, 8, "slow", 1).await
    };
    let (first, second) = tokio::join!(first, second);

    assert_eq!(first[0].status, 201, "{first:?}");
    assert_eq!(second[0].status, 409, "{second:?}");
    assert!(second[0].body.contains("request_in_progress"), "{second:?}");
    let later = duplicates(&servers, 4, 8, "slow", 1).await.remove(0);
    assert_eq!(
        (later.status, &later.body, later.replayed),
        (201, &first[0].body, true)
    );
    let truth = db::truth(&pool, TicketId::parse(4).unwrap()).await.unwrap();
    assert_eq!(truth.orders, 1);
    stop(servers).await;
}

/// Level 4 decides a sale in Redis and can only record the key's answer in
/// PostgreSQL afterwards. A server that dies in between leaves a sold order
/// behind an unfinished claim. Once the claim's lease is over, the same key
/// asking again is answered with that order: a 201 with the first answer's
/// body, and no unit spent. (Without the key recorded in Redis with the sale,
/// it got `409 already_purchased` for its own purchase.) Another key of the
/// same buyer is another request: 409 `already_purchased`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level4_answers_a_key_whose_answer_was_lost_with_the_order_it_sold() {
    let (servers, database) = servers(&ServerSpec::new(4, "redis-lua"), 2).await;
    let pool = reset(&database, 7, 10).await;

    let first = duplicates(&servers[..1], 7, 1, "lost", 1).await.remove(0);
    assert_eq!(first.status, 201, "{first:?}");
    // What a server that died right after the sale leaves behind: the claim,
    // unanswered, its lease over.
    sqlx::query(
        "UPDATE idempotency_keys SET status = NULL, body = NULL, location = NULL, \
         completed_at = NULL, locked_until = now() - interval '1 second' WHERE key = 'lost'",
    )
    .execute(&pool)
    .await
    .unwrap();

    let again = duplicates(&servers[1..], 7, 1, "lost", 1).await.remove(0);
    assert_eq!(
        (again.status, &again.body, again.replayed),
        (201, &first.body, false),
        "the same request, taken over, gets its own order back"
    );
    let replay = duplicates(&servers, 7, 1, "lost", 1).await.remove(0);
    assert_eq!(
        (replay.status, &replay.body, replay.replayed),
        (201, &first.body, true)
    );
    let other = duplicates(&servers, 7, 1, "another", 1).await.remove(0);
    assert_eq!(other.status, 409, "{other:?}");
    assert!(other.body.contains("already_purchased"), "{other:?}");

    level4::drain::wait_until_persisted(&database, &redis_url(), 7, Duration::from_secs(30))
        .await
        .expect("the sale reaches PostgreSQL");
    let truth = db::truth(&pool, TicketId::parse(7).unwrap()).await.unwrap();
    assert_eq!((truth.orders, truth.stock), (1, 9), "one unit spent, once");
    stop(servers).await;
}

/// The everyday way a Level 4 answer gets lost: Redis is stalled (here by a
/// script that keeps it busy for 1.5 s), the server stops waiting for the
/// purchase script's reply after its 1 s response timeout and answers 503,
/// which releases the claim, and then Redis runs the script anyway: the unit
/// is sold to a buyer who was told "try again". Trying again with the same
/// key gets that order (201), not `409 already_purchased`, and spends
/// nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level4_a_purchase_whose_redis_reply_timed_out_gets_its_order_on_retry() {
    let (servers, database) = servers(&ServerSpec::new(4, "redis-lua"), 1).await;
    let pool = reset(&database, 8, 10).await;
    let redis = redis_url();
    // Load the sale first, with another buyer, so that the stalled request
    // is the purchase script itself.
    let warm = duplicates(&servers, 8, 2, "warm-up", 1).await.remove(0);
    assert_eq!(warm.status, 201, "{warm:?}");

    let store = level4::store::SaleStore::connect(&database, &redis)
        .await
        .unwrap();
    let stall = {
        let url = redis.clone();
        tokio::spawn(async move {
            let mut conn = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection_with_config(
                    &redis::AsyncConnectionConfig::new().set_response_timeout(None),
                )
                .await
                .unwrap();
            let _: i64 = redis::Script::new(
                "local t = redis.call('TIME')
                 local start = t[1] * 1000000 + t[2]
                 repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > 1500000
                 return 1",
            )
            .invoke_async(&mut conn)
            .await
            .unwrap();
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first = duplicates(&servers, 8, 1, "stalled", 1).await.remove(0);
    assert_eq!(first.status, 503, "{first:?}");
    stall.await.unwrap();

    // Redis ran the script after all: the buyer holds an order.
    let ticket = TicketId::parse(8).unwrap();
    let sold: Option<i64> = store
        .redis()
        .query(redis::cmd("HGET").arg(store.keys().buyers(ticket)).arg(1))
        .await
        .unwrap();
    let sold = sold.expect("the stalled purchase script ran once Redis was free");

    let again = duplicates(&servers, 8, 1, "stalled", 1).await.remove(0);
    assert_eq!((again.status, again.replayed), (201, false), "{again:?}");
    let body: serde_json::Value = serde_json::from_str(&again.body).unwrap();
    assert_eq!(body["order_id"], sold, "{again:?}");

    level4::drain::wait_until_persisted(&database, &redis, 8, Duration::from_secs(30))
        .await
        .expect("the sales reach PostgreSQL");
    let truth = db::truth(&pool, ticket).await.unwrap();
    assert_eq!((truth.orders, truth.stock), (2, 8), "two buyers, two units");
    store.pool().close().await;
    stop(servers).await;
}

//! The read cache: an expired entry read by 1,000 at once costs the
//! database one query (and, without the guard, many); an admin's change is
//! seen at once by every server.

mod common;

use common::Office;
use futures::future::join_all;
use reqwest::Method;
use ticket_core::services::Redis;

/// How many times the servers loaded `event` from the database, from their
/// own `/metrics` counters, summed over servers.
async fn loads(office: &Office, event: &str) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for server in 0..office.urls.len() {
        let text = office
            .send(server, Method::GET, "/metrics", None, &[])
            .await?;
        let text = text.body.as_str().unwrap_or_default().to_owned();
        total += ticket_core::metrics::samples(&text)
            .filter(|s| s.label("event") == Some(event))
            .map(|s| s.value)
            .sum::<f64>();
    }
    Ok(total)
}

/// Two servers on one Redis, the cache kept a minute; `--think-time-ms`
/// makes every database load take 300 ms, so every reader arrives while
/// the load is still running.
async fn office(guard: &str) -> anyhow::Result<Office> {
    let redis = Redis::shared()?.url().to_owned();
    let args = [
        "--redis-url",
        &redis,
        "--cache-ttl-ms",
        "60000",
        "--think-time-ms",
        "300",
        "--cache-guard",
        guard,
    ];
    Office::start(2, &args).await
}

/// Makes the cached show list expire now, as its TTL would.
async fn expire_show_list(office: &Office) -> anyhow::Result<()> {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&office.pool)
        .await?;
    let client = redis::Client::open(office.redis_url.clone().unwrap())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(format!("level5:{database}:cache:shows"))
        .arg(1)
        .query_async(&mut conn)
        .await?;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    Ok(())
}

/// 1,000 readers of `GET /shows`, half on each server, all at once.
async fn thousand_readers(office: &Office) -> anyhow::Result<()> {
    let answers =
        join_all((0..1_000).map(|i| office.send(i % 2, Method::GET, "/shows", None, &[]))).await;
    for answer in answers {
        let answer = answer?;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.body["shows"].as_array().map(Vec::len), Some(1));
    }
    Ok(())
}

/// The stampede, cured: the entry expires and 1,000 readers on two
/// servers miss it at once; the database is asked once (single flight in
/// each server, a Redis lock between them).
#[tokio::test]
async fn a_thousand_readers_of_an_expired_entry_cause_one_database_query() -> anyhow::Result<()> {
    let office = office("single-flight").await?;
    office.create_show(&[("r", 100, 10)]).await?;
    office.send(0, Method::GET, "/shows", None, &[]).await?;
    assert_eq!(loads(&office, "cache_load_shows").await?, 1.0);
    expire_show_list(&office).await?;

    thousand_readers(&office).await?;
    assert_eq!(
        loads(&office, "cache_load_shows").await?,
        2.0,
        "one load for 1,000 readers"
    );
    office.stop().await
}

/// The stampede itself (`--cache-guard off`): every reader who missed
/// the expired entry asks the database.
#[tokio::test]
async fn without_the_guard_a_thousand_readers_of_an_expired_entry_stampede_the_database(
) -> anyhow::Result<()> {
    let office = office("off").await?;
    office.create_show(&[("r", 100, 10)]).await?;
    expire_show_list(&office).await?;

    thousand_readers(&office).await?;
    let loads = loads(&office, "cache_load_shows").await?;
    assert!(loads > 10.0, "the stampede: {loads} loads");
    office.stop().await
}

/// An admin's change drops the cached entries in Redis, so every server
/// shows the new title and price at once, not after the TTL. A hold made
/// before keeps its amount.
#[tokio::test]
async fn an_admins_change_is_seen_at_once_by_every_server() -> anyhow::Result<()> {
    let office = office("single-flight").await?;
    let show = office.create_show(&[("vip", 100, 2), ("r", 50, 2)]).await?;
    let held = office.hold(0, show, 1, &[1]).await?;
    assert_eq!(held.body["amount"], 100);
    for server in 0..2 {
        office
            .send(server, Method::GET, "/shows", None, &[])
            .await?;
        office
            .send(
                server,
                Method::GET,
                &format!("/shows/{show}/seats"),
                None,
                &[],
            )
            .await?;
    }
    let bearer = format!("Bearer {}", common::ADMIN_TOKEN);
    let change = serde_json::json!({"title": "New night", "prices": {"vip": 250}});
    let path = format!("/admin/shows/{show}");
    let changed = office
        .send(
            0,
            Method::PATCH,
            &path,
            Some(change),
            &[("authorization", &bearer)],
        )
        .await?;
    assert_eq!(changed.status, 200, "{changed:?}");

    let list = office.send(1, Method::GET, "/shows", None, &[]).await?;
    assert_eq!(list.body["shows"][0]["title"], "New night");
    let map = office
        .send(1, Method::GET, &format!("/shows/{show}/seats"), None, &[])
        .await?;
    let seats = &map.body["seats"];
    assert_eq!(
        (seats[0]["price"].as_i64(), seats[0]["status"].as_str()),
        (Some(250), Some("held"))
    );
    assert_eq!(
        (seats[2]["price"].as_i64(), seats[2]["status"].as_str()),
        (Some(50), Some("available"))
    );
    let amount: i64 = sqlx::query_scalar("SELECT amount FROM holds WHERE show_id = $1")
        .bind(show)
        .fetch_one(&office.pool)
        .await?;
    assert_eq!(amount, 100, "a hold keeps the price it was made at");

    let wrong = serde_json::json!({"prices": {"balcony": 10}});
    let refused = office
        .send(
            0,
            Method::PATCH,
            &path,
            Some(wrong),
            &[("authorization", &bearer)],
        )
        .await?;
    assert_eq!((refused.status, refused.code()), (422, "unknown_grade"));
    office.stop().await
}

//! Holding seats on two servers, checked in the database by identity: which
//! users hold which seats, not how many answers said 201.

mod common;

use std::collections::BTreeMap;

use common::{winners, Answer, Office};
use futures::future::join_all;
use rand::seq::IndexedRandom as _;
use reqwest::Method;
use serde_json::json;

/// 500 buyers on two servers race for the 10 front seats, each wanting a
/// random group of 1 to 4 of them, listed in random order.
async fn rush_for_front_seats(args: &[&str]) -> anyhow::Result<()> {
    let office = Office::start(2, args).await?;
    let show = office
        .create_show(&[("vip", 150_000, 10), ("r", 90_000, 90)])
        .await?;
    let mut rng = rand::rng();
    let front: Vec<i32> = (1..=10).collect();
    let wants: Vec<(i64, Vec<i32>)> = (1..=500)
        .map(|user| {
            let group = rand::random_range(1..=4);
            let seats: Vec<i32> = front.choose_multiple(&mut rng, group).copied().collect();
            (user, seats)
        })
        .collect();
    let answers = join_all(wants.iter().map(|(user, seats)| {
        let office = &office;
        async move {
            let answer = office.hold(*user as usize, show, *user, seats).await?;
            anyhow::Ok((*user, seats.clone(), answer))
        }
    }))
    .await
    .into_iter()
    .collect::<anyhow::Result<Vec<_>>>()?;

    for (user, _, answer) in &answers {
        let ok = answer.status == 201
            || (answer.status == 409 && answer.code() == "seats_unavailable")
            || (answer.status == 503 && answer.code() == "busy");
        assert!(ok, "user {user}: {answer:?}");
    }
    assert_eq!(
        office.double_sold(show).await?,
        Vec::<i32>::new(),
        "a seat was sold twice"
    );
    let live = office.live_holds(show).await?;
    let holders: BTreeMap<i64, Vec<i32>> = live.values().cloned().collect();
    assert_eq!(
        holders
            .keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        winners(&answers),
        "the users answered 201 are exactly the users holding seats"
    );
    for (user, seats, answer) in answers.iter().filter(|(_, _, a)| a.status == 201) {
        let mut asked = seats.clone();
        asked.sort_unstable();
        assert_eq!(
            holders[user], asked,
            "user {user} holds what they asked for"
        );
        let hold_id = answer.body["hold_id"].as_i64().unwrap();
        assert_eq!(live[&hold_id].0, *user, "the hold id answered is theirs");
    }
    assert!(!holders.is_empty(), "somebody got seats");
    // Every front seat taken points at the one live hold that lists it.
    let owners: Vec<(i32, Option<i64>)> = sqlx::query_as(
        "SELECT seat_no, hold_id FROM seats WHERE show_id = $1 AND seat_no <= 10 ORDER BY 1",
    )
    .bind(show)
    .fetch_all(&office.pool)
    .await?;
    for (seat, owner) in owners {
        let listed = live
            .iter()
            .find(|(_, (_, seats))| seats.contains(&seat))
            .map(|(id, _)| *id);
        assert_eq!(owner, listed, "seat {seat}");
    }
    office.stop().await
}

/// The guarantee, pessimistic: row locks in one global order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pessimistic_five_hundred_buyers_for_ten_front_seats_never_double_sell(
) -> anyhow::Result<()> {
    rush_for_front_seats(&["--strategy", "pessimistic"]).await
}

/// The guarantee, optimistic with retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn optimistic_retrying_five_hundred_buyers_for_ten_front_seats_never_double_sell(
) -> anyhow::Result<()> {
    rush_for_front_seats(&["--strategy", "optimistic", "--max-retries", "5"]).await
}

/// The guarantee, optimistic failing fast as the seed projects did.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn optimistic_failing_fast_five_hundred_buyers_for_ten_front_seats_never_double_sell(
) -> anyhow::Result<()> {
    rush_for_front_seats(&["--strategy", "optimistic", "--max-retries", "0"]).await
}

/// The guarantee, redis-lua: one script in Redis decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_lua_five_hundred_buyers_for_ten_front_seats_never_double_sell() -> anyhow::Result<()>
{
    rush_for_front_seats(&["--strategy", "redis-lua"]).await
}

/// All or nothing, with the taken seats named, the per-user limit, and a
/// release that puts seats back on sale; on both strategies.
#[tokio::test]
async fn a_hold_is_all_or_nothing_limited_per_user_and_released_seats_go_back_on_sale(
) -> anyhow::Result<()> {
    for strategy in ["pessimistic", "optimistic", "redis-lua"] {
        let office = Office::start(1, &["--strategy", strategy, "--max-seats", "4"]).await?;
        let show = office.create_show(&[("vip", 100, 10)]).await?;
        let first = office.hold(0, show, 1, &[3, 2]).await?;
        assert_eq!(first.status, 201, "{strategy}: {first:?}");
        assert_eq!(first.body["seats"], json!([2, 3]));
        assert_eq!(first.body["amount"], 200);

        let refused = office.hold(0, show, 2, &[1, 2]).await?;
        assert_eq!((refused.status, refused.code()), (409, "seats_unavailable"));
        assert_eq!(refused.body["seats"], json!([2]), "{strategy}");
        let map = office
            .send(0, Method::GET, &format!("/shows/{show}/seats"), None, &[])
            .await?;
        assert_eq!(
            map.body["seats"][0]["status"], "available",
            "seat 1 untouched"
        );
        assert_eq!(map.body["seats"][1]["status"], "held");

        let more = office.hold(0, show, 1, &[4, 5, 6]).await?;
        assert_eq!(
            (more.status, more.code()),
            (409, "hold_limit"),
            "{strategy}"
        );

        let hold = first.body["hold_id"].as_i64().unwrap();
        let other = office
            .send(
                0,
                Method::DELETE,
                &format!("/holds/{hold}"),
                Some(json!({"user_id": 2})),
                &[],
            )
            .await?;
        assert_eq!((other.status, other.code()), (403, "forbidden"));
        let released = office
            .send(
                0,
                Method::DELETE,
                &format!("/holds/{hold}"),
                Some(json!({"user_id": 1})),
                &[],
            )
            .await?;
        assert_eq!(
            (released.status, released.body["status"].clone()),
            (200, json!("released"))
        );
        let again = office.hold(0, show, 2, &[1, 2]).await?;
        assert_eq!(
            again.status, 201,
            "{strategy}: released seats are on sale: {again:?}"
        );

        let mine: Answer = office
            .send(0, Method::GET, "/users/1/reservations", None, &[])
            .await?;
        assert_eq!(mine.body["reservations"][0]["status"], "released");
        let shows = office.send(0, Method::GET, "/shows", None, &[]).await?;
        assert_eq!(shows.body["shows"][0]["available"], 8);
        office.stop().await?;
    }
    Ok(())
}

/// `/metrics` counts holds by outcome, as ticket-core's counters do on every
/// level: one created, one refused for a taken seat.
#[tokio::test]
async fn metrics_count_the_holds_created_and_refused() -> anyhow::Result<()> {
    let office = Office::start(1, &["--strategy", "pessimistic"]).await?;
    let show = office.create_show(&[("vip", 100, 4)]).await?;
    assert_eq!(office.hold(0, show, 1, &[1]).await?.status, 201);
    assert_eq!(office.hold(0, show, 2, &[1]).await?.status, 409);

    let text = office.send(0, Method::GET, "/metrics", None, &[]).await?;
    let text = text.body.as_str().unwrap_or_default().to_owned();
    let count = |event: &str| {
        ticket_core::metrics::samples(&text)
            .filter(|s| s.label("event") == Some(event))
            .map(|s| s.value)
            .sum::<f64>()
    };
    assert_eq!(count("hold_created"), 1.0, "{text}");
    assert_eq!(count("hold_refused"), 1.0, "{text}");
    office.stop().await?;
    Ok(())
}

//! The waiting room: one line per show across servers, admission strictly
//! in number order, never more than `--active-limit` admitted, tokens only
//! their user can use. Checked from the numbers and from Redis's own
//! counters, never from timing.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Answer, Office};
use futures::future::join_all;
use futures::stream::{self, StreamExt as _};

/// A joined user: their number and token.
#[derive(Debug, Clone)]
struct InLine {
    user: i64,
    token: String,
}

/// Joins `users` at once, spread over the servers; returns them by number.
async fn join_all_users(
    office: &Office,
    show: i64,
    users: impl Iterator<Item = i64>,
) -> anyhow::Result<BTreeMap<i64, InLine>> {
    let answers: Vec<(i64, anyhow::Result<Answer>)> = stream::iter(users)
        .map(|user| async move { (user, office.join(user as usize, show, user).await) })
        .buffer_unordered(256)
        .collect()
        .await;
    let mut line = BTreeMap::new();
    for (user, answer) in answers {
        let answer = answer?;
        anyhow::ensure!(answer.status == 201, "join of {user}: {answer:?}");
        let number = answer.body["number"].as_i64().unwrap();
        let token = answer.body["token"].as_str().unwrap().to_owned();
        let before = line.insert(number, InLine { user, token });
        anyhow::ensure!(before.is_none(), "number {number} handed out twice");
    }
    Ok(line)
}

/// The numbers whose holders a poll finds admitted, polling through every
/// server in turn.
async fn admitted_numbers(
    office: &Office,
    line: &BTreeMap<i64, InLine>,
) -> anyhow::Result<Vec<i64>> {
    let polls = join_all(line.iter().map(|(number, entry)| async move {
        (*number, office.poll(*number as usize, &entry.token).await)
    }))
    .await;
    let mut admitted = Vec::new();
    for (number, answer) in polls {
        let answer = answer?;
        anyhow::ensure!(answer.status == 200, "poll {number}: {answer:?}");
        if answer.body["status"] == "admitted" {
            admitted.push(number);
        }
    }
    Ok(admitted)
}

/// `entry` holds seat `seat` and pays for it through server `server`:
/// what finishes an admitted user.
async fn hold_and_pay(
    office: &Office,
    server: usize,
    show: i64,
    seat: i32,
    entry: &InLine,
) -> anyhow::Result<()> {
    office.charge(server, entry.user, 100, None).await?;
    let hold = office
        .hold_with(server, show, entry.user, &[seat], &entry.token)
        .await?;
    anyhow::ensure!(hold.status == 201, "hold: {hold:?}");
    let hold = hold.body["hold_id"].as_i64().unwrap();
    let paid = office
        .pay_with(server + 1, hold, entry.user, &entry.token)
        .await?;
    anyhow::ensure!(paid.status == 201, "pay: {paid:?}");
    Ok(())
}

/// Redis's record of a show's line: the admission log, and the counters
/// the admitting script keeps (`max_active`...), via `GET /shows/{id}/queue`.
async fn admission_log(office: &Office, show: i64) -> anyhow::Result<Vec<i64>> {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&office.pool)
        .await?;
    let client = redis::Client::open(office.redis_url.clone().unwrap())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    Ok(redis::cmd("LRANGE")
        .arg(format!("level5:{database}:q:{{show:{show}}}:log"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?)
}

/// 40 users join at once through two servers, with room for 5. The five
/// lowest numbers are admitted; each payment lets in exactly the next
/// number. At every step the admitted set is exactly the lowest numbers not
/// yet finished, and Redis's admission log is 1, 2, 3... 40.
#[tokio::test]
async fn two_servers_admit_strictly_in_arrival_number_order() -> anyhow::Result<()> {
    let office = Office::start(2, &["--queue", "on", "--active-limit", "5"]).await?;
    let show = office.create_show(&[("r", 100, 100)]).await?;
    let line = join_all_users(&office, show, 1..=40).await?;
    assert_eq!(
        line.keys().copied().collect::<Vec<_>>(),
        (1..=40).collect::<Vec<_>>()
    );

    let again = office.join(1, show, line[&7].user).await?;
    assert_eq!(
        again.status, 200,
        "a second join finds the entry: {again:?}"
    );
    assert_eq!(again.body["token"], line[&7].token.as_str());
    assert_eq!(again.body["number"], 7);

    for finished in 0..40i64 {
        let expected: Vec<i64> = (finished + 1..=(finished + 5).min(40)).collect();
        assert_eq!(
            admitted_numbers(&office, &line).await?,
            expected,
            "after {finished} paid"
        );
        let next = finished + 1;
        hold_and_pay(&office, next as usize, show, next as i32, &line[&next]).await?;
    }
    assert_eq!(
        admission_log(&office, show).await?,
        (1..=40).collect::<Vec<_>>()
    );
    office.stop().await
}

/// 2,000 users join at once through two servers, with room for 20, while
/// admitted users idle out after 5 s and every server ticks every 5 ms:
/// admissions and expiries churn under the joins. The largest number of
/// admitted users ever seen at once, recorded by the admitting script
/// itself, is exactly the limit, never above; admissions went in number
/// order. (Reaching the limit needs only the first 20 joins within 5 s.)
#[tokio::test]
async fn the_active_limit_holds_under_two_thousand_concurrent_joiners() -> anyhow::Result<()> {
    let args = [
        "--queue",
        "on",
        "--active-limit",
        "20",
        "--admitted-ttl-ms",
        "5000",
        "--sweep-interval-ms",
        "5",
    ];
    let office = Office::start(2, &args).await?;
    let show = office.create_show(&[("r", 100, 10)]).await?;
    let line = join_all_users(&office, show, 1..=2_000).await?;
    assert_eq!(line.len(), 2_000);
    assert_eq!(
        *line.keys().last().unwrap(),
        2_000,
        "one sequence: 1..=2000"
    );

    let stats = office
        .send(
            0,
            reqwest::Method::GET,
            &format!("/shows/{show}/queue"),
            None,
            &[],
        )
        .await?
        .body;
    assert_eq!(stats["joined"], 2_000);
    assert_eq!(stats["max_active"], 20, "{stats}");
    let log = admission_log(&office, show).await?;
    assert!(log.len() >= 20, "{}", log.len());
    assert_eq!(
        log,
        (1..=log.len() as i64).collect::<Vec<_>>(),
        "in number order"
    );
    office.stop().await
}

/// Waits until a poll of `token` says `status` (a bound, not a timing
/// assumption: the idle timeout in these tests is far shorter).
async fn wait_for_queue_status(office: &Office, token: &str, status: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = office.poll(0, token).await?;
        if answer.body["status"] == status {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{token} never became {status}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// No token, a forged one, another user's, another show's, a waiting
/// user's: each refused with its code, and nothing held.
#[tokio::test]
async fn forged_and_other_users_tokens_are_refused() -> anyhow::Result<()> {
    let args = ["--queue", "on", "--active-limit", "1"];
    let office = Office::start(2, &args).await?;
    let show = office.create_show(&[("r", 100, 10)]).await?;
    let other_show = office.create_show(&[("r", 100, 10)]).await?;
    let line = join_all_users(&office, show, [1, 2].into_iter()).await?;
    let (first, second) = (&line[&1], &line[&2]);
    let theirs = office.join(0, other_show, first.user).await?.body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = office.fingerprint().await?;

    let none = office.hold(0, show, first.user, &[1]).await?;
    assert_eq!(refused(none), (401, "token_required".into()));
    let forged = format!("{show}.1.{}", "0".repeat(32));
    for bad in [
        forged.as_str(),
        "nonsense",
        &first.token[..first.token.len() - 1],
    ] {
        let answer = office.hold_with(1, show, first.user, &[1], bad).await?;
        assert_eq!(refused(answer), (401, "token_invalid".into()), "{bad}");
    }
    let answer = office.poll(0, &forged).await?;
    assert_eq!(refused(answer), (401, "token_invalid".into()));
    let stolen = office
        .hold_with(0, show, second.user, &[1], &first.token)
        .await?;
    assert_eq!(
        refused(stolen),
        (401, "token_invalid".into()),
        "another user's token"
    );
    let elsewhere = office.hold_with(0, show, first.user, &[1], &theirs).await?;
    assert_eq!(
        refused(elsewhere),
        (401, "token_invalid".into()),
        "another show's token"
    );
    let waiting = office
        .hold_with(0, show, second.user, &[1], &second.token)
        .await?;
    assert_eq!(
        refused(waiting),
        (403, "not_admitted".into()),
        "still waiting"
    );
    assert_eq!(office.fingerprint().await?, before, "nothing was held");
    office.stop().await
}

fn refused(answer: Answer) -> (u16, String) {
    (answer.status, answer.code().to_owned())
}

/// An admitted user who idles past `--admitted-ttl-ms` loses the place to
/// the next, and their token is refused; a payment expires the payer's
/// token too.
#[tokio::test]
async fn idle_and_paid_tokens_expire_and_are_refused() -> anyhow::Result<()> {
    let args = [
        "--queue",
        "on",
        "--active-limit",
        "1",
        "--admitted-ttl-ms",
        "2000",
    ];
    let office = Office::start(2, &args).await?;
    let show = office.create_show(&[("r", 100, 10)]).await?;
    let line = join_all_users(&office, show, [1, 2].into_iter()).await?;
    let (first, second) = (&line[&1], &line[&2]);

    wait_for_queue_status(&office, &first.token, "expired").await?;
    let idle = office
        .hold_with(1, show, first.user, &[1], &first.token)
        .await?;
    assert_eq!(refused(idle), (403, "not_admitted".into()), "idled out");
    wait_for_queue_status(&office, &second.token, "admitted").await?;
    hold_and_pay(&office, 0, show, 2, second).await?;
    let poll = office.poll(1, &second.token).await?;
    assert_eq!(
        poll.body["status"], "expired",
        "a payment expires the token"
    );
    let after = office
        .hold_with(1, show, second.user, &[3], &second.token)
        .await?;
    assert_eq!(refused(after), (403, "not_admitted".into()), "a paid token");
    office.stop().await
}

//! The waiting room when things fail: the server that admitted last is
//! killed, or Redis restarts.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Answer, Office, ADMIN_TOKEN};
use ticket_core::services::{free_port, Redis};

/// Starts `level5` as a child process on the office's database and Redis;
/// returns it and its URL once it answers.
async fn spawn_child(
    office: &Office,
    args: &[&str],
) -> anyhow::Result<(tokio::process::Child, String)> {
    let port = free_port()?.to_string();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_level5"))
        .args(["--port", &port, "--database-url", &office.database_url])
        .args(["--redis-url", office.redis_url.as_deref().unwrap()])
        .args(["--admin-token", ADMIN_TOKEN])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while office
        .http
        .get(format!("{url}/livez"))
        .send()
        .await
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "the child server never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((child, url))
}

/// Polls `token` through `server` until its status is `status`.
async fn wait_for(
    office: &Office,
    server: usize,
    token: &str,
    status: &str,
) -> anyhow::Result<Answer> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = office.poll(server, token).await?;
        if answer.body["status"] == status {
            return Ok(answer);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{token} never became {status}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn token_of(answer: &Answer) -> String {
    answer.body["token"].as_str().unwrap().to_owned()
}

/// Ten users join through server A (a child process), which admits the
/// first three. A is killed (SIGKILL: no goodbye). Through server B the
/// three admitted pay, and the line keeps moving: all ten are admitted,
/// in number order, with nothing handed over from A.
#[tokio::test]
async fn killing_the_server_that_admitted_does_not_stop_the_line() -> anyhow::Result<()> {
    let args = ["--queue", "on", "--active-limit", "3"];
    let mut office = Office::start(1, &args).await?;
    let show = office.create_show(&[("r", 100, 20)]).await?;
    let (mut child, url) = spawn_child(&office, &args).await?;
    office.urls.push(url);
    let (b, a) = (0, 1);
    let mut tokens = Vec::new();
    for user in 1..=10 {
        let joined = office.join(a, show, user).await?;
        assert_eq!(
            (joined.status, joined.body["number"].as_i64()),
            (201, Some(user))
        );
        tokens.push(token_of(&joined));
    }
    for (i, token) in tokens.iter().enumerate() {
        let expected = if i < 3 { "admitted" } else { "waiting" };
        assert_eq!(
            office.poll(a, token).await?.body["status"],
            expected,
            "user {}",
            i + 1
        );
    }
    child.kill().await?;
    office.urls.truncate(1);

    for (i, token) in tokens.iter().enumerate() {
        let user = i as i64 + 1;
        wait_for(&office, b, token, "admitted").await?;
        office.charge(b, user, 100, None).await?;
        let hold = office
            .hold_with(b, show, user, &[user as i32], token)
            .await?;
        assert_eq!(hold.status, 201, "user {user}: {hold:?}");
        let paid = office
            .pay_with(b, hold.body["hold_id"].as_i64().unwrap(), user, token)
            .await?;
        assert_eq!(paid.status, 201, "user {user}: {paid:?}");
    }
    let stats = office
        .send(
            b,
            reqwest::Method::GET,
            &format!("/shows/{show}/queue"),
            None,
            &[],
        )
        .await?
        .body;
    assert_eq!(
        (stats["admitted"].as_i64(), stats["finished"].as_i64()),
        (Some(10), Some(10))
    );
    assert_eq!(stats["max_active"], 3);
    office.stop().await
}

/// Retries `request` while Redis is coming back (503), up to a bound.
async fn after_redis_is_back<F, Fut>(request: F) -> anyhow::Result<Answer>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Answer>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = request().await?;
        if answer.status != 503 || Instant::now() > deadline {
            return Ok(answer);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Redis without an append-only file keeps the line in memory only. Stop
/// it and start it again: while it is down, joining is 503; once it is
/// back, every old token is 401 `token_invalid` (for polls and holds
/// alike), and the line starts again from number 1: whoever rejoins first
/// is first. Holds already made are in PostgreSQL and stay.
#[tokio::test]
async fn a_redis_restart_without_aof_forgets_the_line_and_old_tokens_are_invalid(
) -> anyhow::Result<()> {
    let port = free_port()?;
    let redis = Redis::throwaway_on(port, &[])?;
    let url = redis.url().to_owned();
    let args = [
        "--queue",
        "on",
        "--active-limit",
        "1",
        "--redis-url",
        url.as_str(),
    ];
    let office = Office::start(2, &args).await?;
    let show = office.create_show(&[("r", 100, 10)]).await?;
    let first = office.join(0, show, 1).await?;
    let second = office.join(1, show, 2).await?;
    assert_eq!((first.status, second.status), (201, 201));
    office.charge(0, 1, 100, None).await?;
    let held = office
        .hold_with(0, show, 1, &[1], &token_of(&first))
        .await?;
    assert_eq!(held.status, 201, "{held:?}");

    drop(redis);
    let down = office.join(0, show, 3).await?;
    assert_eq!(
        (down.status, down.code()),
        (503, "unavailable"),
        "Redis is down: {down:?}"
    );
    let _redis = Redis::throwaway_on(port, &[])?;

    let second_token = token_of(&second);
    let poll = after_redis_is_back(|| office.poll(1, &second_token)).await?;
    assert_eq!(
        (poll.status, poll.code()),
        (401, "token_invalid"),
        "{poll:?}"
    );
    let hold = office
        .hold_with(0, show, 1, &[2], &token_of(&first))
        .await?;
    assert_eq!(
        (hold.status, hold.code()),
        (401, "token_invalid"),
        "{hold:?}"
    );
    let rejoined = office.join(1, show, 2).await?;
    assert_eq!(
        (rejoined.status, rejoined.body["number"].as_i64()),
        (201, Some(1))
    );
    assert_eq!(
        rejoined.body["status"], "admitted",
        "user 2 rejoined first, is first"
    );
    assert_eq!(
        office.live_holds(show).await?.len(),
        1,
        "the hold is in PostgreSQL"
    );
    office.stop().await
}

/// The same restart with an append-only file (`--appendonly yes`, the
/// file kept in one directory across both Redis processes): Redis replays
/// its log at start and the line survives. Old tokens still work, and the
/// numbers go on from where they were.
#[tokio::test]
async fn a_redis_restart_with_aof_keeps_the_line() -> anyhow::Result<()> {
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("level5-aof-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let dir_arg = dir.to_string_lossy().into_owned();
    let aof = ["--appendonly", "yes", "--dir", dir_arg.as_str()];
    let redis = Redis::throwaway_on(port, &aof)?;
    let url = redis.url().to_owned();
    let args = [
        "--queue",
        "on",
        "--active-limit",
        "1",
        "--redis-url",
        url.as_str(),
    ];
    let office = Office::start(1, &args).await?;
    let show = office.create_show(&[("r", 100, 10)]).await?;
    let first = office.join(0, show, 1).await?;
    let second = office.join(0, show, 2).await?;
    assert_eq!((first.status, second.status), (201, 201));

    drop(redis);
    let _redis = Redis::throwaway_on(port, &aof)?;
    let second_token = token_of(&second);
    let poll = after_redis_is_back(|| office.poll(0, &second_token)).await?;
    assert_eq!(
        (poll.status, poll.body["status"].as_str()),
        (200, Some("waiting")),
        "{poll:?}"
    );
    assert_eq!(poll.body["position"], 1);
    let third = office.join(0, show, 3).await?;
    assert_eq!(
        (third.status, third.body["number"].as_i64()),
        (201, Some(3))
    );
    office.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

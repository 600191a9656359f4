//! Level 3's servers through HTTP, against real PostgreSQL and Redis, judged
//! from the database.
//!
//! The rushes here are small (tens of buyers) so that every knob gets its
//! own test; the 1000-buyers-against-100-tickets rushes across two servers
//! belong to the load tool's tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser as _;
use reqwest::StatusCode;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use ticket_core::db::{self, DbTruth};
use ticket_core::metrics::sum_samples;
use ticket_core::services::{free_port, Postgres, Redis};
use ticket_core::verify::{judge, Verdict};
use ticket_core::{RunningServer, TicketId};

/// The ticket every test sells.
const TICKET: i64 = 1;

/// Level 3 servers on a fresh database and a given Redis.
struct Sale {
    servers: Vec<RunningServer>,
    pool: PgPool,
    http: reqwest::Client,
}

impl Sale {
    async fn start(
        servers: usize,
        redis_url: &str,
        args: &[&str],
        stock: i32,
    ) -> anyhow::Result<Sale> {
        let url = Postgres::shared()?.fresh_database().await?;
        let mut running = Vec::new();
        for _ in 0..servers {
            let argv = [
                "level3",
                "--port",
                "0",
                "--database-url",
                &url,
                "--redis-url",
                redis_url,
            ]
            .into_iter()
            .chain(args.iter().copied());
            running.push(level3::Cli::try_parse_from(argv)?.start().await?);
        }
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .context("the test's own pool")?;
        db::reset_ticket(
            &pool,
            TicketId::parse(TICKET.into())?,
            "Redis lock lesson",
            stock,
        )
        .await?;
        Ok(Sale {
            servers: running,
            pool,
            http: reqwest::Client::new(),
        })
    }

    /// One purchase: the status and the problem's `code`, if any.
    async fn buy(&self, server: usize, user: i64) -> anyhow::Result<(StatusCode, Option<String>)> {
        let response = self
            .http
            .post(format!(
                "{}/tickets/{TICKET}/orders",
                self.servers[server].url()
            ))
            .json(&serde_json::json!({ "user_id": user }))
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        Ok((status, body["code"].as_str().map(str::to_owned)))
    }

    /// `buyers` buyers at once, spread round-robin over the servers; a buyer
    /// answered 503 busy clicks again after a short pause. Returns the 201s.
    async fn rush(self: &Arc<Self>, buyers: i64) -> anyhow::Result<i64> {
        let mut handles = Vec::new();
        for user in 1..=buyers {
            let sale = self.clone();
            handles.push(tokio::spawn(async move {
                let server = usize::try_from(user).unwrap() % sale.servers.len();
                for _ in 0..200 {
                    match sale.buy(server, user).await? {
                        (StatusCode::CREATED, _) => return anyhow::Ok(1),
                        (StatusCode::SERVICE_UNAVAILABLE, Some(code)) if code == "busy" => {
                            tokio::time::sleep(Duration::from_millis(
                                10 + rand::random::<u64>() % 20,
                            ))
                            .await;
                        }
                        (StatusCode::CONFLICT, _) => return Ok(0),
                        (status, code) => {
                            anyhow::bail!("user {user}: unexpected {status} {code:?}")
                        }
                    }
                }
                anyhow::bail!("user {user} was busy 200 times in a row")
            }));
        }
        let mut created = 0;
        for handle in handles {
            created += handle.await??;
        }
        Ok(created)
    }

    async fn truth(&self) -> anyhow::Result<DbTruth> {
        db::truth(&self.pool, TicketId::parse(TICKET.into())?).await
    }

    async fn events(&self, event: &str) -> anyhow::Result<f64> {
        let mut total = 0.0;
        for server in &self.servers {
            let text = self
                .http
                .get(format!("{}/metrics", server.url()))
                .send()
                .await?
                .text()
                .await?;
            total += sum_samples(
                &text,
                "ticket_rush_strategy_events_total",
                Some(&format!("event=\"{event}\"")),
            );
        }
        Ok(total)
    }
}

fn shared_redis() -> String {
    Redis::shared()
        .expect("a Redis for the tests")
        .url()
        .to_owned()
}

/// Runs a rush and judges it from the database.
async fn rush_and_judge(
    servers: usize,
    args: &[&str],
    tickets: i32,
    buyers: i64,
) -> anyhow::Result<(Verdict, Arc<Sale>)> {
    let sale = Arc::new(Sale::start(servers, &shared_redis(), args, tickets).await?);
    let created = sale.rush(buyers).await?;
    let truth = sale.truth().await?;
    let judgement = judge(i64::from(tickets), buyers, created, &truth);
    eprintln!("{args:?}: {truth:?} created={created} -> {judgement:?}");
    Ok((judgement.verdict, sale))
}

/// Two `pubsub` servers sharing one database and one Redis sell exactly the
/// stock, with a 20 ms race window that makes Levels 0 and 1 oversell.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pubsub_on_two_servers_sells_exactly_the_stock() -> anyhow::Result<()> {
    let (verdict, _) = rush_and_judge(
        2,
        &["--strategy", "pubsub", "--think-time-ms", "20"],
        20,
        80,
    )
    .await?;
    assert_eq!(verdict, Verdict::Correct);
    Ok(())
}

/// The same for `spin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spin_on_two_servers_sells_exactly_the_stock() -> anyhow::Result<()> {
    let (verdict, _) =
        rush_and_judge(2, &["--strategy", "spin", "--think-time-ms", "20"], 20, 80).await?;
    assert_eq!(verdict, Verdict::Correct);
    Ok(())
}

/// The broken order (release, then COMMIT) lets the next buyer read the
/// stock before our sale lands: with fencing off, the ticket is oversold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn releasing_before_commit_without_fencing_oversells() -> anyhow::Result<()> {
    let (verdict, _) = rush_and_judge(
        2,
        &[
            "--think-time-ms",
            "20",
            "--release-before-commit",
            "--fencing",
            "off",
        ],
        10,
        60,
    )
    .await?;
    assert_eq!(verdict, Verdict::Oversold);
    Ok(())
}

/// The same broken order with fencing on: the sale that read the stock too
/// early finds the row changed under it, is refused (busy) and tried again,
/// and the ticket sells exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn releasing_before_commit_is_caught_by_fencing() -> anyhow::Result<()> {
    let (verdict, sale) = rush_and_judge(
        2,
        &[
            "--think-time-ms",
            "20",
            "--release-before-commit",
            "--fencing",
            "on",
        ],
        10,
        60,
    )
    .await?;
    assert_eq!(verdict, Verdict::Correct);
    assert!(
        sale.events("fence_refused").await? > 0.0,
        "the early reads were refused"
    );
    Ok(())
}

/// A holder that stalls past its fixed lease after its last check (the
/// simulated pause) oversells with fencing off, every time:
///
/// ```text
/// t=0     buyer 1 (server A) takes the lock (lease 1 s), sells, checks "still mine", stalls 1.5 s
/// t=1 s   its lease ends; buyer 2 (server B) takes the lock, reads stock 1 (A has not committed)
/// t=1.5 s A commits stock 0; B's UPDATE, queued behind A's row lock, writes stock 0 again
///         B checks "still mine" (its lease runs to t=2 s): yes; B stalls, then commits
/// ```
///
/// Two orders for one ticket. The margins are 500 ms on each side: B must
/// get the lock before A commits (pause > lease) and check before its own
/// lease ends (pause < two leases).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_stalled_past_its_lease_oversells_without_fencing() -> anyhow::Result<()> {
    let redis = shared_redis();
    let args = [
        "--lease-ms",
        "1000",
        "--pause-before-commit-ms",
        "1500",
        "--fencing",
        "off",
    ];
    let sale = Arc::new(Sale::start(2, &redis, &args, 1).await?);
    let first = {
        let sale = sale.clone();
        tokio::spawn(async move { sale.buy(0, 1).await })
    };
    // Buyer 2 comes once buyer 1 holds the ticket's lock.
    let observer =
        level3::lock::LockClient::new(&redis, "observer", level3::lock::LockOptions::default())?;
    let lock = observer.lock(&format!("ticket:{TICKET}"));
    while !lock.is_locked().await? {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = sale.buy(1, 2).await?;
    let first = first.await??;

    assert_eq!(first.0, StatusCode::CREATED, "{first:?}");
    assert_eq!(second.0, StatusCode::CREATED, "{second:?}");
    let truth = sale.truth().await?;
    assert_eq!((truth.orders, truth.stock), (2, 0), "two orders, one unit");
    assert_eq!(judge(1, 2, 2, &truth).verdict, Verdict::Oversold);
    Ok(())
}

/// ...and with fencing on, the database refuses the overtaken sales.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_stalled_past_its_lease_cannot_oversell_with_fencing() -> anyhow::Result<()> {
    let (verdict, sale) = rush_and_judge(
        2,
        &[
            "--lease-ms",
            "400",
            "--pause-before-commit-ms",
            "600",
            "--fencing",
            "on",
        ],
        5,
        30,
    )
    .await?;
    assert_eq!(verdict, Verdict::Correct);
    assert!(
        sale.events("fence_refused").await? > 0.0,
        "stale holders were refused"
    );
    Ok(())
}

/// A buyer who cannot get the ticket's lock within `--wait-ms` is answered
/// 503 busy (with Retry-After) instead of waiting on.
#[tokio::test(flavor = "multi_thread")]
async fn a_buyer_kept_waiting_past_wait_ms_is_told_busy() -> anyhow::Result<()> {
    let redis = shared_redis();
    let sale = Sale::start(1, &redis, &["--wait-ms", "200"], 5).await?;
    // Another server, in the middle of a slow sale, holds the ticket's lock.
    let other = level3::lock::LockClient::new(
        &redis,
        "another-server",
        level3::lock::LockOptions::default(),
    )?;
    let held = other
        .lock(&format!("ticket:{TICKET}"))
        .try_lock(Duration::from_secs(1), level3::lock::Lease::Watchdog)
        .await?;
    let started = Instant::now();
    let answer = sale.buy(0, 7).await?;
    let took = started.elapsed();
    assert_eq!(
        answer,
        (StatusCode::SERVICE_UNAVAILABLE, Some("busy".to_owned()))
    );
    assert!(
        took >= Duration::from_millis(180) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(sale.truth().await?.orders, 0);
    held.release().await?;
    assert_eq!(sale.buy(0, 7).await?.0, StatusCode::CREATED);
    assert_eq!(
        sale.buy(0, 7).await?,
        (StatusCode::CONFLICT, Some("already_purchased".to_owned())),
        "a second click by the same buyer spends no stock"
    );
    assert_eq!(sale.truth().await?.stock, 4);
    Ok(())
}

/// `/health` pings Redis: 200 while it answers, 503 while it is stopped. A
/// purchase meanwhile is 503 `unavailable` at once, nothing is written, and
/// sales resume as soon as Redis is back on the same port.
#[tokio::test(flavor = "multi_thread")]
async fn without_redis_health_and_purchases_answer_503_until_it_is_back() -> anyhow::Result<()> {
    let port = free_port()?;
    let redis = tokio::task::spawn_blocking(move || Redis::throwaway_on(port, &[])).await??;
    let url = redis.url().to_owned();
    let sale = Sale::start(1, &url, &[], 5).await?;
    let health = |sale: &Sale| {
        let request = sale
            .http
            .get(format!("{}/health", sale.servers[0].url()))
            .send();
        async move { anyhow::Ok(request.await?.status()) }
    };
    assert_eq!(health(&sale).await?, StatusCode::OK);
    assert_eq!(sale.buy(0, 1).await?.0, StatusCode::CREATED);

    tokio::task::spawn_blocking(move || drop(redis)).await?;
    assert_eq!(health(&sale).await?, StatusCode::SERVICE_UNAVAILABLE);
    let started = Instant::now();
    let answer = sale.buy(0, 2).await?;
    assert_eq!(
        answer,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("unavailable".to_owned())
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sale.truth().await?.orders, 1);

    let _redis = tokio::task::spawn_blocking(move || Redis::throwaway_on(port, &[])).await??;
    assert_eq!(sale.buy(0, 2).await?.0, StatusCode::CREATED);
    assert_eq!(health(&sale).await?, StatusCode::OK);
    let truth = sale.truth().await?;
    assert_eq!((truth.orders, truth.stock), (2, 3));
    Ok(())
}

/// Without `--redis-url` (and no REDIS_URL), the server starts a private
/// throwaway Redis and works on its own.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_redis_url_a_lone_server_starts_its_own_redis() -> anyhow::Result<()> {
    let url = Postgres::shared()?.fresh_database().await?;
    let mut cli = level3::Cli::try_parse_from(["level3", "--port", "0", "--database-url", &url])?;
    // As if neither flag nor REDIS_URL were given, even when the person
    // running the tests has REDIS_URL set (clap would have read it).
    cli.redis_url = None;
    let server = cli.start().await?;
    let http = reqwest::Client::new();
    let health = http.get(format!("{}/health", server.url())).send().await?;
    assert_eq!(health.status(), StatusCode::OK);
    let bought = http
        .post(format!("{}/tickets/1/orders", server.url()))
        .json(&serde_json::json!({ "user_id": 1 }))
        .send()
        .await?;
    assert_eq!(bought.status(), StatusCode::CREATED);
    server.stop().await
}

/// A server refuses to start on a Redis that may evict lock keys
/// (`maxmemory-policy volatile-lru` here: under memory pressure it would
/// drop keys with a lease first, which is every held lock), and says what
/// to set.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_refuses_a_redis_that_may_evict_lock_keys() -> anyhow::Result<()> {
    let redis = tokio::task::spawn_blocking(|| {
        Redis::throwaway_on(free_port()?, &["--maxmemory-policy", "volatile-lru"])
    })
    .await??;
    let url = Postgres::shared()?.fresh_database().await?;
    let started = level3::Cli::try_parse_from([
        "level3",
        "--port",
        "0",
        "--database-url",
        &url,
        "--redis-url",
        redis.url(),
    ])?
    .start()
    .await;
    let err = started.err().expect("the server must not start");
    let text = format!("{err:#}");
    assert!(
        text.contains("volatile-lru") && text.contains("maxmemory-policy noeviction"),
        "{text}"
    );
    Ok(())
}

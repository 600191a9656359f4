//! What every Level 5 test needs: servers on a fresh database, an HTTP
//! client that speaks the box-office API, and questions asked of the
//! database (the truth), never of the HTTP answers alone.

// Each test binary uses a different part of this helper module.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser as _;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row as _};
use ticket_core::services::{Postgres, Redis};

/// The admin token the test servers are started with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Level 5 servers sharing one fresh database, and the test's own pool.
pub struct Office {
    pub servers: Vec<level5::BoxOffice>,
    /// The fresh database every server uses.
    pub database_url: String,
    /// The Redis the servers were given, if any.
    pub redis_url: Option<String>,
    pub urls: Vec<String>,
    pub pool: PgPool,
    pub http: reqwest::Client,
}

/// An HTTP answer: status and JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// The problem's `code`, or "" for a success.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

impl Office {
    /// Starts `servers` servers with `args` (plus port 0 and the admin
    /// token) on a fresh database. Unless `args` says `--queue on`, the
    /// waiting room is off: those tests are about something else.
    pub async fn start(servers: usize, args: &[&str]) -> anyhow::Result<Office> {
        Self::start_with(servers, args, true).await
    }

    /// Like [`Office::start`], with or without an admin token.
    pub async fn start_with(servers: usize, args: &[&str], admin: bool) -> anyhow::Result<Office> {
        let url = Postgres::shared()?.fresh_database().await?;
        // redis-lua and the waiting room need Redis: one throwaway per test
        // binary, shared (keys are prefixed with the database's name).
        let queued = args.windows(2).any(|w| w == ["--queue", "on"]);
        let redis = if args.contains(&"--redis-url") {
            None
        } else if args.contains(&"redis-lua") || queued {
            Some(Redis::shared()?.url().to_owned())
        } else {
            None
        };
        let queue_off: &[&str] = if queued { &[] } else { &["--queue", "off"] };
        let redis_args = redis.iter().flat_map(|url| ["--redis-url", url.as_str()]);
        let mut running = Vec::new();
        for _ in 0..servers {
            let argv = ["level5", "--port", "0", "--database-url", &url]
                .into_iter()
                .chain(queue_off.iter().copied())
                .chain(
                    admin
                        .then_some(["--admin-token", ADMIN_TOKEN])
                        .into_iter()
                        .flatten(),
                )
                .chain(redis_args.clone())
                .chain(args.iter().copied());
            running.push(level5::Cli::try_parse_from(argv)?.start().await?);
        }
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .context("the test's own pool")?;
        let redis_url = redis.clone().or_else(|| {
            args.iter()
                .position(|a| *a == "--redis-url")
                .and_then(|i| args.get(i + 1))
                .map(|u| (*u).to_owned())
        });
        Ok(Office {
            database_url: url.clone(),
            redis_url,
            urls: running.iter().map(level5::BoxOffice::url).collect(),
            servers: running,
            pool,
            http: reqwest::Client::new(),
        })
    }

    /// Stops every server.
    pub async fn stop(self) -> anyhow::Result<()> {
        for server in self.servers {
            server.stop().await?;
        }
        Ok(())
    }

    /// Sends a request to server `server` and reads the JSON answer.
    pub async fn send(
        &self,
        server: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.urls[server % self.urls.len()]);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, body })
    }

    /// Creates a show through the admin API; returns its id.
    pub async fn create_show(&self, grades: &[(&str, i64, i64)]) -> anyhow::Result<i64> {
        let grades: Vec<Value> = grades
            .iter()
            .map(|(grade, price, seats)| json!({"grade": grade, "price": price, "seats": seats}))
            .collect();
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        let answer = self
            .send(
                0,
                reqwest::Method::POST,
                "/admin/shows",
                Some(json!({"title": "Test night", "starts_at": "2026-12-24T19:00:00+09:00", "grades": grades})),
                &[("authorization", &bearer)],
            )
            .await?;
        anyhow::ensure!(answer.status == 201, "create show: {answer:?}");
        answer.body["show_id"].as_i64().context("show_id")
    }

    /// `user` holds `seats` of `show` through server `server`.
    pub async fn hold(
        &self,
        server: usize,
        show: i64,
        user: i64,
        seats: &[i32],
    ) -> anyhow::Result<Answer> {
        self.send(
            server,
            reqwest::Method::POST,
            &format!("/shows/{show}/holds"),
            Some(json!({"user_id": user, "seats": seats})),
            &[],
        )
        .await
    }

    /// `user` joins the line for `show` through server `server`.
    pub async fn join(&self, server: usize, show: i64, user: i64) -> anyhow::Result<Answer> {
        self.send(
            server,
            reqwest::Method::POST,
            "/queue",
            Some(json!({"user_id": user, "show_id": show})),
            &[],
        )
        .await
    }

    /// Polls `token` through server `server`.
    pub async fn poll(&self, server: usize, token: &str) -> anyhow::Result<Answer> {
        self.send(
            server,
            reqwest::Method::GET,
            &format!("/queue/{token}"),
            None,
            &[],
        )
        .await
    }

    /// `user` holds `seats` of `show` with a `Queue-Token`.
    pub async fn hold_with(
        &self,
        server: usize,
        show: i64,
        user: i64,
        seats: &[i32],
        token: &str,
    ) -> anyhow::Result<Answer> {
        self.send(
            server,
            reqwest::Method::POST,
            &format!("/shows/{show}/holds"),
            Some(json!({"user_id": user, "seats": seats})),
            &[("queue-token", token)],
        )
        .await
    }

    /// `user` pays `hold` with a `Queue-Token`.
    pub async fn pay_with(
        &self,
        server: usize,
        hold: i64,
        user: i64,
        token: &str,
    ) -> anyhow::Result<Answer> {
        self.send(
            server,
            reqwest::Method::POST,
            &format!("/holds/{hold}/payments"),
            Some(json!({"user_id": user})),
            &[("queue-token", token)],
        )
        .await
    }

    /// `user` pays `hold` through server `server`.
    pub async fn pay(&self, server: usize, hold: i64, user: i64) -> anyhow::Result<Answer> {
        self.send(
            server,
            reqwest::Method::POST,
            &format!("/holds/{hold}/payments"),
            Some(json!({"user_id": user})),
            &[],
        )
        .await
    }

    /// Charges `amount` to `user`'s wallet, with an optional key.
    pub async fn charge(
        &self,
        server: usize,
        user: i64,
        amount: i64,
        key: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
        self.send(
            server,
            reqwest::Method::POST,
            &format!("/wallets/{user}/charges"),
            Some(json!({"amount": amount})),
            &headers,
        )
        .await
    }

    /// Seats of `show` listed by more than one hold that is `held` or `paid`.
    pub async fn double_sold(&self, show: i64) -> anyhow::Result<Vec<i32>> {
        Ok(sqlx::query_scalar(
            "SELECT hs.seat_no FROM hold_seats hs JOIN holds h ON h.id = hs.hold_id \
             WHERE hs.show_id = $1 AND h.status IN ('held', 'paid') \
             GROUP BY hs.seat_no HAVING count(*) > 1 ORDER BY hs.seat_no",
        )
        .bind(show)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Who holds what, from the database: hold id -> (user, seats), for
    /// holds that are `held` or `paid`.
    pub async fn live_holds(&self, show: i64) -> anyhow::Result<BTreeMap<i64, (i64, Vec<i32>)>> {
        let rows = sqlx::query(
            "SELECT h.id, h.user_id, array_agg(hs.seat_no ORDER BY hs.seat_no) AS seats \
             FROM holds h JOIN hold_seats hs ON hs.hold_id = h.id \
             WHERE h.show_id = $1 AND h.status IN ('held', 'paid') GROUP BY h.id",
        )
        .bind(show)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("id"), (r.get("user_id"), r.get("seats"))))
            .collect())
    }

    /// Users whose money does not add up: sum(charges) != balance + sum(payments).
    pub async fn money_not_conserved(&self) -> anyhow::Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "WITH users AS (SELECT user_id FROM wallet_charges UNION SELECT user_id FROM wallets \
                            UNION SELECT user_id FROM payments) \
             SELECT u.user_id FROM users u \
             WHERE (SELECT coalesce(sum(amount), 0) FROM wallet_charges c WHERE c.user_id = u.user_id) \
                <> (SELECT coalesce(sum(balance), 0) FROM wallets w WHERE w.user_id = u.user_id) \
                 + (SELECT coalesce(sum(amount), 0) FROM payments p WHERE p.user_id = u.user_id) \
             ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// A hold's status in the database.
    pub async fn status_of(&self, hold: i64) -> anyhow::Result<String> {
        Ok(sqlx::query_scalar("SELECT status FROM holds WHERE id = $1")
            .bind(hold)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Waits until `hold` has `status`, polling the database, for at most
    /// `limit` (a bound, not a timing assumption).
    pub async fn wait_for_status(
        &self,
        hold: i64,
        status: &str,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if self.status_of(hold).await? == status {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "hold {hold} never became {status}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Row counts of every box-office table and the sum of all balances.
    pub async fn fingerprint(&self) -> anyhow::Result<Vec<i64>> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM shows), (SELECT count(*) FROM seats), \
                    (SELECT count(*) FROM holds), (SELECT count(*) FROM hold_seats), \
                    (SELECT count(*) FROM wallets), (SELECT count(*) FROM wallet_charges), \
                    (SELECT count(*) FROM payments), \
                    (SELECT coalesce(sum(balance), 0)::bigint FROM wallets), \
                    (SELECT count(*) FROM holds WHERE status <> 'held'), \
                    (SELECT count(*) FROM seats WHERE hold_id IS NOT NULL)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((0..10).map(|i| row.get::<i64, _>(i)).collect())
    }
}

/// The users in a set of answers that were 201, by user id.
pub fn winners(answers: &[(i64, Vec<i32>, Answer)]) -> BTreeSet<i64> {
    answers
        .iter()
        .filter(|(_, _, a)| a.status == 201)
        .map(|(user, _, _)| *user)
        .collect()
}

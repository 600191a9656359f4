//! Exercise 8's rush: every buyer double-clicks. Each buyer sends its
//! purchase twice at the same instant with one `Idempotency-Key` (the two
//! clicks reach different servers, as behind a load balancer), then a third
//! time after both were answered. Correct means the database's usual
//! verdict is correct *and* every key got the same answer, status and body,
//! on all three clicks. A `503 busy` is not an answer but "try again": the
//! click is sent again, as a buyer's app would.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ticket_core::verify::{judge_run, Evidence, ExpectedOrders, Identities};
use ticket_core::{db, TicketId};
use tokio::sync::Barrier;

use super::judge::{RushSize, Targets};
use crate::client::{buyer_client_waiting, open_database, raise_fd_limit};
use crate::reset::reset_ticket;
use crate::rush::Report;

/// Clicks per buyer: two at once, and one after both were answered.
pub const CLICKS: usize = 3;

/// One answer as the buyer saw it: the status, and the body (empty for a
/// request that got no answer, status 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status; 0 when there was no answer (a timeout, a refused
    /// connection).
    pub status: u16,
    /// The body, byte for byte.
    pub body: String,
}

impl Answer {
    /// The answer in a learner's words: `201 (order 12)`, `409 sold_out`.
    pub fn words(&self) -> String {
        if self.status == 0 {
            return format!("no answer ({})", self.body);
        }
        let json: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_default();
        match (json.get("order_id"), json.get("code")) {
            (Some(order), _) => format!("{} (order {order})", self.status),
            (None, Some(serde_json::Value::String(code))) => format!("{} {code}", self.status),
            _ => self.status.to_string(),
        }
    }
}

/// What one buyer was told, click by click.
#[derive(Debug, Clone)]
pub struct Clicks {
    /// The buyer's number in the rush, from 1 (the learner's "buyer 17").
    pub buyer: usize,
    /// Its user id.
    pub user_id: i64,
    /// The answers, in click order (the twins first, then the third).
    pub answers: Vec<Answer>,
}

impl Clicks {
    /// Whether every click got the same answer.
    pub fn agree(&self) -> bool {
        self.answers.windows(2).all(|pair| pair[0] == pair[1])
    }
}

/// Sends the double-click rush at `targets` and judges it from the
/// database; the report counts each buyer by its last answer.
pub async fn rush_twins(
    targets: &Targets,
    size: RushSize,
) -> anyhow::Result<(Report, Vec<Clicks>)> {
    anyhow::ensure!(!targets.urls.is_empty(), "no servers to send buyers to");
    raise_fd_limit();
    let ticket = TicketId::parse(i128::from(targets.ticket_id))?;
    let pool = open_database(&targets.database_url).await?;
    reset_ticket(&pool, None, ticket, "Rush concert", size.tickets).await?;
    let run = rand::random::<u32>();
    let base: i64 = rand::random_range(1..1_000_000_000) * 1_000_000;
    let barrier = Arc::new(Barrier::new(size.buyers));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..size.buyers {
        let servers = &targets.urls;
        let urls = [0, 1].map(|twin| {
            let server = &servers[(index + twin) % servers.len()];
            format!("{server}/tickets/{}/orders", targets.ticket_id)
        });
        let user_id = base + 1 + index as i64;
        let key = format!("ex8-{run:08x}-{index}");
        let barrier = barrier.clone();
        tasks.spawn(async move {
            let client = buyer_client_waiting(Duration::from_secs(60));
            barrier.wait().await;
            let client = match client {
                Ok(client) => client,
                Err(err) => {
                    let failed = Answer {
                        status: 0,
                        body: format!("{err}"),
                    };
                    return (index, user_id, vec![failed; CLICKS]);
                }
            };
            let (first, second) = tokio::join!(
                click(&client, &urls[0], user_id, &key),
                click(&client, &urls[1], user_id, &key)
            );
            let third = click(&client, &urls[0], user_id, &key).await;
            (index, user_id, vec![first, second, third])
        });
    }
    let mut clicks = Vec::with_capacity(size.buyers);
    let collect = async {
        while let Some(joined) = tasks.join_next().await {
            let (index, user_id, answers) = joined.context("a buyer task panicked")?;
            clicks.push(Clicks {
                buyer: index + 1,
                user_id,
                answers,
            });
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(180), collect)
        .await
        .context("the rush did not finish within 180 s")??;
    clicks.sort_by_key(|c| c.buyer);
    let report = judged(&pool, ticket, targets, size, &clicks).await?;
    pool.close().await;
    Ok((report, clicks))
}

/// Most tries of one click: a `503 busy` means "try again", and the
/// buyer's app does, with the same key, as the load tool's buyers do.
const MAX_TRIES: u32 = 100;

/// One click: the purchase with the buyer's key, tried again while the
/// answer is `503 busy`. The click's answer is its last one.
async fn click(client: &reqwest::Client, url: &str, user_id: i64, key: &str) -> Answer {
    let mut answer = try_once(client, url, user_id, key).await;
    for _ in 1..MAX_TRIES {
        if answer.status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rand::random_range(10..=50))).await;
        answer = try_once(client, url, user_id, key).await;
    }
    answer
}

/// One request of a click.
async fn try_once(client: &reqwest::Client, url: &str, user_id: i64, key: &str) -> Answer {
    let sent = client
        .post(url)
        .header("Idempotency-Key", key)
        .json(&serde_json::json!({ "user_id": user_id }))
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            Answer { status, body }
        }
        Err(err) => Answer {
            status: 0,
            body: format!("{err}"),
        },
    }
}

/// The database's verdict on the rush, and the report `explain` prints.
async fn judged(
    pool: &sqlx::PgPool,
    ticket: TicketId,
    targets: &Targets,
    size: RushSize,
    clicks: &[Clicks],
) -> anyhow::Result<Report> {
    let truth = db::truth(pool, ticket).await?;
    let holders = db::order_holders(pool, ticket).await?;
    // One entry per buyer told 201 (a replayed 201 is the same sale).
    let answered: Vec<i64> = clicks
        .iter()
        .filter(|c| c.answers.iter().any(|a| a.status == 201))
        .map(|c| c.user_id)
        .collect();
    let failed: Vec<i64> = clicks
        .iter()
        .filter(|c| c.answers.iter().any(|a| a.status == 0 || a.status >= 500))
        .map(|c| c.user_id)
        .collect();
    let last = |status: u16| {
        clicks
            .iter()
            .filter(|c| c.answers.last().map(|a| a.status) == Some(status))
            .count() as u64
    };
    let count = |pred: &dyn Fn(u16) -> bool| {
        clicks
            .iter()
            .flat_map(|c| &c.answers)
            .filter(|a| pred(a.status))
            .count() as u64
    };
    let errors = count(&|s| s == 0 || (s >= 500 && s != 503));
    let judgement = judge_run(&Evidence {
        tickets: i64::from(size.tickets),
        expected: ExpectedOrders::SellOut {
            distinct_buyers: clicks.len() as i64,
        },
        identities: Identities::Known {
            answered: &answered,
            failed: &failed,
            holders: &holders,
        },
        errors,
        truth: &truth,
    });
    let sold_out = clicks
        .iter()
        .filter(|c| {
            c.answers
                .last()
                .is_some_and(|a| a.words().ends_with("sold_out"))
        })
        .count() as u64;
    Ok(Report {
        servers: targets.urls.len(),
        buyers: clicks.len(),
        tickets: size.tickets,
        ticket_id: targets.ticket_id,
        distinct_users: clicks.len(),
        succeeded: last(201),
        sold_out,
        already_purchased: last(409).saturating_sub(sold_out),
        busy: last(503),
        errors,
        attempts: count(&|_| true),
        server_errors: count(&|s| s >= 500 && s != 503),
        db_orders: truth.orders,
        db_stock: truth.stock,
        db_total: truth.total,
        ..Report::judged(judgement)
    })
}

/// The buyers whose clicks were told different things, in a learner's
/// words: "buyer 17 clicked twice with the same key and was told 201 (order
/// 5), then 409 already_purchased". Empty when every key agreed.
pub fn disagreements(clicks: &[Clicks]) -> Vec<String> {
    let wrong: Vec<&Clicks> = clicks.iter().filter(|c| !c.agree()).collect();
    if wrong.is_empty() {
        return Vec::new();
    }
    let mut found = vec![format!(
        "{} of {} buyers got different answers to the same Idempotency-Key.",
        wrong.len(),
        clicks.len()
    )];
    for c in wrong.iter().take(3) {
        let told: Vec<String> = c.answers.iter().map(Answer::words).collect();
        found.push(format!(
            "Buyer {} (user {}) clicked twice with the same key and was told {} then {}; \
             clicking a third time, {}.",
            c.buyer, c.user_id, told[0], told[1], told[2]
        ));
    }
    found
}

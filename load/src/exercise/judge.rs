//! Judging an exercise: one rush at the learner's servers, the database's
//! verdict, and what went wrong told in a learner's words.

use std::time::Duration;

use anyhow::Context as _;
use ticket_core::Verdict;

use super::catalogue::ExerciseInfo;
use crate::rush::{open_database, rush, Report, RushPlan};

/// How big a check's rush is.
#[derive(Debug, Clone, Copy)]
pub struct RushSize {
    /// Buyers released at once.
    pub buyers: usize,
    /// Tickets on sale.
    pub tickets: i32,
}

impl RushSize {
    /// The headline rush: 1000 buyers, 100 tickets.
    pub const FULL: RushSize = RushSize {
        buyers: 1000,
        tickets: 100,
    };

    /// A smaller rush for the exercises whose buyers spin on a Redis lock
    /// (6 and 7): 300 buyers, 30 tickets.
    pub const SPINNING: RushSize = RushSize {
        buyers: 300,
        tickets: 30,
    };
}

/// Where the servers under test are, and what they share.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Their base URLs.
    pub urls: Vec<String>,
    /// The database they share.
    pub database_url: String,
    /// The Redis they share, for the exercises that use one.
    pub redis_url: Option<String>,
    /// The ticket to rush (tests give each exercise its own).
    pub ticket_id: i64,
}

/// The outcome of a check.
#[derive(Debug, Clone)]
pub struct Judgement {
    /// Whether the exercise is solved.
    pub passed: bool,
    /// The rush's report, as `load run` would print it.
    pub report: Report,
    /// What went wrong, one sentence each, in a learner's words (empty when
    /// it passed).
    pub findings: Vec<String>,
}

/// Rushes `targets` with `size` and judges the exercise `info` from the
/// database.
pub async fn judge(
    info: &ExerciseInfo,
    targets: &Targets,
    size: RushSize,
) -> anyhow::Result<Judgement> {
    if let Some(redis_url) = &targets.redis_url {
        clear_redis(redis_url, &info.redis_keys(targets.ticket_id)).await?;
    }
    if info.double_click {
        let (report, clicks) = super::twins::rush_twins(targets, size).await?;
        let mut findings = findings(info, &report);
        findings.extend(super::twins::disagreements(&clicks));
        return Ok(Judgement {
            passed: findings.is_empty(),
            report,
            findings,
        });
    }
    let distinct_users = info
        .people_as_tickets
        .then(|| usize::try_from(size.tickets).unwrap_or(1).max(1));
    let plan = RushPlan {
        ticket_id: targets.ticket_id,
        tickets: size.tickets,
        buyers: size.buyers,
        distinct_users,
        timeout: Duration::from_secs(180),
        ..RushPlan::new(targets.urls.clone(), targets.database_url.clone())
    };
    let report = rush(&plan).await?;
    let mut findings = findings(info, &report);
    if report.verdict == Verdict::Oversold {
        let extra = buyers_beyond_stock(&targets.database_url, targets.ticket_id, size.tickets)
            .await
            .unwrap_or_default();
        if !extra.is_empty() {
            findings.push(format!(
                "Buyers who got a ticket that did not exist (the orders after number {}): {}{}.",
                size.tickets,
                extra
                    .iter()
                    .take(5)
                    .map(|user| format!("user {user}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if extra.len() > 5 {
                    format!(" and {} more", extra.len() - 5)
                } else {
                    String::new()
                }
            ));
        }
    }
    Ok(Judgement {
        passed: findings.is_empty(),
        report,
        findings,
    })
}

/// What went wrong in `report`, in a learner's words; empty when nothing did.
pub fn findings(info: &ExerciseInfo, report: &Report) -> Vec<String> {
    let mut found = Vec::new();
    let (orders, tickets, stock) = (report.db_orders, report.tickets, report.db_stock);
    match report.verdict {
        Verdict::Correct => {}
        Verdict::Oversold => found.push(format!(
            "Oversold: {orders} orders for {tickets} tickets, {} tickets that do not exist. \
             The stock column still reads {stock}, so {} sales wrote over each other \
             (lost updates).",
            report.oversold,
            (i64::from(tickets) - i64::from(stock) - orders).unsigned_abs(),
        )),
        Verdict::Undersold => found.push(format!(
            "Undersold: only {orders} of {tickets} tickets were sold, yet there were buyers \
             enough for all of them (the stock column reads {stock}). Units were lost without \
             a buyer."
        )),
        Verdict::Inconsistent => found.push(format!(
            "Inconsistent: {orders} orders, stock {stock} of {tickets}; the database disagrees \
             with itself or with the answers: {}.",
            report.problems.join("; ")
        )),
        Verdict::Errors => {}
    }
    if report.server_errors > 0 {
        let sample = report
            .error_kinds
            .get(crate::failures::kind::SERVER_ERROR)
            .map(|k| k.sample.clone())
            .unwrap_or_default();
        found.push(format!(
            "{} answers were server errors (500): a buyer sees a crash, not \"sold out\" or \
             \"try again\". The first one said: {sample}",
            report.server_errors
        ));
    } else if report.errors > 0 {
        found.push(format!(
            "{} buyers got no proper answer (a timeout, a refused connection): {:?}",
            report.errors,
            report.error_kinds.keys().collect::<Vec<_>>()
        ));
    }
    if info.must_give_up && report.busy == 0 && found.is_empty() {
        found.push(
            "Nobody was ever answered 503 busy: under this crowd a bounded retry must give up \
             now and then. Does your loop stop after MAX_RETRIES?"
                .to_owned(),
        );
    }
    found
}

/// The buyers whose orders came after the last real ticket, in order.
async fn buyers_beyond_stock(
    database_url: &str,
    ticket: i64,
    tickets: i32,
) -> anyhow::Result<Vec<i64>> {
    let pool = open_database(database_url).await?;
    let users = sqlx::query_scalar(
        "SELECT user_id FROM ticket_orders WHERE ticket_id = $1 ORDER BY id OFFSET $2",
    )
    .bind(ticket)
    .bind(i64::from(tickets))
    .fetch_all(&pool)
    .await
    .context("read the orders beyond the stock")?;
    pool.close().await;
    Ok(users)
}

/// Deletes `keys` from Redis, so a rush starts from nothing.
async fn clear_redis(redis_url: &str, keys: &[String]) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url).context("bad Redis URL")?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("cannot reach Redis")?;
    let _: i64 = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .context("clear the exercise's Redis keys")?;
    Ok(())
}

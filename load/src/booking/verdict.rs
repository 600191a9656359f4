//! The verdict, from the database: SQL over `shows`, `seats`, `holds`,
//! `hold_seats`, `wallets`, `wallet_charges` and `payments`, compared with
//! what the users were told, by identity (which hold, which user), never
//! by counts alone.
//!
//! | check | the question asked of the database |
//! | --- | --- |
//! | double-sold | does any seat belong to two holds that are `held` or `paid`? |
//! | money | for every user: sum(charges) = balance + sum(payments)? |
//! | paid holds | does each `paid` hold own its seats and have exactly one payment of its amount, and is the set of paid holds the set users were answered 201 for? |
//! | expiry | once the sweepers had time, is every hold a user walked away from `expired`, no hold still `held`, and every seat of an expired hold free of it? |

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row as _};

use super::record::{HeldSeats, Outcome};

/// The money of the run's users, from the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// sum(wallet_charges.amount).
    pub charged: i64,
    /// sum(wallets.balance).
    pub balances: i64,
    /// sum(payments.amount).
    pub paid: i64,
    /// Whether charged = balance + paid held for *every* user.
    pub conserved: bool,
    /// Users for whom it did not.
    pub users_not_conserved: i64,
}

/// What the database holds after the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbTruth {
    /// Holds made for the show.
    pub holds: i64,
    /// Payments for its holds.
    pub payments: i64,
    /// Holds that expired.
    pub expired_holds: i64,
    /// Holds released by their holder.
    pub released_holds: i64,
    /// Holds still `held` after the wait for the sweepers.
    pub held_holds: i64,
    /// Seats owned by a paid hold.
    pub seats_sold: i64,
    /// Seats of expired holds that the expired hold no longer owns.
    pub seats_available_after_expiry: i64,
    /// Seats of expired holds the expired hold still owns (must be 0).
    pub seats_stuck_in_expired_holds: i64,
    /// Seats in two holds that are `held` or `paid`.
    pub double_sold_seats: i64,
    /// Paid holds without exactly one payment of their amount, or not
    /// owning all their seats.
    pub paid_holds_inconsistent: i64,
    /// Payments of holds that are not `paid`.
    pub payments_of_unpaid_holds: i64,
    /// Holds users walked away from that are not `expired`.
    pub abandoned_not_expired: i64,
    /// Holds answered "paid" that the database does not have paid, plus
    /// paid holds no user was answered 201 for.
    pub paid_identity_mismatches: i64,
    /// The money.
    pub money: Money,
}

/// Waits until no hold of the show is `held` (the sweepers expired the
/// abandoned ones), at most until the latest `expires_at` plus `grace`.
/// Returns how long it waited.
pub async fn wait_for_expiry(
    pool: &PgPool,
    show_id: i64,
    grace: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let row = sqlx::query(
            "SELECT count(*) AS held, \
                    coalesce(extract(epoch FROM max(expires_at) - clock_timestamp()), 0)::float8 AS left_s \
             FROM holds WHERE show_id = $1 AND status = 'held'",
        )
        .bind(show_id)
        .fetch_one(pool)
        .await?;
        let held: i64 = row.get("held");
        let left_s: f64 = row.get("left_s");
        if held == 0 || left_s < -grace.as_secs_f64() {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks the database every question of the verdict.
pub async fn truth(
    pool: &PgPool,
    show_id: i64,
    users: (i64, i64),
    told: &[HeldSeats],
) -> anyhow::Result<DbTruth> {
    let counts = sqlx::query(
        "SELECT count(*) AS holds, \
                count(*) FILTER (WHERE status = 'expired') AS expired, \
                count(*) FILTER (WHERE status = 'released') AS released, \
                count(*) FILTER (WHERE status = 'held') AS held, \
                (SELECT count(*) FROM payments p JOIN holds ph ON ph.id = p.hold_id \
                  WHERE ph.show_id = $1) AS payments, \
                (SELECT count(*) FROM payments p JOIN holds ph ON ph.id = p.hold_id \
                  WHERE ph.show_id = $1 AND ph.status <> 'paid') AS stray_payments \
         FROM holds WHERE show_id = $1",
    )
    .bind(show_id)
    .fetch_one(pool)
    .await?;
    let mut truth = DbTruth {
        holds: counts.get("holds"),
        expired_holds: counts.get("expired"),
        released_holds: counts.get("released"),
        held_holds: counts.get("held"),
        payments: counts.get("payments"),
        payments_of_unpaid_holds: counts.get("stray_payments"),
        ..DbTruth::default()
    };
    seats(pool, show_id, &mut truth).await?;
    truth.paid_holds_inconsistent = paid_holds_inconsistent(pool, show_id).await?;
    identities(pool, show_id, told, &mut truth).await?;
    truth.money = money(pool, users).await?;
    Ok(truth)
}

/// Seats sold, double-sold, and given back by expired holds.
async fn seats(pool: &PgPool, show_id: i64, truth: &mut DbTruth) -> anyhow::Result<()> {
    let row = sqlx::query(
        "SELECT \
           (SELECT count(*) FROM seats s JOIN holds h ON h.id = s.hold_id \
             WHERE s.show_id = $1 AND h.status = 'paid') AS sold, \
           (SELECT count(*) FROM (SELECT hs.seat_no FROM hold_seats hs \
               JOIN holds h ON h.id = hs.hold_id \
             WHERE hs.show_id = $1 AND h.status IN ('held', 'paid') \
             GROUP BY hs.seat_no HAVING count(*) > 1) d) AS double_sold, \
           (SELECT count(DISTINCT hs.seat_no) FROM hold_seats hs \
               JOIN holds h ON h.id = hs.hold_id \
               JOIN seats s ON s.show_id = hs.show_id AND s.seat_no = hs.seat_no \
             WHERE hs.show_id = $1 AND h.status = 'expired' \
               AND s.hold_id IS DISTINCT FROM h.id) AS given_back, \
           (SELECT count(*) FROM seats s JOIN holds h ON h.id = s.hold_id \
             WHERE s.show_id = $1 AND h.status IN ('expired', 'released')) AS stuck",
    )
    .bind(show_id)
    .fetch_one(pool)
    .await?;
    truth.seats_sold = row.get("sold");
    truth.double_sold_seats = row.get("double_sold");
    truth.seats_available_after_expiry = row.get("given_back");
    truth.seats_stuck_in_expired_holds = row.get("stuck");
    Ok(())
}

/// Paid holds without exactly one payment of their amount, or not owning
/// every seat they list.
async fn paid_holds_inconsistent(pool: &PgPool, show_id: i64) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM holds h \
         WHERE h.show_id = $1 AND h.status = 'paid' AND ( \
           (SELECT count(*) FROM payments p WHERE p.hold_id = h.id) <> 1 \
           OR (SELECT coalesce(sum(p.amount), 0) FROM payments p WHERE p.hold_id = h.id) <> h.amount \
           OR EXISTS (SELECT 1 FROM hold_seats hs JOIN seats s \
                        ON s.show_id = hs.show_id AND s.seat_no = hs.seat_no \
                      WHERE hs.hold_id = h.id AND s.hold_id IS DISTINCT FROM h.id))",
    )
    .bind(show_id)
    .fetch_one(pool)
    .await?)
}

/// The holds users were answered for, against the holds' rows.
async fn identities(
    pool: &PgPool,
    show_id: i64,
    told: &[HeldSeats],
    truth: &mut DbTruth,
) -> anyhow::Result<()> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, status FROM holds WHERE show_id = $1")
            .bind(show_id)
            .fetch_all(pool)
            .await?;
    let status = |id: i64| rows.iter().find(|(h, _)| *h == id).map(|(_, s)| s.as_str());
    let db_paid: BTreeSet<i64> = rows
        .iter()
        .filter(|(_, s)| s == "paid")
        .map(|(id, _)| *id)
        .collect();
    let told_paid: BTreeSet<i64> = told
        .iter()
        .filter(|h| h.outcome == Outcome::Paid)
        .map(|h| h.hold_id)
        .collect();
    truth.paid_identity_mismatches = db_paid.symmetric_difference(&told_paid).count() as i64;
    truth.abandoned_not_expired = told
        .iter()
        .filter(|h| matches!(h.outcome, Outcome::WalkedAway | Outcome::HoldExpired))
        .filter(|h| status(h.hold_id) != Some("expired"))
        .count() as i64;
    Ok(())
}

/// The money of users `lo..=hi`, and whether it adds up for each.
async fn money(pool: &PgPool, (lo, hi): (i64, i64)) -> anyhow::Result<Money> {
    let row = sqlx::query(
        "WITH c AS (SELECT user_id, sum(amount) AS charged FROM wallet_charges \
                    WHERE user_id BETWEEN $1 AND $2 GROUP BY user_id), \
              w AS (SELECT user_id, balance FROM wallets WHERE user_id BETWEEN $1 AND $2), \
              p AS (SELECT user_id, sum(amount) AS paid FROM payments \
                    WHERE user_id BETWEEN $1 AND $2 GROUP BY user_id), \
              u AS (SELECT user_id FROM c UNION SELECT user_id FROM w UNION SELECT user_id FROM p) \
         SELECT coalesce(sum(c.charged), 0)::bigint AS charged, \
                coalesce(sum(w.balance), 0)::bigint AS balances, \
                coalesce(sum(p.paid), 0)::bigint AS paid, \
                count(*) FILTER (WHERE coalesce(c.charged, 0) \
                    <> coalesce(w.balance, 0) + coalesce(p.paid, 0)) AS wrong \
         FROM u LEFT JOIN c USING (user_id) LEFT JOIN w USING (user_id) LEFT JOIN p USING (user_id)",
    )
    .bind(lo)
    .bind(hi)
    .fetch_one(pool)
    .await?;
    let wrong: i64 = row.get("wrong");
    Ok(Money {
        charged: row.get("charged"),
        balances: row.get("balances"),
        paid: row.get("paid"),
        conserved: wrong == 0,
        users_not_conserved: wrong,
    })
}

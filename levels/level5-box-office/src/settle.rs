//! How a hold ends: paid, released by its holder, or expired.
//!
//! Every ending starts the same way: `SELECT ... FROM holds WHERE id = $1
//! FOR UPDATE`. That row lock is what makes a payment racing an expiry end
//! exactly one way:
//!
//! - **Kind:** the row lock on the one `holds` row.
//! - **What it protects:** the status, from "check it is still `held` and
//!   not past its time" to the commit that changes it. A payment, a release
//!   and the sweeper all take it before they look, so whichever gets it
//!   first decides, and the others see the decision.
//! - **Why that scope:** a payment checks, deducts the wallet, inserts the
//!   payment and marks the hold paid in *one* transaction under the lock.
//!   Check outside the transaction (`--payment-check outside`, kept to show
//!   it) and two payments of two holds both read a balance that covers one
//!   of them: both pass, and the second overwrites the first one's
//!   deduction. The user spent the same money twice.
//!
//! A hold past its `expires_at` that the sweeper has not reached yet is
//! expired by whoever locks it first: a late payment expires it (410) rather
//! than paying for seats that are, by the clock, back on sale.

use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row as _};
use ticket_core::strategy::think;
use ticket_core::UserId;

use crate::error::BoxError;
use crate::holds::{FreedSeat, HoldSeats};
use crate::keys::{self, KeyClaim};
use crate::{PaymentCheck, Settings};

/// A payment that was made: the answer to `POST /holds/{id}/payments`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Payment {
    /// The payment's id.
    pub payment_id: i64,
    /// The hold it paid.
    pub hold_id: i64,
    /// What it cost.
    pub amount: i64,
    /// The wallet's balance after it.
    pub balance: i64,
}

impl Payment {
    /// The JSON answer, as sent and as recorded for a replay.
    pub fn body(&self) -> String {
        serde_json::to_string(self).expect("a payment always serializes")
    }
}

/// A hold's row as the endings read it.
struct HoldRow {
    user_id: i64,
    amount: i64,
    status: String,
    due: bool,
}

async fn read_hold(conn: &mut PgConnection, hold_id: i64, lock: bool) -> Result<HoldRow, BoxError> {
    let sql = if lock {
        "SELECT user_id, amount, status, expires_at <= clock_timestamp() AS due \
         FROM holds WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT user_id, amount, status, expires_at <= clock_timestamp() AS due \
         FROM holds WHERE id = $1"
    };
    let row = sqlx::query(sql)
        .bind(hold_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(BoxError::NotFound("hold"))?;
    Ok(HoldRow {
        user_id: row.get("user_id"),
        amount: row.get("amount"),
        status: row.get("status"),
        due: row.get("due"),
    })
}

/// Marks the holds expired and puts their seats back on sale; returns the
/// seats freed. The caller holds the holds' row locks (or, in the broken
/// sweeper, does not), and tells the strategy ([`HoldSeats::freed`]) after
/// the commit.
pub async fn expire(conn: &mut PgConnection, hold_ids: &[i64]) -> Result<Vec<FreedSeat>, BoxError> {
    sqlx::query("UPDATE holds SET status = 'expired', settled_at = now() WHERE id = ANY($1)")
        .bind(hold_ids)
        .execute(&mut *conn)
        .await?;
    free_seats(conn, hold_ids).await
}

/// Tells the strategy which seats went back on sale (Redis mirrors them).
/// A failure here leaves a seat looking taken where it is free: it is
/// logged, never turned into the request's answer, and never oversells.
pub async fn tell_freed(holds: &dyn HoldSeats, freed: &[FreedSeat]) {
    if freed.is_empty() {
        return;
    }
    if let Err(err) = holds.freed(freed).await {
        tracing::warn!(
            error = format!("{err:#}"),
            "could not free seats in the hold store"
        );
    }
}

/// Gives the seats of `hold_ids` back: only seats these holds still own.
async fn free_seats(conn: &mut PgConnection, hold_ids: &[i64]) -> Result<Vec<FreedSeat>, BoxError> {
    let freed: Vec<(i64, i32, i64)> = sqlx::query_as(
        "UPDATE seats s SET hold_id = NULL, version = s.version + 1 FROM hold_seats hs \
         WHERE hs.hold_id = ANY($1) AND s.show_id = hs.show_id AND s.seat_no = hs.seat_no \
           AND s.hold_id = hs.hold_id \
         RETURNING hs.show_id, hs.seat_no, hs.hold_id",
    )
    .bind(hold_ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(freed
        .into_iter()
        .map(|(show_id, seat_no, hold_id)| FreedSeat {
            show_id,
            seat_no,
            hold_id,
        })
        .collect())
}

/// What a hold that is no longer `held` answers to a payment or release.
fn settled(status: &str) -> BoxError {
    match status {
        "paid" => BoxError::AlreadyPaid,
        "released" => BoxError::HoldReleased,
        _ => BoxError::HoldExpired,
    }
}

/// The show of `hold_id` (404 if there is no such hold): a payment's
/// `Queue-Token` must be for that show.
pub async fn show_of(pool: &PgPool, hold_id: i64) -> Result<i64, BoxError> {
    sqlx::query_scalar("SELECT show_id FROM holds WHERE id = $1")
        .bind(hold_id)
        .fetch_optional(pool)
        .await?
        .ok_or(BoxError::NotFound("hold"))
}

/// Pays `hold_id` for `user` from their wallet, or says why not.
pub async fn pay(
    pool: &PgPool,
    holds: &dyn HoldSeats,
    settings: &Settings,
    hold_id: i64,
    user: UserId,
    claim: Option<&KeyClaim>,
) -> Result<Payment, BoxError> {
    if settings.payment_check == PaymentCheck::Outside {
        return pay_checked_outside(pool, settings, hold_id, user, claim).await;
    }
    let mut tx = pool.begin().await?;
    let hold = read_hold(&mut tx, hold_id, true).await?;
    if hold.user_id != user.get() {
        return Err(BoxError::Forbidden);
    }
    if hold.status != "held" {
        return Err(settled(&hold.status));
    }
    if hold.due {
        // Past its time and not swept yet: expire it now, under our lock.
        let freed = expire(&mut tx, &[hold_id]).await?;
        tx.commit().await?;
        tell_freed(holds, &freed).await;
        return Err(BoxError::HoldExpired);
    }
    think(settings.think_time).await;
    // Relative and guarded: deducts only what is there, in the same
    // transaction that holds the hold's lock.
    let balance: Option<i64> = sqlx::query_scalar(
        "UPDATE wallets SET balance = balance - $2 WHERE user_id = $1 AND balance >= $2 \
         RETURNING balance",
    )
    .bind(user.get())
    .bind(hold.amount)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(balance) = balance else {
        let balance = crate::wallet::balance(pool, user).await?.balance;
        return Err(BoxError::InsufficientBalance {
            balance,
            amount: hold.amount,
        });
    };
    let payment = record_payment(&mut tx, hold_id, user, hold.amount, balance).await?;
    keys::record_in(&mut tx, claim, 201, &payment.body()).await?;
    tx.commit().await?;
    Ok(payment)
}

/// Inserts the payment and marks the hold paid.
async fn record_payment(
    tx: &mut PgConnection,
    hold_id: i64,
    user: UserId,
    amount: i64,
    balance: i64,
) -> Result<Payment, BoxError> {
    let inserted = sqlx::query_scalar(
        "INSERT INTO payments (hold_id, user_id, amount) VALUES ($1, $2, $3) \
         ON CONFLICT (hold_id) DO NOTHING RETURNING id",
    )
    .bind(hold_id)
    .bind(user.get())
    .bind(amount)
    .fetch_optional(&mut *tx)
    .await?;
    // UNIQUE (hold_id) is the last line of defence: never a second charge.
    let payment_id: i64 = inserted.ok_or(BoxError::AlreadyPaid)?;
    sqlx::query("UPDATE holds SET status = 'paid', settled_at = now() WHERE id = $1")
        .bind(hold_id)
        .execute(&mut *tx)
        .await?;
    Ok(Payment {
        payment_id,
        hold_id,
        amount,
        balance,
    })
}

/// BROKEN on purpose (`--payment-check outside`): reads the hold and the
/// balance with no lock and no transaction, thinks, then writes the
/// balance it computed. Two payments that overlap both read the same
/// balance, both pass the check, and the second write undoes the first
/// one's deduction: a double spend.
async fn pay_checked_outside(
    pool: &PgPool,
    settings: &Settings,
    hold_id: i64,
    user: UserId,
    claim: Option<&KeyClaim>,
) -> Result<Payment, BoxError> {
    let mut conn = pool.acquire().await?;
    let hold = read_hold(&mut conn, hold_id, false).await?;
    drop(conn);
    if hold.user_id != user.get() {
        return Err(BoxError::Forbidden);
    }
    if hold.status != "held" || hold.due {
        return Err(settled(&hold.status));
    }
    let read = crate::wallet::balance(pool, user).await?.balance;
    if read < hold.amount {
        return Err(BoxError::InsufficientBalance {
            balance: read,
            amount: hold.amount,
        });
    }
    think(settings.think_time).await;
    let balance = read - hold.amount;
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE wallets SET balance = $2 WHERE user_id = $1")
        .bind(user.get())
        .bind(balance)
        .execute(&mut *tx)
        .await?;
    let payment = record_payment(&mut tx, hold_id, user, hold.amount, balance).await?;
    keys::record_in(&mut tx, claim, 201, &payment.body()).await?;
    tx.commit().await?;
    Ok(payment)
}

/// The answer to a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Released {
    /// The hold.
    pub hold_id: i64,
    /// Always `"released"`.
    pub status: &'static str,
}

/// Releases `hold_id` for its holder: its seats go back on sale. Releasing
/// twice answers the same; a paid hold cannot be released.
pub async fn release(
    pool: &PgPool,
    holds: &dyn HoldSeats,
    hold_id: i64,
    user: UserId,
) -> Result<Released, BoxError> {
    let mut tx = pool.begin().await?;
    let hold = read_hold(&mut tx, hold_id, true).await?;
    if hold.user_id != user.get() {
        return Err(BoxError::Forbidden);
    }
    let released = Released {
        hold_id,
        status: "released",
    };
    match hold.status.as_str() {
        "released" => return Ok(released),
        "held" if hold.due => {
            let freed = expire(&mut tx, &[hold_id]).await?;
            tx.commit().await?;
            tell_freed(holds, &freed).await;
            return Err(BoxError::HoldExpired);
        }
        "held" => {}
        other => return Err(settled(other)),
    }
    sqlx::query("UPDATE holds SET status = 'released', settled_at = now() WHERE id = $1")
        .bind(hold_id)
        .execute(&mut *tx)
        .await?;
    let freed = free_seats(&mut tx, &[hold_id]).await?;
    tx.commit().await?;
    tell_freed(holds, &freed).await;
    Ok(released)
}

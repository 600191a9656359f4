//! Idempotency keys: the same `Idempotency-Key` twice means "the same
//! request", so the second gets the first one's answer, never a second
//! purchase.
//!
//! How a request with a key is served:
//!
//! 1. **Claim.** `INSERT ... ON CONFLICT DO NOTHING` on the key's row. Exactly
//!    one request wins, on whichever server; it does the work.
//! 2. **Work, and record atomically.** The winner runs the purchase with its
//!    [`Claim`] inside the [`crate::Purchase`] it hands the strategy. When
//!    the strategy inserts the order ([`crate::db::insert_order`] takes that
//!    purchase), the key's row is completed *in the same transaction*, so the
//!    order and the record of its answer commit together or not at all. A failure (sold out, already purchased) has no order to
//!    be atomic with; its answer is recorded after. A retryable failure (503)
//!    is not recorded: the claim is released, so a retry does the work again.
//! 3. **Everyone else waits and replays.** Any other request with the key
//!    re-reads the row, backing off (10 ms, doubling to 200 ms: a rush must
//!    not spend its connections on waiting), until it is completed (and
//!    replays its status and body, byte for byte, with
//!    `Idempotent-Replayed: true`), released (and tries to claim it), or
//!    until the wait bound (409 `request_in_progress`).
//!
//! A claim holds a lease. If its server died, the lease runs out, and because
//! of step 2 an expired claim never has an order behind it: the next request
//! takes it over and does the work. The completing UPDATE names the claim's
//! owner token, so a straggler whose claim was taken over cannot complete it
//! (its transaction rolls back instead).
//!
//! Keys are scoped per buyer, as the IETF draft advises: `(user, key)` names
//! a key, so two buyers whose clients pick the same key never collide. The
//! key is bound to its request: the same buyer's key with another ticket is
//! refused (422), nothing written.
//!
//! Keys expire a configurable time (`--idempotency-ttl-secs`) after their
//! answer; the same key after that is a new request. A key still in
//! progress never expires: only a lease that ran out lets another request
//! take it over (above), so a duplicate can never do the work a second time
//! while the first request may still commit it.
//!
//! [`Mode::CheckThenInsert`] keeps the broken design one of the original
//! projects shipped: look the key up, do the work, then insert the key. Two
//! or three identical requests at once all find nothing, all do the work,
//! and all but one fail to insert the key: a duplicate-key error, a 500.

use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool, Row as _};

use crate::backoff::Backoff;
use crate::domain::{PurchaseError, TicketId, UserId};

/// How keys are handled (`--idempotency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Claim first, record with the order: correct.
    Atomic,
    /// Look up, work, then insert the key: the broken design, kept to show
    /// why it fails under concurrent duplicates.
    CheckThenInsert,
    /// The API does nothing with keys: it hands each key to the strategy
    /// (in `Purchase::claim`, owner 0, no row claimed), which owns it.
    /// Workshop exercise 8, where the learner writes the idempotency.
    Strategy,
}

/// Settings for idempotency keys.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The design.
    pub mode: Mode,
    /// How long a key is remembered.
    pub ttl: Duration,
    /// How long a duplicate waits for the first request to finish.
    pub wait: Duration,
    /// How long a claim is held before another request may take it over.
    pub lease: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mode: Mode::Atomic,
            ttl: Duration::from_secs(24 * 3600),
            wait: Duration::from_secs(10),
            lease: Duration::from_secs(60),
        }
    }
}

/// Checks a header value: 1 to 255 visible ASCII characters.
pub fn parse_key(raw: &[u8]) -> Option<String> {
    let ok = !raw.is_empty() && raw.len() <= 255 && raw.iter().all(|b| b.is_ascii_graphic());
    ok.then(|| String::from_utf8_lossy(raw).into_owned())
}

pub use crate::domain::Claim;

/// The answer body and Location of a successful purchase, as recorded and
/// replayed.
pub fn created_body(order: &crate::domain::Order) -> (String, String) {
    let body = serde_json::to_string(order).expect("an order always serializes");
    let location = format!("/tickets/{}/orders/{}", order.ticket_id, order.order_id);
    (body, location)
}

/// Called by [`crate::db::insert_order`] inside the order's transaction:
/// completes `claim` there with the 201 answer.
pub(crate) async fn record_in_transaction(
    conn: &mut PgConnection,
    claim: &Claim,
    order: &crate::domain::Order,
) -> Result<(), PurchaseError> {
    let (body, location) = created_body(order);
    let answer = Recorded {
        status: 201,
        body,
        location: Some(location),
    };
    if !complete(&mut *conn, claim, &answer).await? {
        // Our lease ran out and another request took the key over: this
        // transaction must not commit a second order for it.
        return Err(PurchaseError::busy(
            "this request's idempotency key was taken over",
        ));
    }
    Ok(())
}

/// Completes `claim` with `answer`, if the claim is still ours and still
/// unanswered; says whether it did.
///
/// The key's time to live starts again from the answer (`expires_at -
/// created_at` is the TTL it was claimed with; `clock_timestamp()`, because
/// `now()` is when the order's transaction began): a purchase slower than the
/// TTL is still remembered for a whole TTL after it answered, so a duplicate
/// that follows it is replayed the 201 instead of doing the work again and
/// being told 409 `already_purchased`.
async fn complete<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    claim: &Claim,
    answer: &Recorded,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE idempotency_keys SET status = $4, body = $5, location = $6, completed_at = now(), \
                expires_at = clock_timestamp() + (expires_at - created_at) \
         WHERE user_id = $1 AND key = $2 AND owner = $3 AND status IS NULL",
    )
    .bind(claim.user.get())
    .bind(&claim.key)
    .bind(claim.owner)
    .bind(answer.status as i16)
    .bind(&answer.body)
    .bind(&answer.location)
    .execute(executor)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// A recorded answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// HTTP status.
    pub status: u16,
    /// The body, byte for byte.
    pub body: String,
    /// The Location header of a 201.
    pub location: Option<String>,
}

/// What trying to claim a key found.
#[derive(Debug)]
pub enum Begin {
    /// This request owns the key: do the work, passing the claim along in
    /// the [`crate::Purchase`].
    Owner(Claim),
    /// The key was answered before: replay this.
    Replay(Recorded),
    /// This buyer used the key for another ticket.
    Mismatch,
    /// Another request holds it and did not finish within the wait bound.
    InProgress,
}

/// How a duplicate waits for the request that holds its key: a first
/// re-read after about 10 ms, then pauses doubling up to 200 ms. Under a
/// rush the holder is queued behind thousands of buyers for the same pool
/// of connections; a duplicate that re-read every 10 ms would take a turn
/// of that pool each time and slow the holder it waits for.
const WAIT_BACKOFF: Backoff =
    Backoff::equal_jitter(Duration::from_millis(10), Duration::from_millis(200));

/// Claims `user`'s `key` for `ticket`, or waits for whoever holds it.
///
/// Keys are scoped per buyer: `(user, key)` names a row, so two buyers who
/// pick the same key never see each other's.
///
/// The common case, a key never seen, costs one turn of the connection
/// pool: the claiming INSERT. Only a conflict costs more: reading the row
/// (and, for a key whose time to live is over, deleting it and claiming
/// again). A duplicate in progress then re-reads the row alone, backing
/// off ([`WAIT_BACKOFF`]), and claims again only once the row is gone.
pub async fn begin(
    pool: &PgPool,
    settings: &Settings,
    key: &str,
    ticket: TicketId,
    user: UserId,
) -> Result<Begin, PurchaseError> {
    let deadline = Instant::now() + settings.wait;
    let mut waits = 0;
    loop {
        let claim = Claim {
            key: key.to_owned(),
            user,
            owner: rand::random::<i64>() & i64::MAX,
        };
        if try_claim(pool, settings, &claim, ticket).await? {
            return Ok(Begin::Owner(claim));
        }
        // Someone holds the key, or held it: wait on its row alone until
        // it answers, or is gone (then claim again).
        loop {
            let Some(row) = read(pool, key, user).await? else {
                break; // released or forgotten in between: claim again
            };
            if row.expired {
                // Answered, and remembered long enough: the same key is
                // now a new request.
                forget_if_expired(pool, key, user).await?;
                break;
            }
            if row.ticket != ticket.get() {
                return Ok(Begin::Mismatch);
            }
            if let Some(answer) = row.answer {
                return Ok(Begin::Replay(answer));
            }
            if row.stale {
                // The holder's lease ran out (its server died, most
                // likely). No order stands behind an unfinished claim, so
                // take it over.
                if take_over(pool, settings, &claim).await? {
                    return Ok(Begin::Owner(claim));
                }
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Begin::InProgress);
            }
            waits += 1;
            tokio::time::sleep(WAIT_BACKOFF.delay(waits).min(deadline - now)).await;
        }
    }
}

/// Deletes the key if it was answered and its time to live is over: the
/// same key is then a new request. Run only when a claim found the key
/// taken: a rush of new keys never pays for it.
///
/// Never a key still in progress (`status IS NULL`): its request may be
/// about to commit an order with it. An unfinished claim whose server died
/// is taken over when its lease runs out ([`take_over`]), not forgotten.
async fn forget_if_expired(pool: &PgPool, key: &str, user: UserId) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM idempotency_keys \
         WHERE user_id = $1 AND key = $2 AND status IS NOT NULL AND expires_at < now()",
    )
    .bind(user.get())
    .bind(key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Step 1: `INSERT ... ON CONFLICT DO NOTHING`; whoever inserts the row
/// owns the key.
async fn try_claim(
    pool: &PgPool,
    settings: &Settings,
    claim: &Claim,
    ticket: TicketId,
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (key, ticket_id, user_id, owner, locked_until, expires_at) \
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), now() + make_interval(secs => $6)) \
         ON CONFLICT (user_id, key) DO NOTHING",
    )
    .bind(&claim.key)
    .bind(ticket.get())
    .bind(claim.user.get())
    .bind(claim.owner)
    .bind(settings.lease.as_secs_f64())
    .bind(settings.ttl.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(claimed == 1)
}

/// A key's row, as a request that did not claim it reads it.
struct KeyRow {
    ticket: i64,
    answer: Option<Recorded>,
    /// The holder's lease ran out.
    stale: bool,
    /// It was answered and its time to live is over.
    expired: bool,
}

async fn read(pool: &PgPool, key: &str, user: UserId) -> Result<Option<KeyRow>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT ticket_id, status, body, location, locked_until < now() AS stale, \
                status IS NOT NULL AND expires_at < now() AS expired \
         FROM idempotency_keys WHERE user_id = $1 AND key = $2",
    )
    .bind(user.get())
    .bind(key)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| KeyRow {
        ticket: row.get("ticket_id"),
        answer: row.get::<Option<i16>, _>("status").map(|status| Recorded {
            status: status as u16,
            body: row.get("body"),
            location: row.get("location"),
        }),
        stale: row.get("stale"),
        expired: row.get("expired"),
    }))
}

/// Takes over an unfinished claim whose lease ran out, under a new owner
/// token; says whether this request won it.
async fn take_over(pool: &PgPool, settings: &Settings, claim: &Claim) -> Result<bool, sqlx::Error> {
    let taken = sqlx::query(
        "UPDATE idempotency_keys SET owner = $3, locked_until = now() + make_interval(secs => $4) \
         WHERE user_id = $1 AND key = $2 AND status IS NULL AND locked_until < now()",
    )
    .bind(claim.user.get())
    .bind(&claim.key)
    .bind(claim.owner)
    .bind(settings.lease.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(taken == 1)
}

/// Records a final answer for a claim (failures, and successes of strategies
/// that do not write the order through `insert_order`). A claim that
/// `insert_order` already completed is left as it is, so calling this after
/// any success is safe.
pub async fn finish(pool: &PgPool, claim: &Claim, answer: &Recorded) -> Result<(), PurchaseError> {
    complete(pool, claim, answer).await?;
    Ok(())
}

/// Gives a claim up without an answer (after a retryable failure), so that
/// a retry with the same key does the work again.
pub async fn release(pool: &PgPool, claim: &Claim) -> Result<(), PurchaseError> {
    sqlx::query(
        "DELETE FROM idempotency_keys \
         WHERE user_id = $1 AND key = $2 AND owner = $3 AND status IS NULL",
    )
    .bind(claim.user.get())
    .bind(&claim.key)
    .bind(claim.owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// The broken design, step 1: is `user`'s key known? Returns the ticket it
/// was used for and its answer. (Nothing is claimed.)
pub async fn lookup(
    pool: &PgPool,
    key: &str,
    user: UserId,
) -> Result<Option<(i64, Recorded)>, PurchaseError> {
    let row = sqlx::query(
        "SELECT ticket_id, status, body, location FROM idempotency_keys \
         WHERE user_id = $1 AND key = $2 AND expires_at >= now() AND status IS NOT NULL",
    )
    .bind(user.get())
    .bind(key)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| {
        (
            row.get("ticket_id"),
            Recorded {
                status: row.get::<i16, _>("status") as u16,
                body: row.get("body"),
                location: row.get("location"),
            },
        )
    }))
}

/// The broken design, step 3: insert the key after the work. A concurrent
/// duplicate that got here first makes this fail with a duplicate key, which
/// is reported as the unexpected error it is.
pub async fn insert_after(
    pool: &PgPool,
    settings: &Settings,
    key: &str,
    ticket: TicketId,
    user: UserId,
    answer: &Recorded,
) -> Result<(), PurchaseError> {
    sqlx::query(
        "INSERT INTO idempotency_keys \
         (key, ticket_id, user_id, owner, locked_until, expires_at, status, body, location, completed_at) \
         VALUES ($1, $2, $3, 0, now(), now() + make_interval(secs => $4), $5, $6, $7, now())",
    )
    .bind(key)
    .bind(ticket.get())
    .bind(user.get())
    .bind(settings.ttl.as_secs_f64())
    .bind(answer.status as i16)
    .bind(&answer.body)
    .bind(&answer.location)
    .execute(pool)
    .await
    .map_err(|err| PurchaseError::Unexpected(anyhow::Error::new(err).context("saving the idempotency key")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_visible_ascii() {
        assert_eq!(parse_key(b"a1-b2_c3").as_deref(), Some("a1-b2_c3"));
        assert!(parse_key(b"").is_none());
        assert!(parse_key(b"has space").is_none());
        assert!(parse_key(&[b'x'; 256]).is_none());
        assert!(parse_key("caf\u{e9}".as_bytes()).is_none());
    }
}

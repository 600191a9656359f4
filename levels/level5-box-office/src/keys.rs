//! The one place Level 5 touches ticket-core's idempotency keys.
//!
//! Wallet charges and payments accept `Idempotency-Key`, with the same
//! guarantee as a ticket purchase (see `ticket_core::idempotency`): claim the
//! key, do the work, and record the answer **in the work's own transaction**,
//! so that the money moved and the record of the answer commit together or
//! not at all. A request whose answer was lost (its server died) is retried
//! with the same key and replays the answer instead of charging again.
//!
//! ticket-core's key table binds a key to a `(ticket_id, user_id)` pair. Here
//! the "ticket" is whatever identifies the request (the amount of a charge,
//! the hold of a payment), and the key is stored with a prefix naming the
//! endpoint, so a charge's key can never replay a purchase's answer.
//!
//! Everything that depends on ticket-core's idempotency API is in this file:
//! when that API changes, only this file does.

use sqlx::{PgConnection, PgPool};
use ticket_core::idempotency::{self, Begin, Claim, Recorded, Settings};
use ticket_core::{TicketId, UserId};

use crate::error::BoxError;

/// Checks a raw header value: 1 to 255 visible ASCII characters.
pub fn parse(raw: &[u8]) -> Option<String> {
    idempotency::parse_key(raw)
}

/// A claimed key: this request does the work and records its answer.
#[derive(Debug, Clone)]
pub struct KeyClaim(Claim);

/// What claiming a key found.
#[derive(Debug)]
pub enum Start {
    /// Do the work; record the answer with [`record_in`] or [`finish`].
    Owner(KeyClaim),
    /// Answered before: send this status and body again.
    Replay {
        /// The recorded status.
        status: u16,
        /// The recorded body, byte for byte.
        body: String,
    },
}

/// Claims `key` for the request `(scope, bound_to, user)`, or waits for the
/// request that holds it and returns its answer.
pub async fn start(
    pool: &PgPool,
    settings: &Settings,
    scope: &str,
    key: &str,
    bound_to: i64,
    user: UserId,
) -> Result<Start, BoxError> {
    let bound = TicketId::parse(bound_to.into())
        .map_err(|e| BoxError::Unexpected(anyhow::anyhow!("idempotency binding: {e}")))?;
    let scoped = format!("{scope}:{key}");
    match idempotency::begin(pool, settings, &scoped, bound, user).await {
        Ok(Begin::Owner(claim)) => Ok(Start::Owner(KeyClaim(claim))),
        Ok(Begin::Replay(recorded)) => Ok(Start::Replay {
            status: recorded.status,
            body: recorded.body,
        }),
        Ok(Begin::Mismatch) => Err(BoxError::KeyMismatch),
        Ok(Begin::InProgress) => Err(BoxError::InProgress),
        Err(err) => Err(BoxError::Unavailable(anyhow::anyhow!("{err}"))),
    }
}

/// Records a success inside the transaction that did the work. Without a
/// claim it does nothing. If the claim was taken over (our lease ran out),
/// the caller's transaction must not commit: that is the error returned.
pub async fn record_in(
    conn: &mut PgConnection,
    claim: Option<&KeyClaim>,
    status: u16,
    body: &str,
) -> Result<(), BoxError> {
    let Some(KeyClaim(claim)) = claim else {
        return Ok(());
    };
    let updated = sqlx::query(
        "UPDATE idempotency_keys SET status = $3, body = $4, completed_at = now() \
         WHERE key = $1 AND owner = $2 AND status IS NULL",
    )
    .bind(&claim.key)
    .bind(claim.owner)
    .bind(status as i16)
    .bind(body)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated != 1 {
        return Err(BoxError::Busy(
            "this request's idempotency key was taken over",
        ));
    }
    Ok(())
}

/// Records a final failure (402, 409, 410...) after the work, so a retry
/// with the key gets the same answer.
pub async fn finish(pool: &PgPool, claim: &KeyClaim, status: u16, body: String) {
    let recorded = Recorded {
        status,
        body,
        location: None,
    };
    if let Err(err) = idempotency::finish(pool, &claim.0, &recorded).await {
        tracing::warn!(error = %err, "could not record an idempotency key's answer");
    }
}

/// Gives the key up after a retryable failure (503), so a retry does the
/// work again.
pub async fn release(pool: &PgPool, claim: &KeyClaim) {
    if let Err(err) = idempotency::release(pool, &claim.0).await {
        tracing::warn!(error = %err, "could not release an idempotency key");
    }
}

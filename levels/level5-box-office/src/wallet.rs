//! Wallets: charge money in, read the balance.
//!
//! A charge is one relative write, `balance = balance + $amount`, in an
//! upsert (`INSERT ... ON CONFLICT DO UPDATE`), plus a `wallet_charges` row
//! for the audit, in one transaction. A relative write cannot lose a
//! concurrent charge the way "read the balance, write balance + amount"
//! does: PostgreSQL applies the second UPDATE to the row the first one
//! committed. A hundred charges at once on two servers add up exactly.
//!
//! With an `Idempotency-Key`, the answer is recorded in the same
//! transaction ([`crate::keys::record_in`]): a retried charge whose answer
//! was lost replays it instead of charging twice.

use serde::Serialize;
use sqlx::PgPool;
use ticket_core::UserId;

use crate::error::BoxError;
use crate::keys::{self, KeyClaim};

/// A wallet as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Wallet {
    /// Whose.
    pub user_id: UserId,
    /// How much it holds, in won.
    pub balance: i64,
}

impl Wallet {
    /// The JSON answer, as sent and as recorded for a replay.
    pub fn body(&self) -> String {
        serde_json::to_string(self).expect("a wallet always serializes")
    }
}

/// Adds `amount` (already checked: 1 to `--max-charge`) to `user`'s wallet.
pub async fn charge(
    pool: &PgPool,
    user: UserId,
    amount: i64,
    claim: Option<&KeyClaim>,
) -> Result<Wallet, BoxError> {
    let mut tx = pool.begin().await?;
    let balance: i64 = sqlx::query_scalar(
        "INSERT INTO wallets (user_id, balance) VALUES ($1, $2) \
         ON CONFLICT (user_id) DO UPDATE SET balance = wallets.balance + EXCLUDED.balance \
         RETURNING balance",
    )
    .bind(user.get())
    .bind(amount)
    .fetch_one(&mut *tx)
    .await
    .map_err(overflow_is_invalid)?;
    sqlx::query("INSERT INTO wallet_charges (user_id, amount) VALUES ($1, $2)")
        .bind(user.get())
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    let wallet = Wallet {
        user_id: user,
        balance,
    };
    keys::record_in(&mut tx, claim, 200, &wallet.body()).await?;
    tx.commit().await?;
    Ok(wallet)
}

/// A balance beyond BIGINT (SQLSTATE 22003) is the client's doing: 422.
fn overflow_is_invalid(err: sqlx::Error) -> BoxError {
    if ticket_core::db::sqlstate(&err).as_deref() == Some("22003") {
        return BoxError::invalid("invalid_amount", "the balance would be too large");
    }
    err.into()
}

/// The balance; 0 for a user never charged.
pub async fn balance(pool: &PgPool, user: UserId) -> Result<Wallet, BoxError> {
    let balance: Option<i64> = sqlx::query_scalar("SELECT balance FROM wallets WHERE user_id = $1")
        .bind(user.get())
        .fetch_optional(pool)
        .await?;
    Ok(Wallet {
        user_id: user,
        balance: balance.unwrap_or(0),
    })
}

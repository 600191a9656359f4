//! The one way every Level 2 strategy runs an attempt: open a transaction,
//! sell inside it, then commit or roll back.
//!
//! Each strategy file holds only what is its lesson (a `FOR NO KEY UPDATE`,
//! a `WHERE version = $2`, an advisory lock); the frame around it is here,
//! once: [`in_transaction`] opens with [`Opening`], runs the sale, and
//! [`finish`]es (commit if it sold, roll back if not).
//!
//! The opening also sets the limit that no statement timeout can give: how
//! long a transaction may sit **idle** between two statements while it holds
//! its locks. A sale's think time sits exactly there (between the locking
//! read and the write), and so does any stall of the server holding the
//! lock: a paused process, a slow call to another service, a lost network.
//! `lock_timeout` bounds only the *waiters'* waits and `statement_timeout`
//! only a running statement, so neither ever fires on a stalled holder, and
//! every buyer of the ticket queues behind it. PostgreSQL's
//! `idle_in_transaction_session_timeout` does fire: after that long idle
//! inside a transaction, the server ends the session (SQLSTATE 25P03),
//! which rolls the transaction back and releases its locks. The holder's
//! buyer is answered 503 busy; the next buyer in line gets the lock.
//!
//! It is set with `SET LOCAL`, in the same round trip as `BEGIN`: it belongs
//! to Level 2's transactions, whose pauses this level knows, rather than to
//! every connection of the server.

use sqlx::PgConnection;
use ticket_core::strategy::StrategyContext;

use crate::retry::{finish, Failure};
use crate::Level2Config;

/// How a Level 2 transaction begins: its isolation level and its
/// idle-in-transaction limit, as one simple-protocol query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opening {
    begin: String,
}

impl Opening {
    /// A READ COMMITTED transaction (PostgreSQL's default), with the limit
    /// from `config`.
    pub fn read_committed(
        context: &StrategyContext,
        config: &Level2Config,
    ) -> anyhow::Result<Self> {
        Self::new(context, config, "READ COMMITTED")
    }

    /// A SERIALIZABLE transaction, with the limit from `config`.
    pub fn serializable(context: &StrategyContext, config: &Level2Config) -> anyhow::Result<Self> {
        Self::new(context, config, "SERIALIZABLE")
    }

    /// Warns about a limit the sale itself trips over: with a think time
    /// at least as long, every sale is ended in the middle. (Allowed, because
    /// that is how a lesson stalls a holder on demand.)
    fn new(
        context: &StrategyContext,
        config: &Level2Config,
        isolation: &str,
    ) -> anyhow::Result<Self> {
        let limit = config.idle_in_transaction_timeout_ms;
        let think = context.think_time.as_millis();
        if limit != 0 && think >= u128::from(limit) {
            tracing::warn!(
                think_time_ms = %think,
                idle_in_transaction_timeout_ms = limit,
                "the think time is not shorter than the idle-in-transaction timeout: \
                 PostgreSQL will end every sale during its think time"
            );
        }
        // Both values are numbers we format ourselves, so the text is safe
        // to send as it is (SET takes no bind parameters).
        Ok(Self {
            begin: format!(
                "BEGIN ISOLATION LEVEL {isolation}; \
                 SET LOCAL idle_in_transaction_session_timeout = '{limit}ms'"
            ),
        })
    }
}

/// Runs `sale` in a fresh transaction opened with `opening`, then commits
/// if it sold and rolls back if not (see [`finish`]).
///
/// A retrying strategy calls this once per attempt: a retry is always a new
/// transaction (see [`crate::retry`]).
pub async fn in_transaction<T>(
    context: &StrategyContext,
    opening: &Opening,
    sale: impl AsyncFnOnce(&mut PgConnection) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let mut tx = context.pool.begin_with(opening.begin.clone()).await?;
    let sold = sale(&mut tx).await;
    finish(tx, sold).await
}

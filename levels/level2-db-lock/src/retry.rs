//! What every Level 2 strategy does with a transaction that went wrong:
//! finish it, name what happened, and (for the strategies that retry) start a
//! fresh one after a short, random pause.
//!
//! Three pieces:
//!
//! - [`Failure`]: why one attempt did not sell, sorted by what to do next.
//!   *Lost a race* ([`Failure::Lost`]) may be retried; *gave up on a lock or
//!   a connection* ([`Failure::Busy`]) and every other answer are final.
//! - [`finish`]: commit the attempt's transaction if it sold, roll it back if
//!   not. A rolled-back transaction releases every lock it took, *before*
//!   anyone sleeps or retries.
//! - [`with_retries`]: call an attempt again and again, at most
//!   `max_retries` more times, with [`Backoff`] between tries.
//!
//! Why a retry must be a *fresh* transaction: once PostgreSQL reports a
//! serialization failure, the transaction is aborted; every further statement
//! in it fails with "current transaction is aborted". And an optimistic
//! conflict means what we read is out of date; re-reading inside a
//! REPEATABLE READ or SERIALIZABLE transaction would return the same stale
//! snapshot. So each attempt begins its own transaction, reads afresh and
//! decides afresh; [`with_retries`] only ever calls the attempt again from
//! the start.

use std::future::Future;

use sqlx::{PgConnection, Postgres, Transaction};
use ticket_core::db::{classify, sqlstate};
use ticket_core::metrics::Metrics;
use ticket_core::PurchaseError;

/// Why one attempt at a sale did not produce an order.
#[derive(Debug)]
pub enum Failure {
    /// We lost a race that PostgreSQL (or our version check) detected. Nothing
    /// was written; a fresh transaction, started a little later, may win.
    Lost {
        /// What happened, as counted in `/metrics`: `conflict` (a version
        /// check failed), `serialization_failure` (SQLSTATE 40001) or
        /// `deadlock` (40P01).
        event: &'static str,
    },
    /// We gave up waiting for a lock or a connection. Retrying at once would
    /// only queue again: the buyer is answered 503 busy and picks again.
    Busy {
        /// What happened, as counted in `/metrics`: `lock_timeout`,
        /// `lock_refused`, `pool_timeout`, `statement_timeout`,
        /// `idle_in_transaction_timeout`.
        event: &'static str,
        /// Why, in the buyer's problem detail.
        reason: &'static str,
    },
    /// A final answer: sold out, already purchased, not found, or a fault.
    Answer(PurchaseError),
}

impl From<PurchaseError> for Failure {
    fn from(err: PurchaseError) -> Self {
        Self::Answer(err)
    }
}

impl From<sqlx::Error> for Failure {
    /// Sorts a database error: races PostgreSQL detected are [`Failure::Lost`],
    /// waits that ran out are [`Failure::Busy`], everything else goes through
    /// ticket-core's [`classify`] (a UNIQUE violation is "already purchased",
    /// and so on).
    fn from(err: sqlx::Error) -> Self {
        if matches!(err, sqlx::Error::PoolTimedOut) {
            return Self::Busy {
                event: "pool_timeout",
                reason: "every database connection of this server is in use",
            };
        }
        match sqlstate(&err).as_deref() {
            Some("40001") => Self::Lost {
                event: "serialization_failure",
            },
            Some("40P01") => Self::Lost { event: "deadlock" },
            Some("55P03") => Self::Busy {
                event: "lock_timeout",
                reason: "the ticket row is locked by another buyer",
            },
            // idle_in_transaction_session_timeout: this sale stalled between
            // two statements while holding its locks, and PostgreSQL ended
            // its session (see `crate::transaction`). Nothing was written.
            Some("25P03") => Self::Busy {
                event: "idle_in_transaction_timeout",
                reason: "the sale stalled inside its transaction and the database ended it",
            },
            // statement_timeout: the database is too slow for us right now.
            Some("57014") => Self::Busy {
                event: "statement_timeout",
                reason: "the database did not answer in time",
            },
            _ => Self::Answer(classify(err)),
        }
    }
}

impl Failure {
    /// Turns a failure into the buyer's answer, counting what happened. A
    /// lost race reaching here (a strategy that does not retry, or retries
    /// that ran out) is answered busy: trying again may well succeed.
    fn settle(self, metrics: &Metrics) -> PurchaseError {
        match self {
            Self::Lost { event } => {
                metrics.event(event);
                PurchaseError::busy("another buyer changed the ticket first")
            }
            Self::Busy { event, reason } => {
                metrics.event(event);
                PurchaseError::busy(reason)
            }
            Self::Answer(err) => err,
        }
    }
}

/// Counts a failed attempt's event and turns it into the buyer's answer.
/// Strategies that never retry call this on their one attempt.
pub fn settle<T>(metrics: &Metrics, result: Result<T, Failure>) -> Result<T, PurchaseError> {
    result.map_err(|failure| failure.settle(metrics))
}

/// Ends an attempt's transaction: `COMMIT` if the attempt sold, `ROLLBACK`
/// if not.
///
/// The commit itself can fail (under SERIALIZABLE, PostgreSQL may detect the
/// conflict only now), and that failure is sorted like any other. A rollback
/// that fails changes nothing for the buyer: the transaction is over either
/// way, and its connection is reset before it is reused.
pub async fn finish<T>(
    tx: Transaction<'static, Postgres>,
    attempt: Result<T, Failure>,
) -> Result<T, Failure> {
    match attempt {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(failure) => {
            if let Err(err) = tx.rollback().await {
                tracing::debug!(error = %err, "rollback after a failed attempt");
            }
            Err(failure)
        }
    }
}

/// The same as [`ticket_core::db::insert_order`], for a transaction that may
/// be retried.
///
/// `insert_order` answers with a [`PurchaseError`], which has already lost
/// the SQLSTATE: a serialization failure (40001) or a deadlock (40P01) come
/// back as [`PurchaseError::Busy`], and so may reasons of ticket-core's own
/// (an idempotency key taken over by another request, say). Only the first
/// kind is a race to retry. They differ in one observable way: when
/// PostgreSQL reports 40001 or 40P01 it has aborted our transaction, and
/// any further statement fails with SQLSTATE 25P02
/// (`in_failed_sql_transaction`). So on a busy answer we ask, with a
/// trivial statement, whether the transaction is still alive. This costs a
/// round trip on that rare path only.
pub async fn insert_order_retryable(
    conn: &mut PgConnection,
    purchase: &ticket_core::Purchase,
) -> Result<ticket_core::Order, Failure> {
    match ticket_core::db::insert_order(conn, purchase).await {
        Ok(order) => Ok(order),
        Err(busy @ PurchaseError::Busy { .. }) => {
            let probe = sqlx::query("SELECT 1").execute(&mut *conn).await;
            match probe {
                Err(err) if sqlstate(&err).as_deref() == Some("25P02") => Err(Failure::Lost {
                    event: "serialization_failure",
                }),
                _ => Err(Failure::Answer(busy)),
            }
        }
        Err(other) => Err(Failure::Answer(other)),
    }
}

/// Bounded exponential backoff, shared with the other levels; Level 2 uses
/// full jitter (see [`ticket_core::backoff`]).
pub use ticket_core::backoff::Backoff;

/// How often, and how patiently, a strategy retries a lost race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt. Zero fails fast: the first lost race
    /// is answered 503 busy.
    pub max_retries: u32,
    /// The pause between attempts.
    pub backoff: Backoff,
}

/// Runs `attempt` until it sells or gives a final answer, retrying lost
/// races at most `policy.max_retries` times.
///
/// Each call of `attempt` must begin, and [`finish`], its own transaction:
/// this function only decides *whether* to call it again. It counts, in
/// `metrics`, the event of every lost race, `retry` for every new attempt,
/// and `retries_exhausted` when it gives up and answers busy.
pub async fn with_retries<T, F, Fut>(
    policy: RetryPolicy,
    metrics: &Metrics,
    mut attempt: F,
) -> Result<T, PurchaseError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut retries = 0;
    loop {
        match attempt().await {
            Err(Failure::Lost { event }) => {
                metrics.event(event);
                if retries >= policy.max_retries {
                    metrics.event("retries_exhausted");
                    return Err(PurchaseError::busy(
                        "other buyers kept changing the ticket first; retries ran out",
                    ));
                }
                retries += 1;
                metrics.event("retry");
                tokio::time::sleep(policy.backoff.delay(retries)).await;
            }
            other => return settle(metrics, other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use ticket_core::metrics::sum_samples;

    const BACKOFF: Backoff =
        Backoff::full_jitter(Duration::from_millis(2), Duration::from_millis(50));

    fn events(metrics: &Metrics, event: &str) -> f64 {
        sum_samples(
            &metrics.render(0, 0),
            "ticket_rush_strategy_events_total",
            Some(&format!("event=\"{event}\"")),
        )
    }

    #[tokio::test]
    async fn a_lost_race_is_retried_until_it_wins() {
        let metrics = Metrics::new();
        let policy = RetryPolicy {
            max_retries: 5,
            backoff: Backoff::full_jitter(Duration::ZERO, Duration::ZERO),
        };
        let mut calls = 0;
        let result = with_retries(policy, &metrics, || {
            calls += 1;
            let lost = calls < 3;
            async move {
                if lost {
                    Err(Failure::Lost { event: "conflict" })
                } else {
                    Ok("sold")
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), "sold");
        assert_eq!(calls, 3);
        assert_eq!(events(&metrics, "conflict"), 2.0);
        assert_eq!(events(&metrics, "retry"), 2.0);
        assert_eq!(events(&metrics, "retries_exhausted"), 0.0);
    }

    #[tokio::test]
    async fn zero_retries_answers_busy_at_the_first_lost_race() {
        let metrics = Metrics::new();
        let policy = RetryPolicy {
            max_retries: 0,
            backoff: BACKOFF,
        };
        let mut calls = 0;
        let result: Result<(), _> = with_retries(policy, &metrics, || {
            calls += 1;
            async {
                Err(Failure::Lost {
                    event: "serialization_failure",
                })
            }
        })
        .await;
        assert_eq!(result.unwrap_err().code(), "busy");
        assert_eq!(calls, 1);
        assert_eq!(events(&metrics, "retry"), 0.0);
        assert_eq!(events(&metrics, "retries_exhausted"), 1.0);
    }

    #[tokio::test]
    async fn final_answers_are_never_retried() {
        let metrics = Metrics::new();
        let policy = RetryPolicy {
            max_retries: 5,
            backoff: BACKOFF,
        };
        let mut calls = 0;
        let result: Result<(), _> = with_retries(policy, &metrics, || {
            calls += 1;
            async { Err(Failure::Answer(PurchaseError::SoldOut)) }
        })
        .await;
        assert_eq!(result.unwrap_err().code(), "sold_out");
        assert_eq!(calls, 1);
    }

    #[test]
    fn pool_exhaustion_is_busy_and_counted() {
        let metrics = Metrics::new();
        let answer = settle::<()>(&metrics, Err(Failure::from(sqlx::Error::PoolTimedOut)));
        assert_eq!(answer.unwrap_err().code(), "busy");
        assert_eq!(events(&metrics, "pool_timeout"), 1.0);
    }
}

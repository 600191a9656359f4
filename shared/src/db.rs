//! The PostgreSQL adapter: connection pools, migrations, the queries every
//! level shares, and the translation of database errors into purchase
//! outcomes.
//!
//! Strategies write their own SQL for the part that *is* their lesson (a
//! `FOR UPDATE`, a `WHERE version = $2`); what is the same everywhere (insert
//! an order, read a ticket, reset a sale, count the truth) lives here once.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::Row as _;

use crate::domain::{
    CancelError, Cancellation, Order, OrderId, Purchase, PurchaseError, Ticket, TicketId, UserId,
};

/// The schema, embedded in every binary. Applied with [`migrate`].
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool of at most `max_connections` connections to `url`.
///
/// A buyer who cannot get a connection within `acquire_timeout` is answered
/// `busy` (see [`classify`]): 1000 buyers and a pool of 10 means 990 wait in
/// line *in the server*, which is part of what Level 2 teaches.
pub async fn connect(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> anyhow::Result<PgPool> {
    use sqlx::Connection as _;
    let context = || format!("cannot connect to PostgreSQL at {}", redact(url));
    // One plain connection first: a pool that cannot connect only reports
    // "timed out", while this reports the cause (refused, unknown database,
    // bad password) at once.
    let probe = tokio::time::timeout(acquire_timeout, PgConnection::connect(url))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {acquire_timeout:?}"))
        .with_context(context)?
        .with_context(context)?;
    probe.close().await.ok();
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect(url)
        .await
        .with_context(context)
}

/// Applies the migrations. Safe when two servers start at the same moment:
/// sqlx takes a PostgreSQL advisory lock around the whole run, so the second
/// server waits, then finds everything applied and does nothing.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("cannot apply the database migrations")
}

/// Hides the password in a database URL before it is printed.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _password)) => {
                    format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
                }
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The SQLSTATE of a database error, if `err` is one.
pub fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// SQLSTATE 40001 (serialization_failure) or 40P01 (deadlock_detected): the
/// transaction lost a race that PostgreSQL detected, and may simply be retried.
pub fn is_retryable_conflict(err: &sqlx::Error) -> bool {
    matches!(sqlstate(err).as_deref(), Some("40001" | "40P01"))
}

/// Translates a database error into the purchase outcome a caller acts on.
///
/// The constraints do real work here: a UNIQUE violation *is* the answer
/// "already purchased", a foreign-key violation *is* "no such ticket", and a
/// lock that could not be had (NOWAIT, `lock_timeout`) is "busy, try again".
pub fn classify(err: sqlx::Error) -> PurchaseError {
    match &err {
        sqlx::Error::PoolTimedOut => PurchaseError::busy("every database connection is in use"),
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
            PurchaseError::Unavailable(anyhow::Error::new(err).context("the database"))
        }
        sqlx::Error::Database(_) => match sqlstate(&err).as_deref() {
            Some("23505") => PurchaseError::AlreadyPurchased,
            Some("23503") => PurchaseError::NotFound,
            Some("55P03") => PurchaseError::busy("the ticket row is locked by another buyer"),
            Some("57014") => PurchaseError::busy("the statement waited too long and was cancelled"),
            Some("40001" | "40P01") => {
                PurchaseError::busy("the transaction lost a race and was rolled back")
            }
            Some(code) if code.starts_with("08") || code.starts_with("57P") => {
                PurchaseError::Unavailable(anyhow::Error::new(err).context("the database"))
            }
            _ => PurchaseError::Unexpected(anyhow::Error::new(err)),
        },
        _ => PurchaseError::Unexpected(anyhow::Error::new(err)),
    }
}

impl From<sqlx::Error> for PurchaseError {
    fn from(err: sqlx::Error) -> Self {
        classify(err)
    }
}

/// Inserts the order row for `purchase`, and, when the purchase holds an
/// idempotency claim, completes the claim with the 201 answer *in the same
/// transaction*: the order and the record of its answer commit together, or
/// neither does.
///
/// A second order by the same buyer fails on UNIQUE (ticket_id, user_id) and
/// comes back as [`PurchaseError::AlreadyPurchased`], whatever lock the
/// caller holds.
pub async fn insert_order(
    conn: &mut PgConnection,
    purchase: &Purchase,
) -> Result<Order, PurchaseError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO ticket_orders (ticket_id, user_id) VALUES ($1, $2) RETURNING id",
    )
    .bind(purchase.ticket.get())
    .bind(purchase.user.get())
    .fetch_one(&mut *conn)
    .await?;
    let order = Order {
        order_id: OrderId(id),
        ticket_id: purchase.ticket,
        user_id: purchase.user,
    };
    if let Some(claim) = &purchase.claim {
        crate::idempotency::record_in_transaction(conn, claim, &order).await?;
    }
    Ok(order)
}

/// Cancels `order` of `ticket` for `user`, and restocks its unit, once.
///
/// One transaction: lock the order row, check its owner, move it to
/// `cancelled_orders`, `stock = stock + 1`. Two cancels of one order queue on
/// the order's row lock; the second finds it gone, finds it among the
/// cancelled, and gets the same answer without a second restock.
pub async fn cancel_order(
    pool: &PgPool,
    ticket: TicketId,
    order: OrderId,
    user: UserId,
) -> Result<Cancellation, CancelError> {
    let answer = Cancellation {
        order_id: order,
        ticket_id: ticket,
        user_id: user,
        status: "cancelled",
    };
    let mut tx = pool.begin().await.map_err(PurchaseError::from)?;
    // Behind a busy ticket row a cancel waits like a buyer does, but not
    // forever: past this it is answered busy (SQLSTATE 55P03), and retried.
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await
        .map_err(PurchaseError::from)?;
    let owner = lock_order_owner(&mut tx, ticket, order)
        .await
        .map_err(PurchaseError::from)?;
    match owner {
        Some(owner) if owner != user.get() => Err(CancelError::Forbidden),
        Some(_) => {
            move_to_cancelled(&mut tx, ticket, order)
                .await
                .map_err(PurchaseError::from)?;
            tx.commit().await.map_err(PurchaseError::from)?;
            Ok(answer)
        }
        None => {
            drop(tx);
            let owner = cancelled_order_owner(pool, ticket, order)
                .await
                .map_err(PurchaseError::from)?;
            match owner {
                Some(owner) if owner == user.get() => Ok(answer),
                Some(_) => Err(CancelError::Forbidden),
                None => Err(CancelError::NotFound),
            }
        }
    }
}

/// The buyer of `order` of `ticket`, if it is persisted, with its row locked
/// until the transaction ends: two cancels of one order queue here.
pub async fn lock_order_owner(
    conn: &mut PgConnection,
    ticket: TicketId,
    order: OrderId,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT user_id FROM ticket_orders WHERE id = $1 AND ticket_id = $2 FOR UPDATE",
    )
    .bind(order.0)
    .bind(ticket.get())
    .fetch_optional(conn)
    .await
}

/// The buyer of `order` of `ticket`, if it was cancelled: a repeated cancel
/// gets the first one's answer.
pub async fn cancelled_order_owner<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    ticket: TicketId,
    order: OrderId,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT user_id FROM cancelled_orders WHERE id = $1 AND ticket_id = $2")
        .bind(order.0)
        .bind(ticket.get())
        .fetch_optional(executor)
        .await
}

/// Moves the persisted `order` of `ticket` to `cancelled_orders` and puts its
/// unit back on sale, in the caller's transaction (after
/// [`lock_order_owner`]).
pub async fn move_to_cancelled(
    conn: &mut PgConnection,
    ticket: TicketId,
    order: OrderId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH gone AS (DELETE FROM ticket_orders WHERE id = $1 \
                       RETURNING id, ticket_id, user_id, created_at) \
         INSERT INTO cancelled_orders (id, ticket_id, user_id, ordered_at) \
         SELECT id, ticket_id, user_id, created_at FROM gone",
    )
    .bind(order.0)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE tickets SET stock = stock + 1, version = version + 1 WHERE id = $1")
        .bind(ticket.get())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Whether `user` already holds `ticket`. Strategies that hold a lock ask
/// this before touching stock, so that a second click by the same buyer is
/// answered without spending a unit of stock.
pub async fn has_order(
    conn: &mut PgConnection,
    ticket: TicketId,
    user: UserId,
) -> Result<bool, PurchaseError> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM ticket_orders WHERE ticket_id = $1 AND user_id = $2")
            .bind(ticket.get())
            .bind(user.get())
            .fetch_optional(&mut *conn)
            .await?;
    Ok(found.is_some())
}

/// Reads a ticket with both counts of what was sold (see [`Ticket`]).
pub async fn fetch_ticket(pool: &PgPool, id: TicketId) -> Result<Option<Ticket>, PurchaseError> {
    let row = sqlx::query(
        "SELECT t.name, t.total, t.stock, \
                (SELECT count(*) FROM ticket_orders o WHERE o.ticket_id = t.id) AS sold \
         FROM tickets t WHERE t.id = $1",
    )
    .bind(id.get())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| Ticket {
        id,
        name: row.get("name"),
        total: row.get("total"),
        stock: row.get("stock"),
        sold: row.get("sold"),
    }))
}

/// Puts `ticket` on sale afresh: deletes its orders and sets total and stock
/// to `stock`, creating the row if needed. The load tool calls this before
/// every run.
pub async fn reset_ticket(
    pool: &PgPool,
    ticket: TicketId,
    name: &str,
    stock: i32,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await.context("begin reset")?;
    reset_ticket_in(&mut tx, ticket, name, stock).await?;
    tx.commit().await.context("commit reset")?;
    Ok(())
}

/// [`reset_ticket`] inside the caller's transaction (Level 4 fences Redis
/// between taking the ticket's row lock and this).
pub async fn reset_ticket_in(
    conn: &mut PgConnection,
    ticket: TicketId,
    name: &str,
    stock: i32,
) -> anyhow::Result<()> {
    for forget in [
        "DELETE FROM ticket_orders WHERE ticket_id = $1",
        "DELETE FROM cancelled_orders WHERE ticket_id = $1",
        "DELETE FROM idempotency_keys WHERE ticket_id = $1",
    ] {
        sqlx::query(forget)
            .bind(ticket.get())
            .execute(&mut *conn)
            .await
            .context("forget the ticket's previous sale")?;
    }
    sqlx::query(
        "INSERT INTO tickets (id, name, total, stock, version) VALUES ($1, $2, $3, $3, 0) \
         ON CONFLICT (id) DO UPDATE SET name = $2, total = $3, stock = $3, version = 0",
    )
    .bind(ticket.get())
    .bind(name)
    .bind(stock)
    .execute(&mut *conn)
    .await
    .context("reset the ticket's stock")?;
    Ok(())
}

/// What the database says happened to one ticket: the ground truth a load
/// run is judged by (see [`crate::verify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DbTruth {
    /// Units put on sale.
    pub total: i32,
    /// The stock column as it stands.
    pub stock: i32,
    /// Order rows for the ticket.
    pub orders: i64,
    /// Distinct buyers among those rows.
    pub distinct_buyers: i64,
}

impl DbTruth {
    /// Rows beyond one per buyer. UNIQUE (ticket_id, user_id) should keep this
    /// at zero; the verifier counts it instead of trusting the constraint.
    pub fn duplicate_orders(&self) -> i64 {
        self.orders - self.distinct_buyers
    }
}

/// Reads [`DbTruth`] for `ticket` in one consistent snapshot.
pub async fn truth(pool: &PgPool, ticket: TicketId) -> anyhow::Result<DbTruth> {
    let row = sqlx::query(
        "SELECT t.total, t.stock, \
                (SELECT count(*) FROM ticket_orders o WHERE o.ticket_id = t.id) AS orders, \
                (SELECT count(DISTINCT o.user_id) FROM ticket_orders o WHERE o.ticket_id = t.id) AS buyers \
         FROM tickets t WHERE t.id = $1",
    )
    .bind(ticket.get())
    .fetch_optional(pool)
    .await
    .context("read the ticket's orders and stock")?
    .with_context(|| format!("ticket {ticket} does not exist"))?;
    Ok(DbTruth {
        total: row.get("total"),
        stock: row.get("stock"),
        orders: row.get("orders"),
        distinct_buyers: row.get("buyers"),
    })
}

/// The user id of every order row for `ticket`, sorted (a user appears once
/// per row they hold). The verifier compares these identities with the users
/// the servers answered 201: equal counts can hide a server that wrote the
/// rows for other people.
pub async fn order_holders(pool: &PgPool, ticket: TicketId) -> anyhow::Result<Vec<i64>> {
    sqlx::query_scalar("SELECT user_id FROM ticket_orders WHERE ticket_id = $1 ORDER BY user_id")
        .bind(ticket.get())
        .fetch_all(pool)
        .await
        .context("read who holds the ticket's orders")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("postgres://rush:secret@127.0.0.1:5432/rush"),
            "postgres://rush:***@127.0.0.1:5432/rush"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/rush"),
            "postgres://postgres@127.0.0.1/rush"
        );
        assert_eq!(redact("postgres:///rush"), "postgres:///rush");
    }

    #[test]
    fn pool_exhaustion_is_busy_not_a_bug() {
        assert_eq!(classify(sqlx::Error::PoolTimedOut).code(), "busy");
        assert_eq!(classify(sqlx::Error::PoolClosed).code(), "unavailable");
        assert_eq!(classify(sqlx::Error::RowNotFound).code(), "internal");
        // (SQLSTATEs need a live database error; load/tests cover 55P03.)
    }
}

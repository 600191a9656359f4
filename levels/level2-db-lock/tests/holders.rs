//! What a buyer who holds a lock does to everyone else, through HTTP against
//! a real PostgreSQL: which other work its row lock lets through, and what
//! ends a holder that stalls in the middle of its transaction.

mod common;

use std::time::Duration;

use common::{Sale, TICKET};
use reqwest::StatusCode;
use ticket_core::db;

/// Waits until some transaction holds the ticket's row lock: the test's own
/// `FOR NO KEY UPDATE NOWAIT` is refused (55P03). Takes the lock for an
/// instant when it is free, and lets it go at once.
async fn wait_until_the_row_is_held(sale: &Sale) -> anyhow::Result<()> {
    for _ in 0..1000 {
        let mut probe = sale.pool.begin().await?;
        let attempt = sqlx::query("SELECT 1 FROM tickets WHERE id = $1 FOR NO KEY UPDATE NOWAIT")
            .bind(TICKET)
            .execute(&mut *probe)
            .await;
        probe.rollback().await.ok();
        match attempt {
            Err(err) if db::sqlstate(&err).as_deref() == Some("55P03") => return Ok(()),
            Err(err) => return Err(err.into()),
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    anyhow::bail!("nobody took the ticket's row lock within 10 s")
}

/// Inserts an order for the ticket in a transaction of the test's own, as a
/// cancellation, an import or another level's writer would, waiting at most
/// one second for locks; rolls it back. Returns the SQLSTATE if refused.
async fn insert_an_order_elsewhere(sale: &Sale) -> anyhow::Result<Option<String>> {
    let mut tx = sale.pool.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '1s'")
        .execute(&mut *tx)
        .await?;
    let insert = sqlx::query("INSERT INTO ticket_orders (ticket_id, user_id) VALUES ($1, 99)")
        .bind(TICKET)
        .execute(&mut *tx)
        .await;
    tx.rollback().await.ok();
    Ok(insert.err().and_then(|err| db::sqlstate(&err)))
}

/// `pessimistic` locks the ticket row `FOR NO KEY UPDATE`, not `FOR UPDATE`:
/// while a buyer holds it (through a 3 s think time), another transaction's
/// order insert for that ticket goes through at once, because its
/// foreign-key check takes `FOR KEY SHARE` on the ticket row, which only
/// `FOR UPDATE` blocks. With `FOR UPDATE` the insert would wait out its 1 s
/// lock timeout (55P03).
#[tokio::test]
async fn pessimistic_row_lock_lets_other_transactions_insert_orders_for_the_ticket(
) -> anyhow::Result<()> {
    // Arrange
    let args = [
        "--strategy",
        "pessimistic",
        "--think-time-ms",
        "3000",
        "--lock-timeout-ms",
        "10000",
    ];
    let sale = Sale::start(1, &args, 10).await?;

    // Act: while the buyer holds the row and thinks, insert an order.
    let buying = sale.buy(0, 7);
    let elsewhere = async {
        wait_until_the_row_is_held(&sale).await?;
        insert_an_order_elsewhere(&sale).await
    };
    let (sold, refused) = tokio::join!(buying, elsewhere);

    // Assert
    assert_eq!(refused?, None, "the insert must not wait for the sale");
    let sold = sold?;
    assert_eq!(sold.status, StatusCode::CREATED, "{sold:?}");
    let truth = sale.truth().await?;
    assert_eq!((truth.orders, truth.stock), (1, 9));
    sale.stop().await
}

/// Which buyers hold an order for the ticket, by identity.
async fn buyers_with_orders(sale: &Sale) -> anyhow::Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT user_id FROM ticket_orders WHERE ticket_id = $1 ORDER BY user_id",
    )
    .bind(TICKET)
    .fetch_all(&sale.pool)
    .await?)
}

/// A holder that stalls between two statements (a 3 s think time while
/// holding the row) is bounded by neither `lock_timeout` nor
/// `statement_timeout`: no statement runs, and it waits for nothing.
/// `idle_in_transaction_session_timeout` (300 ms here) ends its session:
/// its transaction rolls back, its buyer is answered 503 busy, and the
/// buyer queued behind it (on another server) gets the row and sells.
#[tokio::test]
async fn a_stalled_holder_is_ended_by_the_idle_in_transaction_timeout_and_the_next_buyer_sells(
) -> anyhow::Result<()> {
    // Arrange: server 0 stalls inside every sale; server 1 does not, and
    // waits up to 10 s for the row.
    let stalling: &[&str] = &[
        "--strategy",
        "pessimistic",
        "--think-time-ms",
        "3000",
        "--idle-in-transaction-timeout-ms",
        "300",
    ];
    let patient: &[&str] = &["--strategy", "pessimistic", "--lock-timeout-ms", "10000"];
    let sale = Sale::start_each(&[stalling, patient], 10).await?;

    // Act: buyer 7 takes the row on server 0 and stalls; buyer 8 queues
    // for it on server 1.
    let stalled = sale.buy(0, 7);
    let next = async {
        wait_until_the_row_is_held(&sale).await?;
        sale.buy(1, 8).await
    };
    let (stalled, next) = tokio::join!(stalled, next);

    // Assert
    let (stalled, next) = (stalled?, next?);
    assert!(stalled.is_busy(), "the stalled buyer: {stalled:?}");
    assert_eq!(next.status, StatusCode::CREATED, "the next buyer: {next:?}");
    assert_eq!(buyers_with_orders(&sale).await?, vec![8]);
    assert_eq!(sale.truth().await?.stock, 9);
    assert_eq!(sale.events(0, "idle_in_transaction_timeout").await?, 1.0);
    sale.stop().await
}

/// `advisory`: while one buyer holds the ticket's advisory lock (a 3 s
/// think time), a buyer on another server waits for it at most
/// `--lock-timeout-ms` (300 ms) and is answered 503 busy, with nothing
/// written; the holder sells. The lock is the ticket's number, not its row:
/// the row itself stays free for other transactions meanwhile.
#[tokio::test]
async fn advisory_makes_a_buyer_on_another_server_wait_for_the_tickets_named_lock(
) -> anyhow::Result<()> {
    // Arrange
    let holder: &[&str] = &["--strategy", "advisory", "--think-time-ms", "3000"];
    let waiter: &[&str] = &["--strategy", "advisory", "--lock-timeout-ms", "300"];
    let sale = Sale::start_each(&[holder, waiter], 10).await?;

    // Act
    let holding = sale.buy(0, 7);
    let waiting = async {
        wait_until_the_advisory_lock_is_held(&sale).await?;
        let row_is_free = insert_an_order_elsewhere(&sale).await?.is_none();
        Ok::<_, anyhow::Error>((sale.buy(1, 8).await?, row_is_free))
    };
    let (held, waited) = tokio::join!(holding, waiting);

    // Assert
    let (held, (waited, row_is_free)) = (held?, waited?);
    assert_eq!(held.status, StatusCode::CREATED, "{held:?}");
    assert!(
        waited.is_busy(),
        "the second buyer must not get in: {waited:?}"
    );
    assert!(row_is_free, "an advisory lock does not lock the row");
    assert_eq!(buyers_with_orders(&sale).await?, vec![7]);
    assert_eq!(sale.events(1, "lock_timeout").await?, 1.0);
    sale.stop().await
}

/// Waits until some session holds an advisory lock in this database.
async fn wait_until_the_advisory_lock_is_held(sale: &Sale) -> anyhow::Result<()> {
    for _ in 0..1000 {
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()",
        )
        .fetch_one(&sale.pool)
        .await?;
        if held > 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("nobody took an advisory lock within 10 s")
}

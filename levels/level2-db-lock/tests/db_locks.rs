//! Level 2's locks, shown one at a time, through HTTP against a real
//! PostgreSQL and checked in the database.
//!
//! Most tests make the contention themselves instead of hoping a crowd
//! produces it: the test holds the ticket's row lock in its own transaction,
//! or two buyers race inside a wide `--think-time-ms` window. The
//! 1000-buyer rushes, two servers each, live in `load/tests/level2.rs`.

mod common;

use std::time::Duration;

use common::{Sale, TICKET};
use reqwest::StatusCode;
use ticket_core::db;

/// `nowait` does not queue: while another transaction holds the ticket's row,
/// the buyer is told 503 busy (with Retry-After) at once, and nothing is
/// written. Once the row is free, the same buyer's next click sells.
#[tokio::test]
async fn nowait_answers_busy_at_once_while_another_transaction_holds_the_row() -> anyhow::Result<()>
{
    // Arrange
    let sale = Sale::start(1, &["--strategy", "nowait"], 10).await?;
    let holder = sale.hold_row_lock().await?;

    // Act
    let refused = sale.buy(0, 7).await?;

    // Assert
    assert!(refused.is_busy(), "{refused:?}");
    assert!(
        refused.took < Duration::from_secs(1),
        "NOWAIT should not wait, took {:?}",
        refused.took
    );
    let truth = sale.truth().await?;
    assert_eq!((truth.orders, truth.stock), (0, 10), "nothing was written");
    assert_eq!(sale.events(0, "lock_refused").await?, 1.0);

    holder.rollback().await?;
    let sold = sale.buy(0, 7).await?;
    assert_eq!(sold.status, StatusCode::CREATED, "{sold:?}");
    let truth = sale.truth().await?;
    assert_eq!((truth.orders, truth.stock), (1, 9));
    sale.stop().await
}

/// `pessimistic` queues for the row, but only for `--lock-timeout-ms`: then
/// PostgreSQL cancels the wait, the buyer is told 503 busy (with
/// Retry-After), and nothing is written.
#[tokio::test]
async fn pessimistic_gives_up_after_its_lock_timeout_while_another_transaction_holds_the_row(
) -> anyhow::Result<()> {
    // Arrange
    let sale = Sale::start(
        1,
        &["--strategy", "pessimistic", "--lock-timeout-ms", "150"],
        10,
    )
    .await?;
    let holder = sale.hold_row_lock().await?;

    // Act
    let refused = sale.buy(0, 7).await?;

    // Assert
    assert!(refused.is_busy(), "{refused:?}");
    assert!(
        refused.took >= Duration::from_millis(150),
        "it should have waited lock_timeout first, took {:?}",
        refused.took
    );
    let truth = sale.truth().await?;
    assert_eq!((truth.orders, truth.stock), (0, 10), "nothing was written");
    assert_eq!(sale.events(0, "lock_timeout").await?, 1.0);

    holder.rollback().await?;
    let sold = sale.buy(0, 7).await?;
    assert_eq!(sold.status, StatusCode::CREATED, "{sold:?}");
    sale.stop().await
}

/// In a rush, a `FOR UPDATE` re-queues each time the hot row gets a new
/// version, and PostgreSQL's `lock_timeout` only limits each of those short
/// waits. `pessimistic` also sets `statement_timeout`, so the *whole* wait is
/// bounded: 30 buyers queueing behind 50 ms sales (1.5 s for the last one)
/// with a 300 ms timeout means some are answered busy, and nothing is
/// oversold.
#[tokio::test]
async fn pessimistic_bounds_the_whole_wait_behind_a_queue_of_buyers() -> anyhow::Result<()> {
    // Arrange
    let args = [
        "--strategy",
        "pessimistic",
        "--max-connections",
        "30",
        "--think-time-ms",
        "50",
        "--lock-timeout-ms",
        "300",
    ];
    let sale = Sale::start(1, &args, 100).await?;

    // Act
    let answers = futures::future::try_join_all((1..=30).map(|user| sale.buy(0, user))).await?;

    // Assert
    let created = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .count();
    let busy = answers.iter().filter(|a| a.is_busy()).count();
    assert_eq!(created + busy, 30, "{answers:?}");
    assert!(
        busy > 0,
        "the last in the queue should time out: {answers:?}"
    );
    assert_eq!(sale.events(0, "lock_timeout").await?, busy as f64);
    let truth = sale.truth().await?;
    assert_eq!(truth.orders, created as i64);
    assert_eq!(i64::from(truth.stock), 100 - created as i64);
    sale.stop().await
}

/// Within its lock timeout, `pessimistic` simply waits its turn: the
/// purchase completes as soon as the holder commits.
#[tokio::test]
async fn pessimistic_waits_for_a_row_released_within_its_lock_timeout_and_then_sells(
) -> anyhow::Result<()> {
    // Arrange
    let sale = Sale::start(
        1,
        &["--strategy", "pessimistic", "--lock-timeout-ms", "10000"],
        10,
    )
    .await?;
    let holder = sale.hold_row_lock().await?;

    // Act: the buyer arrives while the row is held...
    let buying = sale.buy(0, 7);
    let release = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        holder.commit().await
    };
    let (sold, released) = tokio::join!(buying, release);
    released?;
    let sold = sold?;

    // Assert: ...waited for it, and bought.
    assert_eq!(sold.status, StatusCode::CREATED, "{sold:?}");
    assert!(sold.took >= Duration::from_millis(300), "{sold:?}");
    let truth = sale.truth().await?;
    assert_eq!((truth.orders, truth.stock), (1, 9));
    assert_eq!(sale.events(0, "lock_timeout").await?, 0.0);
    sale.stop().await
}

/// `atomic` takes no explicit lock, but its UPDATE locks the row until
/// COMMIT, and its think time runs inside that window: during it, nobody
/// else can lock the row.
#[tokio::test]
async fn atomic_holds_the_row_lock_from_its_update_to_its_commit() -> anyhow::Result<()> {
    // Arrange
    let sale = Sale::start(1, &["--strategy", "atomic", "--think-time-ms", "600"], 10).await?;

    // Act: while the purchase is thinking, try to take the row ourselves.
    let buying = sale.buy(0, 7);
    let probe = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut tx = sale.pool.begin().await?;
        let locked = sqlx::query("SELECT 1 FROM tickets WHERE id = $1 FOR UPDATE NOWAIT")
            .bind(TICKET)
            .execute(&mut *tx)
            .await;
        tx.rollback().await.ok();
        anyhow::Ok(locked.err().and_then(|err| db::sqlstate(&err)))
    };
    let (sold, probe) = tokio::join!(buying, probe);

    // Assert
    assert_eq!(
        probe?.as_deref(),
        Some("55P03"),
        "the row should be locked while atomic thinks"
    );
    let sold = sold?;
    assert_eq!(sold.status, StatusCode::CREATED, "{sold:?}");
    let truth = sale.truth().await?;
    assert_eq!((truth.orders, truth.stock), (1, 9));
    sale.stop().await
}

/// Two buyers, two servers, one wide race window: both read version 0, one
/// commits first, and the other's `WHERE version = 0` matches nothing. With
/// `--max-retries 0` the loser is told 503 busy at once; nothing is
/// oversold.
#[tokio::test]
async fn optimistic_without_retries_answers_busy_to_the_buyer_who_lost_the_version_race(
) -> anyhow::Result<()> {
    // Arrange
    let args = [
        "--strategy",
        "optimistic",
        "--max-retries",
        "0",
        "--think-time-ms",
        "300",
    ];
    let sale = Sale::start(2, &args, 10).await?;

    // Act
    let (first, second) = tokio::join!(sale.buy(0, 1), sale.buy(1, 2));
    let answers = [first?, second?];

    // Assert
    let created = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .count();
    let busy = answers.iter().filter(|a| a.is_busy()).count();
    assert_eq!((created, busy), (1, 1), "{answers:?}");
    let truth = sale.truth().await?;
    assert_eq!((truth.orders, truth.stock), (1, 9));
    let conflicts = sale.events(0, "conflict").await? + sale.events(1, "conflict").await?;
    let exhausted =
        sale.events(0, "retries_exhausted").await? + sale.events(1, "retries_exhausted").await?;
    assert_eq!((conflicts, exhausted), (1.0, 1.0));
    sale.stop().await
}

/// The same race with retries allowed: the loser reads again, in a fresh
/// transaction, and buys. Both buyers get a ticket, each unit sold once.
#[tokio::test]
async fn optimistic_retries_a_lost_version_race_and_both_buyers_get_a_ticket() -> anyhow::Result<()>
{
    // Arrange
    let args = [
        "--strategy",
        "optimistic",
        "--max-retries",
        "3",
        "--think-time-ms",
        "300",
    ];
    let sale = Sale::start(2, &args, 10).await?;

    // Act
    let (first, second) = tokio::join!(sale.buy(0, 1), sale.buy(1, 2));

    // Assert
    assert_eq!(first?.status, StatusCode::CREATED);
    assert_eq!(second?.status, StatusCode::CREATED);
    let truth = sale.truth().await?;
    assert_eq!((truth.orders, truth.stock), (2, 8));
    let conflicts = sale.events(0, "conflict").await? + sale.events(1, "conflict").await?;
    let retries = sale.events(0, "retry").await? + sale.events(1, "retry").await?;
    assert!(conflicts >= 1.0 && retries >= 1.0, "{conflicts} {retries}");
    sale.stop().await
}

/// Level 0's naive sale under SERIALIZABLE: both buyers read stock 10 and
/// both write 9, which no serial order allows, so PostgreSQL rolls one back
/// with SQLSTATE 40001. The loser retries in a fresh transaction and buys:
/// two orders, stock 8.
#[tokio::test]
async fn serializable_retries_a_serialization_failure_and_both_buyers_get_a_ticket(
) -> anyhow::Result<()> {
    // Arrange
    let args = [
        "--strategy",
        "serializable",
        "--max-retries",
        "3",
        "--think-time-ms",
        "300",
    ];
    let sale = Sale::start(2, &args, 10).await?;

    // Act
    let (first, second) = tokio::join!(sale.buy(0, 1), sale.buy(1, 2));

    // Assert
    assert_eq!(first?.status, StatusCode::CREATED);
    assert_eq!(second?.status, StatusCode::CREATED);
    let truth = sale.truth().await?;
    assert_eq!((truth.orders, truth.stock), (2, 8));
    let failures = sale.events(0, "serialization_failure").await?
        + sale.events(1, "serialization_failure").await?;
    let retries = sale.events(0, "retry").await? + sale.events(1, "retry").await?;
    assert!(failures >= 1.0 && retries >= 1.0, "{failures} {retries}");
    sale.stop().await
}

/// With no retries, SERIALIZABLE's loser is answered 503 busy, and the
/// database holds exactly the one sale it allowed.
#[tokio::test]
async fn serializable_without_retries_answers_busy_to_the_rolled_back_buyer() -> anyhow::Result<()>
{
    // Arrange
    let args = [
        "--strategy",
        "serializable",
        "--max-retries",
        "0",
        "--think-time-ms",
        "300",
    ];
    let sale = Sale::start(2, &args, 10).await?;

    // Act
    let (first, second) = tokio::join!(sale.buy(0, 1), sale.buy(1, 2));
    let answers = [first?, second?];

    // Assert
    let created = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .count();
    let busy = answers.iter().filter(|a| a.is_busy()).count();
    assert_eq!((created, busy), (1, 1), "{answers:?}");
    let truth = sale.truth().await?;
    assert_eq!((truth.orders, truth.stock), (1, 9));
    sale.stop().await
}

/// A pool of one connection, held by a slow sale: the next buyer waits
/// `--acquire-timeout-ms` for a connection inside the server, then is told
/// 503 busy rather than left hanging. This is what 1000 buyers meeting a
/// pool of 10 looks like, one buyer at a time.
#[tokio::test]
async fn a_buyer_who_finds_every_connection_in_use_is_answered_busy() -> anyhow::Result<()> {
    // Arrange
    let args = [
        "--strategy",
        "atomic",
        "--max-connections",
        "1",
        "--acquire-timeout-ms",
        "100",
        "--think-time-ms",
        "800",
    ];
    let sale = Sale::start(1, &args, 10).await?;

    // Act: user 1 takes the only connection for 800 ms; user 2 arrives.
    let slow = sale.buy(0, 1);
    let late = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sale.buy(0, 2).await
    };
    let (slow, late) = tokio::join!(slow, late);

    // Assert
    assert_eq!(slow?.status, StatusCode::CREATED);
    let late = late?;
    assert!(late.is_busy(), "{late:?}");
    assert_eq!(sale.events(0, "pool_timeout").await?, 1.0);
    let truth = sale.truth().await?;
    assert_eq!((truth.orders, truth.stock), (1, 9));
    sale.stop().await
}

/// Every strategy answers a second purchase by the same buyer with 409
/// `already_purchased`, and spends no stock on it.
#[tokio::test]
async fn every_strategy_refuses_a_second_order_by_the_same_buyer() -> anyhow::Result<()> {
    for entry in level2::STRATEGIES {
        // Arrange
        let sale = Sale::start(1, &["--strategy", entry.name], 10).await?;

        // Act
        let first = sale.buy(0, 42).await?;
        let second = sale.buy(0, 42).await?;

        // Assert
        assert_eq!(first.status, StatusCode::CREATED, "{}", entry.name);
        assert_eq!(second.status, StatusCode::CONFLICT, "{}", entry.name);
        assert_eq!(
            second.code.as_deref(),
            Some("already_purchased"),
            "{}",
            entry.name
        );
        let truth = sale.truth().await?;
        assert_eq!((truth.orders, truth.stock), (1, 9), "{}", entry.name);
        sale.stop().await?;
    }
    Ok(())
}

/// Every strategy says `sold_out` (409) once the stock is gone, and
/// `not_found` (404) for a ticket that does not exist.
#[tokio::test]
async fn every_strategy_answers_sold_out_and_not_found() -> anyhow::Result<()> {
    for entry in level2::STRATEGIES {
        // Arrange: one unit on sale.
        let sale = Sale::start(1, &["--strategy", entry.name], 1).await?;

        // Act
        let sold = sale.buy(0, 1).await?;
        let late = sale.buy(0, 2).await?;
        let missing = sale
            .http
            .post(format!("{}/tickets/999/orders", sale.servers[0].url()))
            .json(&serde_json::json!({ "user_id": 3 }))
            .send()
            .await?;

        // Assert
        assert_eq!(sold.status, StatusCode::CREATED, "{}", entry.name);
        assert_eq!(late.status, StatusCode::CONFLICT, "{}", entry.name);
        assert_eq!(late.code.as_deref(), Some("sold_out"), "{}", entry.name);
        assert_eq!(missing.status(), StatusCode::NOT_FOUND, "{}", entry.name);
        let truth = sale.truth().await?;
        assert_eq!((truth.orders, truth.stock), (1, 0), "{}", entry.name);
        sale.stop().await?;
    }
    Ok(())
}

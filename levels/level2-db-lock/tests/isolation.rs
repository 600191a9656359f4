//! PostgreSQL's own rules, shown with two transactions interleaved by hand
//! on a real server: what REPEATABLE READ already prevents, what only
//! SERIALIZABLE prevents (write skew), a deadlock on demand, and
//! `SKIP LOCKED`. No HTTP: each step is one statement, in the order the
//! test writes them, so every outcome reproduces on every run.

use anyhow::Context as _;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use ticket_core::db::{self, sqlstate};
use ticket_core::services::Postgres as Server;
use ticket_core::TicketId;

/// A fresh database with ticket 1 on sale (`stock` units) and ticket 2 (10).
async fn database(stock: i32) -> anyhow::Result<PgPool> {
    let url = Server::shared()?.fresh_database().await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .context("the test's pool")?;
    db::migrate(&pool).await?;
    db::reset_ticket(&pool, TicketId::parse(1)?, "Isolation lesson", stock).await?;
    db::reset_ticket(&pool, TicketId::parse(2)?, "Second ticket", 10).await?;
    Ok(pool)
}

async fn begin(pool: &PgPool, isolation: &str) -> anyhow::Result<Transaction<'static, Postgres>> {
    Ok(pool
        .begin_with(format!("BEGIN ISOLATION LEVEL {isolation}"))
        .await?)
}

/// Level 0's read: the stock, as this transaction's snapshot shows it.
async fn read_stock(tx: &mut PgConnection) -> anyhow::Result<i32> {
    Ok(sqlx::query_scalar("SELECT stock FROM tickets WHERE id = 1")
        .fetch_one(tx)
        .await?)
}

/// Level 0's write: a stock computed from what was read.
async fn write_stock(tx: &mut PgConnection, stock: i32) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tickets SET stock = $1 WHERE id = 1")
        .bind(stock)
        .execute(tx)
        .await
        .map(drop)
}

/// The check of a sale that keeps no stock counter: count the orders.
async fn count_orders(tx: &mut PgConnection) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM ticket_orders WHERE ticket_id = 1")
            .fetch_one(tx)
            .await?,
    )
}

async fn insert_order(tx: &mut PgConnection, user: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO ticket_orders (ticket_id, user_id) VALUES (1, $1)")
        .bind(user)
        .execute(tx)
        .await
        .map(drop)
}

async fn orders_in_database(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM ticket_orders WHERE ticket_id = 1")
            .fetch_one(pool)
            .await?,
    )
}

/// The lost update of Level 0 (both read 10, both write 9) is already
/// refused under REPEATABLE READ, not only SERIALIZABLE: the second writer
/// waits for the first one's row lock, and when that one commits it fails
/// with 40001 "could not serialize access due to concurrent update".
/// PostgreSQL calls this first-updater-wins; it is the error the
/// `serializable` strategy's losers see in a rush.
#[tokio::test]
async fn repeatable_read_already_refuses_a_lost_update_first_updater_wins() -> anyhow::Result<()> {
    // Arrange: both buyers read stock 10 in their snapshots.
    let pool = database(10).await?;
    let mut first = begin(&pool, "REPEATABLE READ").await?;
    let mut second = begin(&pool, "REPEATABLE READ").await?;
    let first_read = read_stock(&mut first).await?;
    let second_read = read_stock(&mut second).await?;
    assert_eq!((first_read, second_read), (10, 10));

    // Act: the first writes and commits; then the second writes.
    write_stock(&mut first, first_read - 1).await?;
    first.commit().await?;
    let refused = write_stock(&mut second, second_read - 1).await;

    // Assert
    let err = refused.expect_err("the second update must be refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("40001"), "{err}");
    assert!(
        err.to_string().contains("concurrent update"),
        "first-updater-wins: {err}"
    );
    second.rollback().await?;
    assert_eq!(read_stock(&mut *pool.acquire().await?).await?, 9);
    Ok(())
}

/// Runs the write-skew sale twice, interleaved, under `isolation`: one
/// ticket left (a limit of one order), two buyers each count the orders
/// (zero), each insert their own order, each commit. Neither updates a row
/// the other wrote, so there is no first-updater to win. Returns the two
/// commits' outcomes (an insert refused early counts as a refused commit).
async fn count_then_insert_twice(
    pool: &PgPool,
    isolation: &str,
) -> anyhow::Result<[Result<(), sqlx::Error>; 2]> {
    let mut alice = begin(pool, isolation).await?;
    let mut bob = begin(pool, isolation).await?;
    assert_eq!(count_orders(&mut alice).await?, 0, "alice sees one left");
    assert_eq!(count_orders(&mut bob).await?, 0, "bob sees one left");
    insert_order(&mut alice, 101).await?;
    let bob_insert = insert_order(&mut bob, 102).await;
    let alice_commit = alice.commit().await;
    let bob_commit = match bob_insert {
        Ok(()) => bob.commit().await,
        Err(err) => Err(err),
    };
    Ok([alice_commit, bob_commit])
}

/// Write skew: two transactions each check a condition over rows (the count
/// of orders) and each write a *different* row. REPEATABLE READ lets both
/// commit, because no row was updated twice: two orders for one ticket.
/// This is the anomaly only SERIALIZABLE prevents; see the next test.
#[tokio::test]
async fn write_skew_sells_one_ticket_twice_under_repeatable_read() -> anyhow::Result<()> {
    // Arrange
    let pool = database(1).await?;

    // Act
    let [alice, bob] = count_then_insert_twice(&pool, "REPEATABLE READ").await?;

    // Assert
    assert!(alice.is_ok() && bob.is_ok(), "{alice:?} {bob:?}");
    assert_eq!(
        orders_in_database(&pool).await?,
        2,
        "one ticket, two orders"
    );
    Ok(())
}

/// The same interleaving under SERIALIZABLE: PostgreSQL's SIRead locks note
/// what each transaction's count read (the orders index range, or the whole
/// table when the planner scans it sequentially), see that each one's
/// insert would have changed the other's count, and fail one of them with
/// 40001. One order, never two.
#[tokio::test]
async fn serializable_refuses_the_write_skew_that_repeatable_read_lets_through(
) -> anyhow::Result<()> {
    // Arrange
    let pool = database(1).await?;

    // Act
    let [alice, bob] = count_then_insert_twice(&pool, "SERIALIZABLE").await?;

    // Assert
    assert!(alice.is_ok(), "the first to commit wins: {alice:?}");
    let err = bob.expect_err("the second must be refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("40001"), "{err}");
    assert_eq!(orders_in_database(&pool).await?, 1);
    Ok(())
}

/// Locks one ticket row, as a sale of that ticket would.
async fn lock_ticket(tx: &mut PgConnection, ticket: i64) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM tickets WHERE id = $1 FOR NO KEY UPDATE")
        .bind(ticket)
        .execute(tx)
        .await
        .map(drop)
}

/// A deadlock on demand: two transactions lock tickets 1 and 2 in opposite
/// orders. Each then waits for the other; after `deadlock_timeout` (set to
/// 50 ms here, 1 s by default) PostgreSQL looks for a cycle, finds it and
/// aborts one of them with 40P01. The other gets its lock and commits.
/// Taking locks in one global order (by ticket id) makes the cycle
/// impossible.
#[tokio::test]
async fn two_transactions_locking_in_opposite_orders_deadlock_and_one_is_aborted_with_40p01(
) -> anyhow::Result<()> {
    // Arrange: `first` holds ticket 1, `second` holds ticket 2.
    let pool = database(10).await?;
    let mut first = pool.begin().await?;
    let mut second = pool.begin().await?;
    for tx in [&mut first, &mut second] {
        // Superuser-only setting; the throwaway server's user is one.
        sqlx::query("SET LOCAL deadlock_timeout = '50ms'")
            .execute(&mut **tx)
            .await?;
    }
    lock_ticket(&mut first, 1).await?;
    lock_ticket(&mut second, 2).await?;

    // Act: `first` queues for ticket 2 (it cannot get it yet), then
    // `second` queues for ticket 1, closing the cycle. Each side ends its
    // own transaction as soon as its wait is over (the victim rolls back,
    // which frees its lock for the other), so neither waits on the test.
    let first_waits = tokio::spawn(async move {
        let result = lock_ticket(&mut first, 2).await;
        end(first, &result).await.map(|()| result)
    });
    wait_until_someone_waits_for_a_lock(&pool).await?;
    let second_result = lock_ticket(&mut second, 1).await;
    end(second, &second_result).await?;
    let first_result = first_waits.await??;

    // Assert: exactly one of the two was chosen as the victim.
    let codes = [&first_result, &second_result].map(|r| r.as_ref().err().and_then(sqlstate));
    let aborted = codes
        .iter()
        .filter(|c| c.as_deref() == Some("40P01"))
        .count();
    assert_eq!(aborted, 1, "one victim with 40P01: {codes:?}");
    assert!(
        codes
            .iter()
            .all(|c| c.is_none() || c.as_deref() == Some("40P01")),
        "{codes:?}"
    );
    Ok(())
}

/// Commits `tx` if its last step worked, rolls it back if not.
async fn end(
    tx: Transaction<'static, Postgres>,
    step: &Result<(), sqlx::Error>,
) -> anyhow::Result<()> {
    match step {
        Ok(()) => tx.commit().await?,
        Err(_) => tx.rollback().await?,
    }
    Ok(())
}

/// Polls `pg_stat_activity` until some backend of this database is waiting
/// for a lock: the event a test needs before it closes a cycle.
async fn wait_until_someone_waits_for_a_lock(pool: &PgPool) -> anyhow::Result<()> {
    for _ in 0..1000 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await?;
        if waiting > 0 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    anyhow::bail!("nobody started waiting for a lock within 10 s")
}

/// Seats as rows, sold as a queue: `FOR UPDATE SKIP LOCKED` hands each
/// buyer the first seat *nobody else is holding right now*, without
/// waiting. Two open transactions get two different seats; a plain
/// `FOR UPDATE` would make the second wait for the first one's seat.
#[tokio::test]
async fn skip_locked_gives_concurrent_buyers_different_free_seats_without_waiting(
) -> anyhow::Result<()> {
    // Arrange: five free seats, in a table of this test's own (Level 5's
    // `seats` table has another shape).
    let pool = database(10).await?;
    sqlx::query("CREATE TABLE demo_seats (id INT PRIMARY KEY, holder BIGINT)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO demo_seats SELECT g, NULL FROM generate_series(1, 5) g")
        .execute(&pool)
        .await?;
    const NEXT_FREE_SEAT: &str = "SELECT id FROM demo_seats WHERE holder IS NULL \
         ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED";
    let mut alice = pool.begin().await?;
    let mut bob = pool.begin().await?;
    for tx in [&mut alice, &mut bob] {
        // Waiting would end in a 55P03 here instead of a seat.
        sqlx::query("SET LOCAL lock_timeout = '1s'")
            .execute(&mut **tx)
            .await?;
    }

    // Act: alice takes a seat and keeps her transaction open.
    let alices: i32 = sqlx::query_scalar(NEXT_FREE_SEAT)
        .fetch_one(&mut *alice)
        .await?;
    let bobs: i32 = sqlx::query_scalar(NEXT_FREE_SEAT)
        .fetch_one(&mut *bob)
        .await?;

    // Assert
    assert_eq!((alices, bobs), (1, 2), "bob skipped alice's seat");
    for (tx, seat, user) in [(&mut alice, alices, 1_i64), (&mut bob, bobs, 2)] {
        sqlx::query("UPDATE demo_seats SET holder = $2 WHERE id = $1")
            .bind(seat)
            .bind(user)
            .execute(&mut **tx)
            .await?;
    }
    alice.commit().await?;
    bob.commit().await?;
    let held: i64 = sqlx::query_scalar("SELECT count(DISTINCT holder) FROM demo_seats")
        .fetch_one(&pool)
        .await?;
    assert_eq!(held, 2);
    Ok(())
}

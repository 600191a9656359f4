//! A cancellation is fenced like a sale: under a hold that is stale (a newer
//! hold already wrote the ticket row) or lost (its lease ran out), it is
//! refused `busy` and changes nothing, in one transaction.
//!
//! The stale guard is made on purpose, by another "server" that takes the
//! ticket's lock with a short fixed lease and lets it run out, and handed to
//! [`LockedSale::cancel_holding`], the cancel's body under the lock.

use std::time::Duration;

use level3::lock::{Lease, LockClient, LockGuard, LockOptions};
use level3::sale::LockedSale;
use level3::Level3Config;
use ticket_core::db::{self, DbTruth};
use ticket_core::metrics::Metrics;
use ticket_core::services::{Postgres, Redis};
use ticket_core::strategy::StrategyContext;
use ticket_core::{CancelError, Order, TicketId, UserId};

struct Setup {
    sale: LockedSale,
    pool: sqlx::PgPool,
    redis_url: String,
    ticket: TicketId,
}

async fn setup(stock: i32) -> anyhow::Result<Setup> {
    let redis_url = Redis::shared()?.url().to_owned();
    let url = Postgres::shared()?.fresh_database().await?;
    let pool = db::connect(&url, 4, Duration::from_secs(10)).await?;
    db::migrate(&pool).await?;
    let ticket = TicketId::parse(1)?;
    db::reset_ticket(&pool, ticket, "fenced cancel", stock).await?;
    let context = StrategyContext {
        pool: pool.clone(),
        think_time: Duration::ZERO,
        metrics: Metrics::new(),
        instance: format!("server-{:08x}", rand::random::<u32>()),
    };
    let sale = LockedSale::new(
        &context,
        &Level3Config::new(redis_url.clone()),
        level3::lock::Waiting::PubSub,
    )?;
    Ok(Setup {
        sale,
        pool,
        redis_url,
        ticket,
    })
}

impl Setup {
    async fn buy(&self, user: i64) -> anyhow::Result<Order> {
        Ok(self
            .sale
            .purchase(self.ticket, UserId::parse(user.into())?)
            .await?)
    }

    async fn truth(&self) -> anyhow::Result<DbTruth> {
        db::truth(&self.pool, self.ticket).await
    }

    /// A hold of the ticket's lock, taken by another server with a 100 ms
    /// lease, returned once its lease has run out (the key is gone).
    async fn expired_guard(&self) -> anyhow::Result<LockGuard> {
        let other = LockClient::new(&self.redis_url, "a-stalled-server", LockOptions::default())?;
        let lock = other.lock(&format!("ticket:{}", self.ticket));
        let guard = lock
            .try_lock(
                Duration::from_secs(5),
                Lease::Fixed(Duration::from_millis(100)),
            )
            .await?;
        while lock.is_locked().await? {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(guard.is_lost());
        Ok(guard)
    }
}

fn is_busy(answer: &Result<ticket_core::Cancellation, CancelError>) -> bool {
    matches!(answer, Err(CancelError::Purchase(err)) if err.code() == "busy")
}

/// A cancel under a hold that a newer hold has overtaken (the newer one sold
/// a ticket since) is refused, and the order and the stock stay as they are.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_under_an_overtaken_hold_changes_nothing() -> anyhow::Result<()> {
    let setup = setup(5).await?;
    let first = setup.buy(1).await?;
    let stale = setup.expired_guard().await?;
    setup.buy(2).await?; // a newer hold writes the row
    let before = setup.truth().await?;
    assert_eq!((before.orders, before.stock), (2, 3));

    let answer = setup
        .sale
        .cancel_holding(&stale, setup.ticket, first.order_id, first.user_id)
        .await;

    assert!(is_busy(&answer), "{answer:?}");
    let after = setup.truth().await?;
    assert_eq!((after.orders, after.stock), (2, 3), "nothing was cancelled");
    drop(stale);
    Ok(())
}

/// A cancel whose own lease ran out, with nobody newer at the row yet, is
/// refused too: the restock could otherwise land beside the next holder's
/// sale.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_under_a_lost_hold_changes_nothing() -> anyhow::Result<()> {
    let setup = setup(5).await?;
    let order = setup.buy(1).await?;
    let lost = setup.expired_guard().await?;

    let answer = setup
        .sale
        .cancel_holding(&lost, setup.ticket, order.order_id, order.user_id)
        .await;

    assert!(is_busy(&answer), "{answer:?}");
    let after = setup.truth().await?;
    assert_eq!((after.orders, after.stock), (1, 4), "nothing was cancelled");
    drop(lost);
    Ok(())
}

/// Under a live hold the same cancel goes through: the order is gone, the
/// unit is back on sale, and a repeat gets the same answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_under_the_lock_restocks_once() -> anyhow::Result<()> {
    let setup = setup(5).await?;
    let order = setup.buy(1).await?;
    for _ in 0..2 {
        let answer = setup
            .sale
            .cancel(setup.ticket, order.order_id, order.user_id)
            .await?;
        assert_eq!(answer.order_id, order.order_id);
    }
    let after = setup.truth().await?;
    assert_eq!((after.orders, after.stock), (0, 5));
    Ok(())
}

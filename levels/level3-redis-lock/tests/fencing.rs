//! Fencing at the database, beyond the stalled holder of `tests/server.rs`:
//!
//! - a cancellation is fenced like a sale: under a hold that is stale (a
//!   newer hold already wrote the ticket row) or lost (its lease ran out), it
//!   is refused `busy` and changes nothing, in one transaction. The stale
//!   guard is made on purpose, by another "server" that takes the ticket's
//!   lock with a short fixed lease and lets it run out, and handed to
//!   [`LockedSale::cancel_holding`], the cancel's body under the lock;
//! - when Redis loses its newest writes and the fencing counter goes back,
//!   a token handed out again is refused by the database, and the counter is
//!   raised above the row's token, so the next sale goes through.

use std::time::Duration;

use level3::lock::{Lease, LockClient, LockGuard, LockOptions};
use level3::sale::LockedSale;
use level3::Level3Config;
use ticket_core::db::{self, DbTruth};
use ticket_core::metrics::Metrics;
use ticket_core::services::{Postgres, Redis};
use ticket_core::strategy::StrategyContext;
use ticket_core::{CancelError, Order, Purchase, TicketId, UserId};

struct Setup {
    sale: LockedSale,
    pool: sqlx::PgPool,
    redis_url: String,
    ticket: TicketId,
}

/// The row's fence: the token of the hold that wrote it last.
async fn row_fence(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT fence FROM tickets WHERE id = 1")
        .fetch_one(pool)
        .await?)
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
        "pubsub",
        &context,
        &Level3Config::new(redis_url.clone()),
        std::sync::Arc::new(level3::lock::WaitForRelease),
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
            .purchase(&Purchase::new(self.ticket, UserId::parse(user.into())?))
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

/// Redis restarts from an older snapshot (or fails over to a replica that
/// lagged): the fencing counter goes back, and hands out tokens again. The
/// database accepts each token once at most: the first sale after the loss
/// gets a token the row has already seen and is refused `busy`, nothing
/// written; it raises the counter above the row's token, so the buyer's next
/// click is sold with a token larger than every one before. Once with the
/// counter back by one (the very token that wrote the row comes again), once
/// back by a thousand (one refusal, not a thousand).
#[tokio::test(flavor = "multi_thread")]
async fn a_fencing_counter_that_went_back_never_gets_a_token_accepted_twice() -> anyhow::Result<()>
{
    let setup = setup(5).await?;
    setup.buy(1).await?;
    let counter = format!(
        "{}:fence",
        LockClient::new(&setup.redis_url, "observer", LockOptions::default())?
            .lock(&format!("ticket:{}", setup.ticket))
            .key()
    );
    let mut redis = redis::Client::open(setup.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    for (user, back) in [(2, 1), (3, 1_000)] {
        let accepted = row_fence(&setup.pool).await?;
        let orders = setup.truth().await?.orders;
        let _: () = redis::cmd("SET")
            .arg(&counter)
            .arg(accepted - back)
            .query_async(&mut redis)
            .await?;

        let refused = setup
            .sale
            .purchase(&Purchase::new(setup.ticket, UserId::parse(user.into())?))
            .await;
        assert!(
            matches!(&refused, Err(err) if err.code() == "busy"),
            "counter back by {back}: a token the row has seen is refused: {refused:?}"
        );
        assert_eq!(setup.truth().await?.orders, orders, "nothing was written");

        setup.buy(user).await?;
        assert!(
            row_fence(&setup.pool).await? > accepted,
            "the next accepted token is above every earlier one"
        );
    }
    let truth = setup.truth().await?;
    assert_eq!((truth.orders, truth.stock), (3, 2));
    Ok(())
}

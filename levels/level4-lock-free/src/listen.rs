//! Noticing that a ticket was put on sale again, without asking PostgreSQL
//! on every purchase.
//!
//! A purchase only talks to Redis. So when a ticket is reset in PostgreSQL
//! (the load tool does it before every run: orders deleted, stock back to
//! the total, `version = 0`), Redis still holds the previous sale, sold out,
//! and would go on answering "sold out" forever. Something has to tell
//! Redis. PostgreSQL does: migration `0003_level4_sales.sql` adds a trigger
//! that sends `NOTIFY level4_sale_reset, '<ticket id>'` when a ticket row is
//! written with `version = 0`, at COMMIT.
//!
//! Every server LISTENs. On a notification for a ticket whose sale Redis
//! holds, it calls [`SaleStore::ensure_loaded`], which starts the new epoch
//! in PostgreSQL and replaces the sale in Redis (once, whichever server gets
//! there first). A ticket Redis holds nothing for is left alone: its first
//! buyer loads it.
//!
//! A notification is a hint, not a command: the decision is always taken
//! again in PostgreSQL under the row lock, so a late, repeated or
//! out-of-order notification changes nothing. And notifications are lost
//! while the listening connection is down, so after every (re)connection,
//! and every [`SYNC_EVERY`] besides, the listener compares the epochs of
//! every Level 4 ticket in both stores and reloads the ones that differ.
//!
//! **What is not guaranteed.** The notification arrives milliseconds after
//! the reset commits. For a reset made in PostgreSQL alone, a buyer in those
//! milliseconds is sold from the old sale: sold out if it was, and if it had
//! stock, a 201 for an order the worker will dead-letter. A reset through
//! [`SaleStore::reset_sale`](crate::reset) has no such window: it fences
//! Redis before it commits, and buyers load the new sale themselves; this
//! listener then only saves them the wait.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use ticket_core::metrics::Metrics;
use ticket_core::TicketId;
use tokio::sync::watch;

use crate::persist::{sleep_unless, Backoff};
use crate::store::{SaleStore, StoreError};

/// The channel the trigger notifies on.
pub const CHANNEL: &str = "level4_sale_reset";

/// How often the epochs of both stores are compared even without a
/// notification.
pub const SYNC_EVERY: Duration = Duration::from_secs(10);

/// Follows resets until `shutdown` turns true.
pub async fn follow_resets(
    store: SaleStore,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let backoff = Backoff::equal_jitter(Duration::from_millis(100), Duration::from_secs(5));
    let mut retry = 0;
    // A dedicated connection (its own pool of one): LISTEN must not borrow
    // one of the server's connections forever.
    let options = (*store.pool().connect_options()).clone();
    while !*shutdown.borrow() {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options.clone());
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match listener {
            Ok(listener) => listener,
            Err(err) => {
                tracing::debug!(%err, "cannot LISTEN for sale resets yet");
                retry += 1;
                if !sleep_unless(backoff.delay(retry), &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        retry = 0;
        // Notifications sent while we were not listening are lost: compare
        // the two stores once we are.
        sync_epochs(&store, &metrics).await;
        let mut sync = tokio::time::interval(SYNC_EVERY);
        sync.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = sync.tick() => sync_epochs(&store, &metrics).await,
                received = listener.try_recv() => match received {
                    Ok(Some(notification)) => {
                        if let Some(ticket) = notification
                            .payload()
                            .parse::<i128>()
                            .ok()
                            .and_then(|id| TicketId::parse(id).ok())
                        {
                            reload_if_held(&store, &metrics, ticket).await;
                        }
                    }
                    // The connection dropped and was re-established:
                    // anything sent in between is lost.
                    Ok(None) => sync_epochs(&store, &metrics).await,
                    Err(err) => {
                        tracing::debug!(%err, "the LISTEN connection failed");
                        break;
                    }
                }
            }
        }
        pool.close().await;
        retry += 1;
        if !sleep_unless(backoff.delay(retry), &mut shutdown).await {
            return;
        }
    }
}

/// A ticket was put on sale: if Redis holds a sale for it, replace that
/// sale (a few tries, the outage may be brief; the periodic sync catches
/// whatever is left).
async fn reload_if_held(store: &SaleStore, metrics: &Metrics, ticket: TicketId) {
    let backoff = Backoff::equal_jitter(Duration::from_millis(20), Duration::from_millis(500));
    let mut retry = 0;
    for _ in 0..5 {
        let outcome = async {
            if store.redis_epoch(ticket).await?.is_none() {
                return Ok(None);
            }
            store.ensure_loaded(ticket).await.map(Some)
        }
        .await;
        match outcome {
            Ok(loaded) => {
                if loaded.is_some_and(|l| l.started) {
                    metrics.event("sale_reloaded_after_reset");
                }
                return;
            }
            Err(StoreError::NotFound) => return,
            Err(err) => {
                tracing::warn!(%ticket, %err, "cannot reload a reset sale yet");
                retry += 1;
                tokio::time::sleep(backoff.delay(retry)).await;
            }
        }
    }
}

/// Compares the epoch of every ticket Level 4 ever loaded in PostgreSQL with
/// the one Redis serves, and reloads where they differ: a reset Redis missed
/// (`version = 0`), or an epoch PostgreSQL started whose Redis write failed.
pub async fn sync_epochs(store: &SaleStore, metrics: &Metrics) {
    let rows: Result<Vec<(i64, i64, i64)>, _> =
        sqlx::query_as("SELECT id, sale_epoch, version FROM tickets WHERE sale_epoch > 0")
            .fetch_all(store.pool())
            .await;
    let Ok(rows) = rows else {
        return;
    };
    let mut in_redis = HashMap::new();
    for &(id, _, _) in &rows {
        let Ok(ticket) = TicketId::parse(i128::from(id)) else {
            continue;
        };
        match store.redis_epoch(ticket).await {
            Ok(epoch) => {
                in_redis.insert(id, epoch);
            }
            Err(_) => return,
        }
    }
    for (id, sale_epoch, version) in rows {
        let Some(Some(redis_epoch)) = in_redis.get(&id).copied() else {
            // Redis holds nothing: the first buyer loads it.
            continue;
        };
        if version == 0 || redis_epoch < sale_epoch {
            if let Ok(ticket) = TicketId::parse(i128::from(id)) {
                reload_if_held(store, metrics, ticket).await;
            }
        }
    }
}

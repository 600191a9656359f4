//! Has PostgreSQL caught up with Redis? The question the load tool asks
//! before it judges a Level 4 run from the database.
//!
//! A 201 from Level 4 means the sale is *decided*: Redis has it, and the
//! order is on the stream. PostgreSQL gets it a little later. Judging the
//! run before then would find too few orders and call a correct run
//! undersold, so the load tool first waits ([`wait_until_persisted`]) until
//! the stream is **drained**: no entry in any worker's hands (pending 0) and
//! none left undelivered (the group's last delivered id is the stream's
//! last id). The purchase script queues the entry before it answers, and a
//! worker acknowledges only after COMMIT (or after moving the entry to the
//! dead letters), so a drained stream means every 201 answered so far is a
//! row, or a dead letter. Whatever is still missing then was refused or lost,
//! and the verdict will say so.
//!
//! Comparing counts (Redis's buyers against PostgreSQL's orders) is not
//! enough on its own: when the stores have drifted, the two can agree by
//! coincidence while orders are still queued. [`SaleStatus::all_persisted`]
//! reports it, for people; the wait does not rely on it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redis::streams::StreamInfoGroupsReply;
use serde::Serialize;
use ticket_core::TicketId;

use crate::keys::GROUP;
use crate::store::{SaleStore, StoreError};

/// How long the load tool waits for persistence by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The sale as Redis holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RedisSale {
    /// The sale's epoch.
    pub epoch: i64,
    /// Units put on sale.
    pub total: i64,
    /// Units left.
    pub stock: i64,
    /// Buyers holding the ticket (sales made, plus orders loaded from
    /// PostgreSQL when the sale was loaded).
    pub buyers: i64,
}

/// The sale as PostgreSQL holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DatabaseSale {
    /// Units put on sale.
    pub total: i32,
    /// The stock column.
    pub stock: i32,
    /// Order rows.
    pub orders: i64,
    /// The row's version (0: put on sale, not loaded since).
    pub version: i64,
    /// The epoch Redis should be serving.
    pub sale_epoch: i64,
}

/// The stream of sales on their way to PostgreSQL (all tickets of the
/// database share it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueStatus {
    /// Entries on the stream (persisted ones are trimmed off).
    pub length: u64,
    /// Entries delivered to a worker and not yet acknowledged.
    pub pending: u64,
    /// Whether some entries have not been delivered to any worker yet.
    pub undelivered: bool,
    /// Entries in the dead letters.
    pub dead_letters: u64,
}

/// Both stores' view of one ticket's sale, and the queue between them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SaleStatus {
    /// The ticket.
    pub ticket: i64,
    /// Redis's sale (`None`: not loaded).
    pub redis: Option<RedisSale>,
    /// PostgreSQL's ticket (`None`: no such ticket).
    pub database: Option<DatabaseSale>,
    /// The stream.
    pub queue: QueueStatus,
}

impl SaleStatus {
    /// Every sale Redis made in the current epoch has its row.
    pub fn all_persisted(&self) -> bool {
        match (&self.redis, &self.database) {
            (None, _) => true,
            (Some(redis), Some(db)) => {
                redis.epoch == db.sale_epoch && db.version > 0 && redis.buyers == db.orders
            }
            (Some(_), None) => false,
        }
    }

    /// Nothing is in a worker's hands and nothing is waiting to be handed out.
    pub fn queue_drained(&self) -> bool {
        self.queue.pending == 0 && !self.queue.undelivered
    }

    /// What the load tool waits for: nothing left on its way to PostgreSQL.
    pub fn settled(&self) -> bool {
        self.queue_drained()
    }
}

impl SaleStore {
    /// Reads both stores' view of `ticket`'s sale, and the queue.
    ///
    /// **The queue is read first.** A worker acknowledges an entry only
    /// after its COMMIT, so every entry the queue no longer holds is a row
    /// committed before the queue was read, and a database read that starts
    /// afterwards sees it. Read the other way round, a batch that commits
    /// and is acknowledged between the two reads leaves a status that says
    /// "drained" beside a row count from before that batch (the cause of a
    /// drain that reported 150 of 200 orders).
    pub async fn status(&self, ticket: TicketId) -> Result<SaleStatus, StoreError> {
        self.status_between(ticket, async {}).await
    }

    /// [`SaleStore::status`], running `between` after the queue has been
    /// read and before either sale is: what a worker may do in that moment.
    /// For tests of the read order; [`SaleStore::status`] is the one to use.
    #[doc(hidden)]
    pub async fn status_between(
        &self,
        ticket: TicketId,
        between: impl std::future::Future<Output = ()>,
    ) -> Result<SaleStatus, StoreError> {
        let queue = self.queue_status().await?;
        between.await;
        let redis = self.redis_sale(ticket).await?;
        let database = self.database_sale(ticket).await?;
        Ok(SaleStatus {
            ticket: ticket.get(),
            redis,
            database,
            queue,
        })
    }

    /// The sale as Redis holds it (`None`: not loaded).
    async fn redis_sale(&self, ticket: TicketId) -> Result<Option<RedisSale>, StoreError> {
        let keys = self.keys();
        type Sale = (Option<i64>, Option<i64>, Option<i64>);
        let (sale, buyers): (Sale, i64) = self
            .redis()
            .pipe(
                redis::pipe()
                    .atomic()
                    .cmd("HMGET")
                    .arg(keys.sale(ticket))
                    .arg("epoch")
                    .arg("total")
                    .arg("stock")
                    .cmd("HLEN")
                    .arg(keys.buyers(ticket)),
            )
            .await?;
        Ok(match sale {
            (Some(epoch), Some(total), Some(stock)) => Some(RedisSale {
                epoch,
                total,
                stock,
                buyers,
            }),
            _ => None,
        })
    }

    /// The sale as PostgreSQL holds it (`None`: no such ticket).
    async fn database_sale(&self, ticket: TicketId) -> Result<Option<DatabaseSale>, StoreError> {
        let database: Option<(i32, i32, i64, i64, i64)> = sqlx::query_as(
            "SELECT t.total, t.stock, t.version, t.sale_epoch, \
                    (SELECT count(*) FROM ticket_orders o WHERE o.ticket_id = t.id) \
             FROM tickets t WHERE t.id = $1",
        )
        .bind(ticket.get())
        .fetch_optional(self.pool())
        .await?;
        Ok(
            database.map(|(total, stock, version, sale_epoch, orders)| DatabaseSale {
                total,
                stock,
                orders,
                version,
                sale_epoch,
            }),
        )
    }

    /// The stream's state: length, pending, undelivered, dead letters.
    pub async fn queue_status(&self) -> Result<QueueStatus, StoreError> {
        let keys = self.keys();
        let (exists, dead_letters): (bool, u64) = self
            .redis()
            .pipe(
                redis::pipe()
                    .cmd("EXISTS")
                    .arg(keys.orders())
                    .cmd("XLEN")
                    .arg(keys.dead_letters()),
            )
            .await?;
        if !exists {
            return Ok(QueueStatus {
                dead_letters,
                ..QueueStatus::default()
            });
        }
        let (stream, groups): (HashMap<String, redis::Value>, StreamInfoGroupsReply) = self
            .redis()
            .pipe(
                redis::pipe()
                    .atomic()
                    .cmd("XINFO")
                    .arg("STREAM")
                    .arg(keys.orders())
                    .cmd("XINFO")
                    .arg("GROUPS")
                    .arg(keys.orders()),
            )
            .await?;
        let length: u64 = stream
            .get("length")
            .and_then(|v| redis::from_redis_value_ref(v).ok())
            .unwrap_or(0);
        let last_generated: String = stream
            .get("last-generated-id")
            .and_then(|v| redis::from_redis_value_ref(v).ok())
            .unwrap_or_default();
        let group = groups.groups.iter().find(|g| g.name == GROUP);
        let (pending, undelivered) = match group {
            Some(group) => (
                group.pending as u64,
                group.last_delivered_id != last_generated && last_generated != "0-0",
            ),
            // No worker has ever started: everything is undelivered.
            None => (0, length > 0),
        };
        Ok(QueueStatus {
            length,
            pending,
            undelivered,
            dead_letters,
        })
    }
}

/// Waits until the stream is drained into PostgreSQL (see the module's
/// doc), for at most `timeout`, and returns the final status of `ticket`.
pub async fn wait_until_persisted(
    database_url: &str,
    redis_url: &str,
    ticket: i64,
    timeout: Duration,
) -> anyhow::Result<SaleStatus> {
    let ticket = TicketId::parse(i128::from(ticket))?;
    let store = SaleStore::connect(database_url, redis_url).await?;
    let result = wait_with(&store, ticket, timeout).await;
    store.pool().close().await;
    result
}

/// [`wait_until_persisted`] with an open store.
pub async fn wait_with(
    store: &SaleStore,
    ticket: TicketId,
    timeout: Duration,
) -> anyhow::Result<SaleStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = store
            .status(ticket)
            .await
            .context("reading the sale's status")?;
        if status.settled() {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "ticket {ticket}: persistence did not catch up within {timeout:?}: {status:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

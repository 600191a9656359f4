//! `level4 reconcile`: do Redis and PostgreSQL tell the same story?
//!
//! When both stores work as designed, for every ticket of the current sale:
//!
//! - Redis's buyers = PostgreSQL's orders + the entries still on the stream
//!   (+ the dead letters, which need a person);
//! - every PostgreSQL order is one of Redis's buyers, with the same order id;
//! - Redis's `total - stock` = its number of buyers;
//! - PostgreSQL's `stock` = `total - orders`.
//!
//! **When they drift.** Redis keeps its data in memory and writes it to its
//! append-only file (AOF); `appendfsync` says when that file reaches the
//! disk. With `always`, before Redis answers: nothing answered is ever lost.
//! With `everysec` (the usual setting), once a second: a machine crash (not
//! a mere Redis crash, whose writes the operating system still holds) loses
//! up to the last second. If the worker had already persisted some of those
//! sales, PostgreSQL has orders Redis forgot, Redis's stock is too high, and
//! the next buyers are sold units that are gone: an oversell waiting to
//! happen. Sales answered 201 and lost before the worker read them are gone
//! from both stores: no reconciliation can find them; only the buyers hold
//! the proof (their 201 and order id). Without any persistence, Redis comes
//! back empty and the sale is loaded again from PostgreSQL, minus the same
//! unpersisted tail. A Redis that comes back *with* data (an old snapshot,
//! a promoted replica) sells nothing until a purchase has checked the sale
//! against PostgreSQL (`load.rs`); until then, reconcile notes it, and shows
//! the drift that check will repair.
//!
//! **What it repairs** (`--repair`): orders Redis forgot are put back into
//! its buyers and its stock is recomputed from them (one script, atomic
//! against purchases); Redis buyers with no row and no queued entry get
//! their entry queued again (inserting is idempotent, so a false alarm costs
//! nothing); PostgreSQL's stock is recomputed from its orders; a sale Redis
//! serves from an older epoch is reloaded. What needs a person is reported
//! only: dead letters, one buyer with two different order ids, an oversell.
//!
//! Run it on a quiet ticket (after a sale, after a Redis restart): on a
//! busy one, sales in flight can look like drift for a moment.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use redis::streams::StreamRangeReply;
use serde::Serialize;
use ticket_core::TicketId;

use crate::persist::OrderEvent;
use crate::store::{SaleStore, StoreError};

mod drift;
mod repair;

use drift::reconcile_ticket;
pub use repair::repair_database_stock;

/// A kind of disagreement between the stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// Redis serves an older sale than PostgreSQL's (a reset it missed).
    StaleSale,
    /// Redis holds a newer sale than PostgreSQL knows of.
    RedisAhead,
    /// PostgreSQL has orders Redis does not know: Redis lost writes after
    /// they were persisted. Its stock is too high.
    RedisForgotOrders,
    /// Redis sold to buyers who have no row, no queued entry and no dead
    /// letter.
    UnqueuedSales,
    /// Sales PostgreSQL refused; they sit in the dead letters.
    DeadLettered,
    /// One buyer, two different order ids in the two stores.
    OrderIdMismatch,
    /// PostgreSQL cancelled an order Redis still counts as sold (the Redis
    /// step of a cancellation failed): the unit is not back on sale.
    CancelNotApplied,
    /// Redis's stock is not its total minus its buyers.
    RedisStockMismatch,
    /// PostgreSQL's stock is not its total minus its orders.
    DatabaseStockMismatch,
    /// More buyers or orders than units.
    Oversold,
}

impl DriftKind {
    /// Whether `--repair` fixes it.
    pub fn repairable(self) -> bool {
        !matches!(
            self,
            Self::RedisAhead | Self::DeadLettered | Self::OrderIdMismatch | Self::Oversold
        )
    }
}

/// One disagreement found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// What kind.
    pub kind: DriftKind,
    /// The figures, in words.
    pub detail: String,
    /// Whether it was repaired in this run.
    pub repaired: bool,
}

/// One ticket's reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TicketReport {
    /// The ticket.
    pub ticket: i64,
    /// The epoch PostgreSQL names current (0: never loaded).
    pub epoch: i64,
    /// Whether Redis holds a sale for it.
    pub loaded: bool,
    /// Units on sale.
    pub total: i64,
    /// Redis's buyers.
    pub redis_buyers: i64,
    /// Redis's stock.
    pub redis_stock: i64,
    /// PostgreSQL's order rows.
    pub db_orders: i64,
    /// PostgreSQL's stock column.
    pub db_stock: i64,
    /// Sales on the stream, not persisted yet.
    pub in_flight: usize,
    /// Sales in the dead letters.
    pub dead_letters: usize,
    /// A note that is not drift (for instance: not loaded).
    pub note: Option<String>,
    /// What disagrees.
    pub drift: Vec<Drift>,
}

impl TicketReport {
    /// Whether some drift is left unrepaired.
    pub fn has_drift(&self) -> bool {
        self.drift.iter().any(|d| !d.repaired)
    }
}

impl fmt::Display for TicketReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ticket {} (sale {}): Redis {} buyers, stock {}; PostgreSQL {} orders, stock {}; \
             {} in flight, {} dead letters, total {}",
            self.ticket,
            self.epoch,
            self.redis_buyers,
            self.redis_stock,
            self.db_orders,
            self.db_stock,
            self.in_flight,
            self.dead_letters,
            self.total
        )?;
        if let Some(note) = &self.note {
            writeln!(f, "  note: {note}")?;
        }
        if self.drift.is_empty() {
            writeln!(f, "  no drift")?;
        }
        for drift in &self.drift {
            let state = if drift.repaired {
                "repaired"
            } else if drift.kind.repairable() {
                "drift"
            } else {
                "needs a person"
            };
            writeln!(f, "  {state}: {:?}: {}", drift.kind, drift.detail)?;
        }
        Ok(())
    }
}

/// What PostgreSQL holds for one ticket.
pub(super) struct DbSide {
    pub(super) total: i64,
    pub(super) stock: i64,
    pub(super) version: i64,
    pub(super) epoch: i64,
    pub(super) orders: HashMap<i64, i64>,
    /// Cancelled orders of the ticket: order id → user.
    pub(super) cancelled: HashMap<i64, i64>,
}

/// What Redis holds for one ticket.
pub(super) struct RedisSide {
    pub(super) sale: HashMap<String, i64>,
    pub(super) buyers: HashMap<i64, i64>,
    pub(super) queued: Vec<OrderEvent>,
    pub(super) dead: Vec<(i64, i64)>,
    /// The sale was loaded by another Redis process than the one running
    /// (a restart or a failover since): no purchase has checked it against
    /// PostgreSQL yet (see `load.rs`).
    pub(super) unchecked: bool,
}

/// Reconciles `tickets` (all tickets Level 4 ever loaded, when empty), and
/// repairs what it can when `repair`.
pub async fn reconcile(
    store: &SaleStore,
    tickets: &[TicketId],
    repair: bool,
) -> Result<Vec<TicketReport>, StoreError> {
    let tickets: Vec<TicketId> = if tickets.is_empty() {
        known_tickets(store).await?
    } else {
        tickets.to_vec()
    };
    let mut reports = Vec::with_capacity(tickets.len());
    for ticket in tickets {
        reports.push(reconcile_ticket(store, ticket, repair).await?);
    }
    Ok(reports)
}

/// Every ticket PostgreSQL says Level 4 loaded, and every ticket Redis holds
/// a sale for.
async fn known_tickets(store: &SaleStore) -> Result<Vec<TicketId>, StoreError> {
    let mut ids: BTreeSet<i64> =
        sqlx::query_scalar::<_, i64>("SELECT id FROM tickets WHERE sale_epoch > 0")
            .fetch_all(store.pool())
            .await?
            .into_iter()
            .collect();
    let mut cursor: u64 = 0;
    let prefix = store.keys().sale_pattern();
    let prefix = prefix.trim_end_matches('*').to_owned();
    loop {
        // On a cluster every sale of the database lives on the master of
        // its hash tag: SCAN that node, not any node.
        let (next, keys): (u64, Vec<String>) = store
            .redis()
            .query_at_key(
                &store.keys().orders(),
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(store.keys().sale_pattern())
                    .arg("COUNT")
                    .arg(1000),
            )
            .await?;
        ids.extend(
            keys.iter()
                .filter_map(|k| k.strip_prefix(&prefix)?.parse::<i64>().ok()),
        );
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(ids
        .into_iter()
        .filter_map(|id| TicketId::parse(i128::from(id)).ok())
        .collect())
}

async fn read_db(store: &SaleStore, ticket: TicketId) -> Result<Option<DbSide>, StoreError> {
    let row: Option<(i32, i32, i64, i64)> =
        sqlx::query_as("SELECT total, stock, version, sale_epoch FROM tickets WHERE id = $1")
            .bind(ticket.get())
            .fetch_optional(store.pool())
            .await?;
    let Some((total, stock, version, epoch)) = row else {
        return Ok(None);
    };
    let orders: Vec<(i64, i64)> =
        sqlx::query_as("SELECT user_id, id FROM ticket_orders WHERE ticket_id = $1")
            .bind(ticket.get())
            .fetch_all(store.pool())
            .await?;
    let cancelled: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, user_id FROM cancelled_orders WHERE ticket_id = $1")
            .bind(ticket.get())
            .fetch_all(store.pool())
            .await?;
    Ok(Some(DbSide {
        total: total.into(),
        stock: stock.into(),
        version,
        epoch,
        orders: orders.into_iter().collect(),
        cancelled: cancelled.into_iter().collect(),
    }))
}

async fn read_redis(store: &SaleStore, ticket: TicketId) -> Result<RedisSide, StoreError> {
    let keys = store.keys();
    // One MULTI/EXEC: the sale, its buyers and both streams as of one
    // instant, with no purchase in between.
    let (sale, buyers, queued, dead, info): (
        HashMap<String, String>,
        HashMap<i64, i64>,
        StreamRangeReply,
        StreamRangeReply,
        String,
    ) = store
        .redis()
        .pipe(
            redis::pipe()
                .atomic()
                .cmd("HGETALL")
                .arg(keys.sale(ticket))
                .cmd("HGETALL")
                .arg(keys.buyers(ticket))
                .cmd("XRANGE")
                .arg(keys.orders())
                .arg("-")
                .arg("+")
                .cmd("XRANGE")
                .arg(keys.dead_letters())
                .arg("-")
                .arg("+")
                .cmd("INFO")
                .arg("server"),
        )
        .await?;
    let queued = queued
        .ids
        .iter()
        .filter_map(|entry| OrderEvent::parse(entry).ok())
        .filter(|event| event.ticket == ticket.get())
        .collect();
    let dead = dead
        .ids
        .iter()
        .filter(|entry| entry.get::<i64>("ticket") == Some(ticket.get()))
        .filter_map(|entry| Some((entry.get::<i64>("user")?, entry.get::<i64>("epoch")?)))
        .collect();
    let unchecked = sale.contains_key("epoch")
        && sale.get("checked_by").map(String::as_str) != crate::store::run_id(&info);
    // The figures; `checked_by` (a Redis run_id, see `load.rs`) is not one.
    let sale = sale
        .into_iter()
        .filter_map(|(field, value)| Some((field, value.parse().ok()?)))
        .collect();
    Ok(RedisSide {
        sale,
        buyers,
        queued,
        dead,
        unchecked,
    })
}

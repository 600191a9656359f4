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
//! unpersisted tail.
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
struct DbSide {
    total: i64,
    stock: i64,
    version: i64,
    epoch: i64,
    orders: HashMap<i64, i64>,
    /// Cancelled orders of the ticket: order id → user.
    cancelled: HashMap<i64, i64>,
}

/// What Redis holds for one ticket.
struct RedisSide {
    sale: HashMap<String, i64>,
    buyers: HashMap<i64, i64>,
    queued: Vec<OrderEvent>,
    dead: Vec<(i64, i64)>,
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
        let (next, keys): (u64, Vec<String>) = store
            .redis()
            .query(
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
    let (sale, buyers, queued, dead): (
        HashMap<String, i64>,
        HashMap<i64, i64>,
        StreamRangeReply,
        StreamRangeReply,
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
                .arg("+"),
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
    Ok(RedisSide {
        sale,
        buyers,
        queued,
        dead,
    })
}

async fn reconcile_ticket(
    store: &SaleStore,
    ticket: TicketId,
    repair: bool,
) -> Result<TicketReport, StoreError> {
    // PostgreSQL first, Redis second: an order persisted before the first
    // read was sold (in Redis) before it too, so it cannot look forgotten.
    let db = read_db(store, ticket).await?;
    let redis = read_redis(store, ticket).await?;
    let redis_epoch = redis.sale.get("epoch").copied();
    let mut report = TicketReport {
        ticket: ticket.get(),
        epoch: db.as_ref().map_or(0, |d| d.epoch),
        loaded: redis_epoch.is_some(),
        total: db.as_ref().map_or(0, |d| d.total),
        redis_buyers: redis.buyers.len() as i64,
        redis_stock: redis.sale.get("stock").copied().unwrap_or(0),
        db_orders: db.as_ref().map_or(0, |d| d.orders.len() as i64),
        db_stock: db.as_ref().map_or(0, |d| d.stock),
        in_flight: 0,
        dead_letters: 0,
        note: None,
        drift: Vec::new(),
    };

    let Some(db) = db else {
        report.note = Some(if report.loaded {
            "Redis holds a sale for a ticket PostgreSQL does not have".into()
        } else {
            "no such ticket".into()
        });
        return Ok(report);
    };
    let Some(redis_epoch) = redis_epoch else {
        report.note = Some(if db.epoch > 0 && db.version > 0 {
            format!(
                "Redis holds no sale (PostgreSQL's is sale {}): the next purchase loads it \
                 from PostgreSQL; sales answered but not yet persisted when Redis lost them \
                 are in neither store",
                db.epoch
            )
        } else {
            "not on sale in Redis yet: the first purchase loads it".into()
        });
        return Ok(report);
    };

    if db.version == 0 || redis_epoch < db.epoch {
        let detail = if db.version == 0 {
            format!(
                "the ticket was put on sale again in PostgreSQL; Redis still serves sale {redis_epoch}"
            )
        } else {
            format!(
                "Redis serves sale {redis_epoch}, PostgreSQL's is sale {}",
                db.epoch
            )
        };
        let repaired = repair && store.ensure_loaded(ticket).await.is_ok();
        report.drift.push(Drift {
            kind: DriftKind::StaleSale,
            detail,
            repaired,
        });
        return Ok(report);
    }
    if redis_epoch > db.epoch {
        report.drift.push(Drift {
            kind: DriftKind::RedisAhead,
            detail: format!(
                "Redis serves sale {redis_epoch}, PostgreSQL only knows sale {} \
                 (was the database restored from a backup?)",
                db.epoch
            ),
            repaired: false,
        });
        return Ok(report);
    }

    let epoch = db.epoch;
    let queued: HashMap<i64, &OrderEvent> = redis
        .queued
        .iter()
        .filter(|e| e.epoch == epoch)
        .map(|e| (e.user, e))
        .collect();
    let dead: BTreeSet<i64> = redis
        .dead
        .iter()
        .filter(|&&(_, e)| e == epoch)
        .map(|&(user, _)| user)
        .collect();

    // PostgreSQL's orders that Redis does not know, or knows differently.
    let mut forgotten: Vec<(i64, i64)> = Vec::new();
    let mut mismatched = Vec::new();
    for (&user, &id) in &db.orders {
        match redis.buyers.get(&user) {
            None => forgotten.push((user, id)),
            Some(&redis_id) if redis_id != id => mismatched.push((user, redis_id, id)),
            Some(_) => {}
        }
    }
    // Redis's buyers that PostgreSQL does not have (yet).
    let mut unqueued: Vec<(i64, i64)> = Vec::new();
    let mut not_restocked: Vec<(i64, i64)> = Vec::new();
    for (&user, &id) in &redis.buyers {
        if db.orders.contains_key(&user) {
            continue;
        }
        if db.cancelled.get(&id) == Some(&user) {
            not_restocked.push((user, id));
        } else if dead.contains(&user) {
            // Checked before the stream: a dead-lettered entry was
            // acknowledged in the same transaction that wrote the dead
            // letter, but XACK does not remove it from the stream, so it
            // stays in XRANGE's answer until the stream is trimmed.
            report.dead_letters += 1;
        } else if queued.contains_key(&user) {
            report.in_flight += 1;
        } else {
            unqueued.push((user, id));
        }
    }
    if !unqueued.is_empty() {
        // Persisted between our two reads (and trimmed off the stream)?
        // Ask PostgreSQL again before calling them lost.
        let users: Vec<i64> = unqueued.iter().map(|&(u, _)| u).collect();
        let landed: BTreeSet<i64> = sqlx::query_scalar(
            "SELECT user_id FROM ticket_orders WHERE ticket_id = $1 AND user_id = ANY($2)",
        )
        .bind(ticket.get())
        .bind(&users)
        .fetch_all(store.pool())
        .await?
        .into_iter()
        .collect();
        unqueued.retain(|(user, _)| !landed.contains(user));
    }

    let redis_total = redis.sale.get("total").copied().unwrap_or(0);
    let redis_stock = redis.sale.get("stock").copied().unwrap_or(0);
    let buyers = redis.buyers.len() as i64;
    let stock_drift = redis_total - redis_stock != buyers;

    if !forgotten.is_empty() || stock_drift {
        let repaired = repair && repair_redis(store, ticket, epoch, &db, &forgotten).await?;
        if !forgotten.is_empty() {
            report.drift.push(Drift {
                kind: DriftKind::RedisForgotOrders,
                detail: format!(
                    "{} orders in PostgreSQL are not among Redis's buyers (users {}): \
                     Redis lost writes the worker had already persisted, and its stock \
                     is too high by as many",
                    forgotten.len(),
                    sample(forgotten.iter().map(|&(u, _)| u))
                ),
                repaired,
            });
        }
        if stock_drift {
            report.drift.push(Drift {
                kind: DriftKind::RedisStockMismatch,
                detail: format!(
                    "Redis: total {redis_total} - stock {redis_stock} = {} sold, but {buyers} buyers",
                    redis_total - redis_stock
                ),
                repaired,
            });
        }
    }
    if !unqueued.is_empty() {
        let repaired = repair && requeue(store, ticket, epoch, &unqueued).await?;
        report.drift.push(Drift {
            kind: DriftKind::UnqueuedSales,
            detail: format!(
                "{} buyers in Redis have no order row and no queued entry (users {})",
                unqueued.len(),
                sample(unqueued.iter().map(|&(u, _)| u))
            ),
            repaired,
        });
    }
    if !not_restocked.is_empty() {
        let mut repaired = repair;
        if repair {
            for &(user, id) in &not_restocked {
                repaired &= store.restock_cancelled(ticket, epoch, user, id).await?;
            }
        }
        report.drift.push(Drift {
            kind: DriftKind::CancelNotApplied,
            detail: format!(
                "{} orders cancelled in PostgreSQL still hold their unit in Redis (users {})",
                not_restocked.len(),
                sample(not_restocked.iter().map(|&(u, _)| u))
            ),
            repaired,
        });
    }
    if report.dead_letters > 0 {
        report.drift.push(Drift {
            kind: DriftKind::DeadLettered,
            detail: format!(
                "{} sales answered 201 were refused by PostgreSQL; see the dead letters stream {}",
                report.dead_letters,
                store.keys().dead_letters()
            ),
            repaired: false,
        });
    }
    if !mismatched.is_empty() {
        report.drift.push(Drift {
            kind: DriftKind::OrderIdMismatch,
            detail: format!(
                "{} buyers hold different order ids in Redis and PostgreSQL (users {})",
                mismatched.len(),
                sample(mismatched.iter().map(|&(u, _, _)| u))
            ),
            repaired: false,
        });
    }
    let db_orders = db.orders.len() as i64;
    if db.stock != (db.total - db_orders).max(0) {
        let repaired = repair && repair_database_stock(store, ticket, epoch).await?;
        report.drift.push(Drift {
            kind: DriftKind::DatabaseStockMismatch,
            detail: format!(
                "PostgreSQL: stock {} but total {} - {db_orders} orders = {}",
                db.stock,
                db.total,
                db.total - db_orders
            ),
            repaired,
        });
    }
    // Redis's buyers and the orders it forgot: every unit sold, once.
    let sold = buyers + forgotten.len() as i64;
    if sold > db.total || db_orders > db.total {
        report.drift.push(Drift {
            kind: DriftKind::Oversold,
            detail: format!(
                "{} units sold of {} ({db_orders} orders in PostgreSQL, {buyers} buyers in Redis)",
                sold, db.total
            ),
            repaired: false,
        });
    }
    Ok(report)
}

/// Puts forgotten orders back among Redis's buyers and recomputes its stock
/// from them (`repair.lua`, atomic against purchases).
async fn repair_redis(
    store: &SaleStore,
    ticket: TicketId,
    epoch: i64,
    db: &DbSide,
    forgotten: &[(i64, i64)],
) -> Result<bool, StoreError> {
    let keys = store.keys();
    let max_id = db.orders.values().copied().max().unwrap_or(0);
    let mut invocation = store.scripts().repair.prepare_invoke();
    invocation
        .key(keys.sale(ticket))
        .key(keys.buyers(ticket))
        .key(keys.order_id())
        .arg(epoch)
        .arg(max_id);
    for &(user, id) in forgotten {
        invocation.arg(user).arg(id);
    }
    let stock: i64 = store.redis().invoke(&invocation).await?;
    Ok(stock >= 0)
}

/// Queues the entries of sales Redis made but nobody will persist. The
/// worker's insert is idempotent: a sale that did land meanwhile changes
/// nothing.
async fn requeue(
    store: &SaleStore,
    ticket: TicketId,
    epoch: i64,
    sales: &[(i64, i64)],
) -> Result<bool, StoreError> {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64;
    let mut pipe = redis::pipe();
    for &(user, id) in sales {
        pipe.cmd("XADD")
            .arg(store.keys().orders())
            .arg("*")
            .arg("order")
            .arg(id)
            .arg("ticket")
            .arg(ticket.get())
            .arg("user")
            .arg(user)
            .arg("epoch")
            .arg(epoch)
            .arg("sold_us")
            .arg(now_us)
            .ignore();
    }
    store.redis().pipe::<()>(&pipe).await?;
    Ok(true)
}

/// Sets PostgreSQL's stock to its total minus its orders, under the row
/// lock the worker takes too, and only if the sale is still `epoch` and
/// still loaded. Returns whether it did.
///
/// A ticket reset since reconcile read it (`version = 0`: put on sale, not
/// loaded since) is left alone even when its epoch has not changed: the
/// repair bumps `version`, and a reset whose `version = 0` is overwritten
/// is a reset the loader never sees, so Redis would go on serving the old
/// sale.
pub async fn repair_database_stock(
    store: &SaleStore,
    ticket: TicketId,
    epoch: i64,
) -> Result<bool, StoreError> {
    let mut tx = store.pool().begin().await?;
    let locked: Option<(i64, i64)> =
        sqlx::query_as("SELECT sale_epoch, version FROM tickets WHERE id = $1 FOR UPDATE")
            .bind(ticket.get())
            .fetch_optional(&mut *tx)
            .await?;
    if !matches!(locked, Some((current, version)) if current == epoch && version > 0) {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE tickets SET stock = GREATEST(0, total - \
             (SELECT count(*) FROM ticket_orders WHERE ticket_id = $1)), \
             version = version + 1 \
         WHERE id = $1",
    )
    .bind(ticket.get())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Up to five values, for a message.
fn sample(values: impl Iterator<Item = i64>) -> String {
    let mut values: Vec<i64> = values.collect();
    values.sort_unstable();
    let more = values.len().saturating_sub(5);
    let shown: Vec<String> = values.iter().take(5).map(i64::to_string).collect();
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

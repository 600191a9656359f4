//! One ticket's reconciliation: one function per kind of drift.

use std::collections::BTreeSet;

use ticket_core::TicketId;

use super::repair::{repair_database_stock, repair_redis, requeue, sample};
use super::{read_db, read_redis, DbSide, Drift, DriftKind, RedisSide, TicketReport};
use crate::store::{SaleStore, StoreError};

pub(super) async fn reconcile_ticket(
    store: &SaleStore,
    ticket: TicketId,
    repair: bool,
) -> Result<TicketReport, StoreError> {
    // PostgreSQL first, Redis second: an order persisted before the first
    // read was sold (in Redis) before it too, so it cannot look forgotten.
    let db = read_db(store, ticket).await?;
    let redis = read_redis(store, ticket).await?;
    let mut report = TicketReport::of(ticket, db.as_ref(), &redis);
    let Some(db) = db else {
        report.note = Some(if report.loaded {
            "Redis holds a sale for a ticket PostgreSQL does not have".into()
        } else {
            "no such ticket".into()
        });
        return Ok(report);
    };
    let Some(redis_epoch) = redis.sale.get("epoch").copied() else {
        report.note = Some(not_loaded_note(&db));
        return Ok(report);
    };
    if let Some(drift) = epoch_drift(store, ticket, &db, redis_epoch, repair).await? {
        report.drift.push(drift);
        return Ok(report);
    }
    if redis.unchecked {
        report.note = Some(
            "Redis has restarted (or failed over) since it loaded this sale: it sells \
             nothing until a purchase has checked the sale against PostgreSQL"
                .into(),
        );
    }

    let mut sides = compare(&db, &redis, &mut report);
    if !sides.unqueued.is_empty() {
        drop_landed(store, ticket, &mut sides.unqueued).await?;
    }
    redis_drift(store, ticket, &db, &redis, &sides, repair, &mut report).await?;
    if !sides.unqueued.is_empty() {
        let repaired = repair && requeue(store, ticket, db.epoch, &sides.unqueued).await?;
        report.drift.push(Drift {
            kind: DriftKind::UnqueuedSales,
            detail: format!(
                "{} buyers in Redis have no order row and no queued entry (users {})",
                sides.unqueued.len(),
                sample(sides.unqueued.iter().map(|&(u, _)| u))
            ),
            repaired,
        });
    }
    cancel_drift(
        store,
        ticket,
        db.epoch,
        &sides.not_restocked,
        repair,
        &mut report,
    )
    .await?;
    person_drift(store, &sides, &mut report);
    database_drift(store, ticket, &db, &redis, &sides, repair, &mut report).await?;
    Ok(report)
}

impl TicketReport {
    /// The figures of both stores, before any drift is looked for.
    fn of(ticket: TicketId, db: Option<&DbSide>, redis: &RedisSide) -> Self {
        Self {
            ticket: ticket.get(),
            epoch: db.map_or(0, |d| d.epoch),
            loaded: redis.sale.contains_key("epoch"),
            total: db.map_or(0, |d| d.total),
            redis_buyers: redis.buyers.len() as i64,
            redis_stock: redis.sale.get("stock").copied().unwrap_or(0),
            db_orders: db.map_or(0, |d| d.orders.len() as i64),
            db_stock: db.map_or(0, |d| d.stock),
            in_flight: 0,
            dead_letters: 0,
            note: None,
            drift: Vec::new(),
        }
    }
}

/// What to say about a ticket Redis holds no sale for.
fn not_loaded_note(db: &DbSide) -> String {
    if db.epoch > 0 && db.version > 0 {
        format!(
            "Redis holds no sale (PostgreSQL's is sale {}): the next purchase loads it \
             from PostgreSQL; sales answered but not yet persisted when Redis lost them \
             are in neither store",
            db.epoch
        )
    } else {
        "not on sale in Redis yet: the first purchase loads it".into()
    }
}

/// Drift of the sale itself: Redis serves an older sale (a reset it
/// missed; reloaded with `repair`) or a newer one than PostgreSQL knows.
/// Either way the rest of the comparison would be meaningless.
async fn epoch_drift(
    store: &SaleStore,
    ticket: TicketId,
    db: &DbSide,
    redis_epoch: i64,
    repair: bool,
) -> Result<Option<Drift>, StoreError> {
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
        return Ok(Some(Drift {
            kind: DriftKind::StaleSale,
            detail,
            repaired,
        }));
    }
    if redis_epoch > db.epoch {
        return Ok(Some(Drift {
            kind: DriftKind::RedisAhead,
            detail: format!(
                "Redis serves sale {redis_epoch}, PostgreSQL only knows sale {} \
                 (was the database restored from a backup?)",
                db.epoch
            ),
            repaired: false,
        }));
    }
    Ok(None)
}

/// The two stores' buyers and orders of one sale, side by side.
#[derive(Default)]
struct Sides {
    /// PostgreSQL's orders Redis does not know: (user, order id).
    forgotten: Vec<(i64, i64)>,
    /// One buyer, two order ids: (user, Redis's, PostgreSQL's).
    mismatched: Vec<(i64, i64, i64)>,
    /// Redis's buyers with no row, no queued entry, no dead letter.
    unqueued: Vec<(i64, i64)>,
    /// Redis's buyers whose order PostgreSQL has cancelled.
    not_restocked: Vec<(i64, i64)>,
}

/// Sorts every buyer and order of the current sale, counting those in
/// flight and dead-lettered into `report`.
fn compare(db: &DbSide, redis: &RedisSide, report: &mut TicketReport) -> Sides {
    let epoch = db.epoch;
    let queued: BTreeSet<i64> = redis
        .queued
        .iter()
        .filter(|e| e.epoch == epoch)
        .map(|e| e.user)
        .collect();
    let dead: BTreeSet<i64> = redis
        .dead
        .iter()
        .filter(|&&(_, e)| e == epoch)
        .map(|&(user, _)| user)
        .collect();
    let mut sides = Sides::default();
    for (&user, &id) in &db.orders {
        match redis.buyers.get(&user) {
            None => sides.forgotten.push((user, id)),
            Some(&redis_id) if redis_id != id => sides.mismatched.push((user, redis_id, id)),
            Some(_) => {}
        }
    }
    for (&user, &id) in &redis.buyers {
        if db.orders.contains_key(&user) {
            continue;
        }
        if db.cancelled.get(&id) == Some(&user) {
            sides.not_restocked.push((user, id));
        } else if dead.contains(&user) {
            // Checked before the stream: a dead-lettered entry was
            // acknowledged in the same transaction that wrote the dead
            // letter, but XACK does not remove it from the stream, so it
            // stays in XRANGE's answer until the stream is trimmed.
            report.dead_letters += 1;
        } else if queued.contains(&user) {
            report.in_flight += 1;
        } else {
            sides.unqueued.push((user, id));
        }
    }
    sides
}

/// Persisted between our two reads (and trimmed off the stream)? Asks
/// PostgreSQL again before calling those sales lost.
async fn drop_landed(
    store: &SaleStore,
    ticket: TicketId,
    unqueued: &mut Vec<(i64, i64)>,
) -> Result<(), StoreError> {
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
    Ok(())
}

/// Redis forgot orders PostgreSQL holds, or its stock is not its total
/// minus its buyers: one repair (`repair.lua`) fixes both.
async fn redis_drift(
    store: &SaleStore,
    ticket: TicketId,
    db: &DbSide,
    redis: &RedisSide,
    sides: &Sides,
    repair: bool,
    report: &mut TicketReport,
) -> Result<(), StoreError> {
    let redis_total = redis.sale.get("total").copied().unwrap_or(0);
    let redis_stock = redis.sale.get("stock").copied().unwrap_or(0);
    let buyers = redis.buyers.len() as i64;
    let stock_drift = redis_total - redis_stock != buyers;
    let forgotten = &sides.forgotten;
    if forgotten.is_empty() && !stock_drift {
        return Ok(());
    }
    let repaired = repair && repair_redis(store, ticket, db.epoch, db, forgotten).await?;
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
    Ok(())
}

/// Cancellations PostgreSQL committed whose Redis step never ran.
async fn cancel_drift(
    store: &SaleStore,
    ticket: TicketId,
    epoch: i64,
    not_restocked: &[(i64, i64)],
    repair: bool,
    report: &mut TicketReport,
) -> Result<(), StoreError> {
    if not_restocked.is_empty() {
        return Ok(());
    }
    let mut repaired = repair;
    if repair {
        for &(user, id) in not_restocked {
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
    Ok(())
}

/// What needs a person: dead letters, and buyers with two order ids.
fn person_drift(store: &SaleStore, sides: &Sides, report: &mut TicketReport) {
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
    if !sides.mismatched.is_empty() {
        report.drift.push(Drift {
            kind: DriftKind::OrderIdMismatch,
            detail: format!(
                "{} buyers hold different order ids in Redis and PostgreSQL (users {})",
                sides.mismatched.len(),
                sample(sides.mismatched.iter().map(|&(u, _, _)| u))
            ),
            repaired: false,
        });
    }
}

/// PostgreSQL's stock against its orders, and every unit sold once.
async fn database_drift(
    store: &SaleStore,
    ticket: TicketId,
    db: &DbSide,
    redis: &RedisSide,
    sides: &Sides,
    repair: bool,
    report: &mut TicketReport,
) -> Result<(), StoreError> {
    let db_orders = db.orders.len() as i64;
    if db.stock != (db.total - db_orders).max(0) {
        let repaired = repair && repair_database_stock(store, ticket, db.epoch).await?;
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
    let buyers = redis.buyers.len() as i64;
    let sold = buyers + sides.forgotten.len() as i64;
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
    Ok(())
}

//! What `--repair` does, each under the guard that keeps it from undoing a
//! newer sale.

use ticket_core::TicketId;

use super::DbSide;
use crate::store::{SaleStore, StoreError};

/// Puts forgotten orders back among Redis's buyers and recomputes its stock
/// from them (`repair.lua`, atomic against purchases).
pub(super) async fn repair_redis(
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
pub(super) async fn requeue(
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
pub(super) fn sample(values: impl Iterator<Item = i64>) -> String {
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

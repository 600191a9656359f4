//! Exercise 10, solved: locks taken in one global order, as Level 5's
//! holds take seats (`levels/level5-box-office/src/holds/pessimistic.rs`).

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgConnection;
use ticket_core::strategy::StrategyContext;
use ticket_core::{Order, Purchase, PurchaseError, SellTickets, TicketId};

use crate::kit::{deadlock_is_a_bug, read_stock, seats_wanted, sell_held_seats, Config, SeatTable};

/// Locks the seats this buyer wants, `seats` (in the order the buyer listed
/// them), in the caller's transaction, until it commits. Between two seats
/// the buyer thinks (`ctx.think()`): the moment another buyer may lock a
/// seat we still want.
///
/// This is the only part to change.
async fn hold_seats(
    ctx: &StrategyContext,
    tx: &mut PgConnection,
    ticket: TicketId,
    seats: &[i32],
) -> Result<(), sqlx::Error> {
    // One global order for everybody: ascending seat numbers. Two buyers
    // who want overlapping seats now queue on the lowest seat they share,
    // and neither can hold a seat the other is waiting for.
    let mut in_order = seats.to_vec();
    in_order.sort_unstable();
    for seat in &in_order {
        sqlx::query(
            "SELECT 1 FROM exercise_seats WHERE ticket_id = $1 AND seat_no = $2 FOR UPDATE",
        )
        .bind(ticket.get())
        .bind(seat)
        .execute(&mut *tx)
        .await?;
        ctx.think().await;
    }
    Ok(())
}

/// Your strategy: each buyer holds two seats, then buys.
pub struct LockOrder {
    ctx: StrategyContext,
    seats: SeatTable,
}

/// Builds your strategy when the server starts.
pub fn build(ctx: &StrategyContext, _: &Config) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(LockOrder {
        ctx: ctx.clone(),
        seats: SeatTable::default(),
    }))
}

#[async_trait]
impl SellTickets for LockOrder {
    fn name(&self) -> &'static str {
        "lock-order"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        // A look without locks: "sold out" needs no seat.
        if read_stock(&mut *self.ctx.pool.acquire().await?, purchase.ticket).await? <= 0 {
            return Err(PurchaseError::SoldOut);
        }
        self.seats.ensure(&self.ctx.pool, purchase.ticket).await?;
        let mut tx = self.seats.begin(&self.ctx.pool).await?;
        let wanted = seats_wanted(purchase.user);
        hold_seats(&self.ctx, &mut tx, purchase.ticket, &wanted)
            .await
            .map_err(deadlock_is_a_bug)?;
        sell_held_seats(tx, &purchase).await
    }
}

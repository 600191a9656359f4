//! `spin`: buyers wait for a ticket's Redis lock by trying again and again,
//! the way most hand-written Redis locks (and `rslock`) do.
//!
//! A buyer who finds the lock taken sleeps a short random while, growing
//! from 1 ms to 64 ms, and tries again. It is correct (the lock is the same
//! lock, with the same lease, watchdog and fencing token as `pubsub`), and
//! it is here to be measured against `pubsub`: every waiting buyer costs
//! Redis a command per sleep, a buyer may sleep through the moment the lock
//! frees, and whoever wakes first wins, however long the others have waited.
//! See the `spin.rs` inside [`crate::lock`].

use std::sync::Arc;

use async_trait::async_trait;
use ticket_core::strategy::StrategyContext;
use ticket_core::{
    CancelError, Cancellation, Order, OrderId, Purchase, PurchaseError, SellTickets, TicketId,
    UserId,
};

use crate::lock::{Backoff, Waiting};
use crate::sale::LockedSale;
use crate::Level3Config;

/// Sells under a Redis lock whose waiters poll with exponential backoff and
/// jitter.
pub struct Spin {
    sale: LockedSale,
}

/// Builds [`Spin`].
pub fn build(
    context: &StrategyContext,
    config: &Level3Config,
) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(Spin {
        sale: LockedSale::new(context, config, Waiting::Spin(Backoff::default()))?,
    }))
}

#[async_trait]
impl SellTickets for Spin {
    fn name(&self) -> &'static str {
        "spin"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        self.sale.purchase(&purchase).await
    }

    async fn check_health(&self) -> anyhow::Result<()> {
        self.sale.check_health().await
    }

    async fn cancel(
        &self,
        ticket: TicketId,
        order: OrderId,
        user: UserId,
    ) -> Option<Result<Cancellation, CancelError>> {
        Some(self.sale.cancel(ticket, order, user).await)
    }
}

//! `pubsub`: buyers wait for a ticket's Redis lock by subscription, the way
//! Redisson's `RLock` does.
//!
//! A buyer who finds the lock taken subscribes to the lock's channel (once
//! per server, however many of its buyers wait), looks once more, and sleeps
//! until the holder's release is published or the holder's lease would have
//! ended. Each release wakes one buyer per server, in arrival order. So while
//! 500 buyers wait on a server, Redis sees about one attempt per server per
//! sale instead of 500 buyers polling it, and nobody sleeps while the lock
//! is free. See [`crate::lock::WaitForRelease`] for how, and the races this
//! closes.

use std::sync::Arc;

use async_trait::async_trait;
use ticket_core::strategy::StrategyContext;
use ticket_core::{
    CancelError, Cancellation, Order, OrderId, Purchase, PurchaseError, SellTickets, TicketId,
    UserId,
};

use crate::lock::WaitForRelease;
use crate::sale::LockedSale;
use crate::Level3Config;

/// Sells under a Redis lock whose waiters are woken by PUBLISH.
pub struct PubSub {
    sale: LockedSale,
}

/// Builds [`PubSub`].
pub fn build(
    context: &StrategyContext,
    config: &Level3Config,
) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(PubSub {
        sale: LockedSale::new(context, config, Arc::new(WaitForRelease))?,
    }))
}

#[async_trait]
impl SellTickets for PubSub {
    fn name(&self) -> &'static str {
        "pubsub"
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

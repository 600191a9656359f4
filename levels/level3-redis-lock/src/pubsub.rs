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

use ticket_core::strategy::StrategyContext;
use ticket_core::SellTickets;

use crate::lock::WaitForRelease;
use crate::sale::LockedSale;
use crate::Level3Config;

/// Builds `pubsub`: the sale under the lock ([`LockedSale`]), its buyers
/// waiting for the release to be published.
pub fn build(
    context: &StrategyContext,
    config: &Level3Config,
) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(LockedSale::new(
        "pubsub",
        context,
        config,
        Arc::new(WaitForRelease),
    )?))
}

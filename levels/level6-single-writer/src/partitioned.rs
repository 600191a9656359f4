//! `partitioned`: Kafka's "lock-free by partition". A new owner of a
//! partition starts with an empty memory and loads each ticket from
//! PostgreSQL (its row and its orders) the first time a batch touches it.

use std::sync::Arc;

use ticket_core::{SellTickets, StrategyContext};

use crate::engine::Mode;
use crate::Level6Config;

/// Builds the strategy (the table's `build`).
pub fn build(
    context: &StrategyContext,
    config: &Level6Config,
) -> anyhow::Result<Arc<dyn SellTickets>> {
    Ok(Arc::new(crate::strategy(
        context,
        config,
        Mode::Partitioned,
    )?))
}

//! `state-store`: Kafka Streams' "stream processing with a state store".
//! The decider's state is also written, after each COMMIT, to a compacted
//! changelog stream ([`crate::changelog`]); a new owner replays it instead
//! of reading every ticket's orders from PostgreSQL, then checks each
//! ticket against its row as every batch does.

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
        Mode::StateStore,
    )?))
}

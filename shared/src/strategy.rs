//! What a level tells the rest of the workspace about its strategies: a table
//! of names, one-line descriptions, the verdict each is expected to earn, and
//! how to build it.
//!
//! The server picks a strategy from this table by name, and the load tool's
//! tour walks the same table, so adding a strategy is one file (its
//! [`SellTickets`] implementation) and one line (its table entry).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::domain::SellTickets;
use crate::metrics::Metrics;
use crate::verify::Verdict;

/// What every strategy may use when it is built.
#[derive(Clone)]
pub struct StrategyContext {
    /// The server's database pool.
    pub pool: PgPool,
    /// The pause between reading stock and writing it (`--think-time-ms`):
    /// the window in which a race happens. Zero in production.
    pub think_time: Duration,
    /// The server's metrics, for counting retries, conflicts and lock waits.
    pub metrics: Metrics,
    /// A name unique to this server process (for lock owners, consumer names).
    pub instance: String,
}

impl StrategyContext {
    /// Waits for the think time, if any. Strategies call this between reading
    /// and writing stock, so that races reproduce on demand, not by luck.
    pub async fn think(&self) {
        think(self.think_time).await;
    }
}

/// Waits for `think_time` unless it is zero.
pub async fn think(think_time: Duration) {
    if !think_time.is_zero() {
        tokio::time::sleep(think_time).await;
    }
}

/// The verdict a strategy should earn on one server and on two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// With every buyer on one server.
    pub one_server: Verdict,
    /// With buyers spread over two servers sharing one database.
    pub two_servers: Verdict,
}

impl Expected {
    /// Correct however many servers run.
    pub const CORRECT: Expected = Expected {
        one_server: Verdict::Correct,
        two_servers: Verdict::Correct,
    };

    /// The verdict for `servers` servers.
    pub fn for_servers(&self, servers: usize) -> Verdict {
        if servers <= 1 {
            self.one_server
        } else {
            self.two_servers
        }
    }
}

/// Builds a strategy from the server's context and the level's own settings.
pub type BuildStrategy<C> = fn(&StrategyContext, &C) -> anyhow::Result<Arc<dyn SellTickets>>;

/// One line of a level's strategy table.
pub struct StrategyEntry<C: 'static> {
    /// The contract's name (`--strategy NAME`).
    pub name: &'static str,
    /// One line for `--help` and the tour's table.
    pub about: &'static str,
    /// What a 1000-buyer, 100-ticket rush should show.
    pub expected: Expected,
    /// How to build it.
    pub build: BuildStrategy<C>,
}

/// Finds a strategy by name, or says which names exist.
pub fn find<'a, C>(
    table: &'a [StrategyEntry<C>],
    name: &str,
) -> anyhow::Result<&'a StrategyEntry<C>> {
    table
        .iter()
        .find(|entry| entry.name == name)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown strategy {name:?}; this level has: {}",
                names(table).join(", ")
            )
        })
}

/// The names in a strategy table, in order.
pub fn names<C>(table: &[StrategyEntry<C>]) -> Vec<&'static str> {
    table.iter().map(|entry| entry.name).collect()
}

//! The levels the load tool knows: their strategies, what each should show,
//! and how to start one of their servers.
//!
//! Adding a level to the tour is one entry in [`levels`].

use std::future::Future;
use std::pin::Pin;

use anyhow::Context as _;
use clap::Parser as _;
use ticket_core::strategy::StrategyEntry;
use ticket_core::{Expected, RunningServer};

/// Starts a level's server from a command line (`["level1", "--port", ...]`).
pub type StartFn =
    fn(Vec<String>) -> Pin<Box<dyn Future<Output = anyhow::Result<RunningServer>> + Send>>;

/// Where a level's sale lives, for a [`SettleFn`] or a [`ResetFn`].
#[derive(Debug, Clone)]
pub struct SettleArgs {
    /// The database the servers share.
    pub database_url: String,
    /// The Redis they share, if the level uses one.
    pub redis_url: Option<String>,
    /// The ticket that was sold.
    pub ticket_id: i64,
}

/// Waits until every sale a level has answered 201 is in PostgreSQL. Levels
/// that persist asynchronously (Level 4) need this before the database can
/// judge a run; the others write before they answer and need nothing.
pub type SettleFn = fn(SettleArgs) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Puts a level's ticket on sale afresh (`name`, `stock` units) by the
/// level's own path, for levels whose sale does not live in PostgreSQL alone
/// (Level 4 fences Redis first; see [`crate::reset`]).
pub type ResetFn =
    fn(SettleArgs, &'static str, i32) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// One strategy, as the tour shows it.
#[derive(Debug, Clone)]
pub struct StrategyInfo {
    /// The contract's name.
    pub name: &'static str,
    /// One line saying what it does.
    pub about: &'static str,
    /// The verdict it should earn on one and on two servers.
    pub expected: Expected,
}

/// One level, as the load tool needs it.
#[derive(Clone)]
pub struct LevelInfo {
    /// 0, 1, 2, ...
    pub number: u8,
    /// The binary's name (`level1`).
    pub binary: &'static str,
    /// Its strategies, in the level's order.
    pub strategies: Vec<StrategyInfo>,
    /// The think time the tour uses for this level: wide enough that the
    /// races a level is meant to show reproduce every time.
    pub race_think_time_ms: u64,
    /// Whether its servers need `--redis-url`.
    pub needs_redis: bool,
    /// Starts one server in this process.
    pub start: StartFn,
    /// Waits for asynchronous persistence to finish, for levels that have it.
    pub settle: Option<SettleFn>,
    /// Its own reset, for levels that have one; the others are reset in
    /// PostgreSQL alone.
    pub reset: Option<ResetFn>,
}

impl std::fmt::Debug for LevelInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LevelInfo")
            .field("number", &self.number)
            .field("binary", &self.binary)
            .field("strategies", &self.strategies)
            .finish_non_exhaustive()
    }
}

impl LevelInfo {
    fn new<C>(
        number: u8,
        binary: &'static str,
        table: &'static [StrategyEntry<C>],
        race_think_time_ms: u64,
        needs_redis: bool,
        start: StartFn,
    ) -> Self {
        Self {
            number,
            binary,
            strategies: table
                .iter()
                .map(|entry| StrategyInfo {
                    name: entry.name,
                    about: entry.about,
                    expected: entry.expected,
                })
                .collect(),
            race_think_time_ms,
            needs_redis,
            start,
            settle: None,
            reset: None,
        }
    }

    /// The same level, with a settle step before verification.
    fn settle_with(mut self, settle: SettleFn) -> Self {
        self.settle = Some(settle);
        self
    }

    /// The same level, reset by its own path before each rush.
    fn reset_with(mut self, reset: ResetFn) -> Self {
        self.reset = Some(reset);
        self
    }

    /// The strategy called `name`, or the level's first when `None`.
    pub fn strategy(&self, name: Option<&str>) -> anyhow::Result<&StrategyInfo> {
        match name {
            None => self
                .strategies
                .first()
                .context("this level has no strategies"),
            Some(name) => self
                .strategies
                .iter()
                .find(|s| s.name == name)
                .with_context(|| {
                    format!(
                        "level {} has no strategy {name:?}; it has: {}",
                        self.number,
                        self.strategies
                            .iter()
                            .map(|s| s.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }),
        }
    }
}

/// Every level the load tool can run, in order.
pub fn levels() -> Vec<LevelInfo> {
    vec![
        LevelInfo::new(
            0,
            "level0",
            level0::STRATEGIES,
            level0::RACE_THINK_TIME_MS,
            false,
            |args| Box::pin(async move { level0::Cli::try_parse_from(args)?.start().await }),
        ),
        LevelInfo::new(
            1,
            "level1",
            level1::STRATEGIES,
            level1::RACE_THINK_TIME_MS,
            false,
            |args| Box::pin(async move { level1::Cli::try_parse_from(args)?.start().await }),
        ),
        LevelInfo::new(
            2,
            "level2",
            level2::STRATEGIES,
            level2::RACE_THINK_TIME_MS,
            false,
            |args| Box::pin(async move { level2::Cli::try_parse_from(args)?.start().await }),
        ),
        LevelInfo::new(
            3,
            "level3",
            level3::STRATEGIES,
            level3::RACE_THINK_TIME_MS,
            true,
            |args| Box::pin(async move { level3::Cli::try_parse_from(args)?.start().await }),
        ),
        LevelInfo::new(
            4,
            "level4",
            level4::STRATEGIES,
            level4::RACE_THINK_TIME_MS,
            true,
            |args| Box::pin(async move { level4::Cli::try_parse_from(args)?.start().await }),
        )
        // A 201 means "decided in Redis"; the order reaches PostgreSQL
        // through a stream. Judge the run only once it has.
        .settle_with(|args| Box::pin(level4_settle(args)))
        // Redis sells; a reset in PostgreSQL alone would let a buyer be sold
        // a unit of the sale being thrown away. Level 4's own reset fences
        // Redis before PostgreSQL commits.
        .reset_with(|args, name, stock| Box::pin(level4_reset(args, name, stock))),
        // A 201 is sent only after COMMIT: nothing to settle.
        LevelInfo::new(
            6,
            "level6",
            level6::STRATEGIES,
            level6::RACE_THINK_TIME_MS,
            true,
            |args| Box::pin(async move { level6::Cli::try_parse_from(args)?.start().await }),
        ),
    ]
}

/// Level 4's settle: waits until every sale Redis decided is in PostgreSQL.
async fn level4_settle(args: SettleArgs) -> anyhow::Result<()> {
    let redis_url = args.redis_url.context(
        "Level 4 needs the servers' Redis (--redis-url or REDIS_URL) to know \
         when every sale it decided has reached PostgreSQL",
    )?;
    level4::drain::wait_until_persisted(
        &args.database_url,
        &redis_url,
        args.ticket_id,
        level4::drain::DEFAULT_TIMEOUT,
    )
    .await
    .map(|_| ())
}

/// Level 4's reset: through its `SaleStore`, which fences Redis first.
async fn level4_reset(args: SettleArgs, name: &'static str, stock: i32) -> anyhow::Result<()> {
    let redis_url = args
        .redis_url
        .context("Level 4 needs the servers' Redis (--redis-url or REDIS_URL) to reset its sale")?;
    let ticket = ticket_core::TicketId::parse(i128::from(args.ticket_id))?;
    let store = level4::store::SaleStore::connect(&args.database_url, &redis_url).await?;
    let reset = store.reset_sale(ticket, name, stock).await;
    store.pool().close().await;
    reset.context("resetting the Level 4 sale")?;
    Ok(())
}

/// `--level`'s choices for `--help` and shell completion, from [`levels`]
/// (the only list): each number with its strategies.
pub fn level_choices() -> Vec<clap::builder::PossibleValue> {
    levels()
        .iter()
        .map(|level| {
            let names: Vec<&str> = level.strategies.iter().map(|s| s.name).collect();
            clap::builder::PossibleValue::new(level.number.to_string())
                .help(format!("strategies: {}", names.join(", ")))
        })
        .collect()
}

/// `--strategy`'s choices: every level's strategies, each with its level
/// and what it does. Whether the strategy belongs to the chosen level is
/// checked when the run starts.
pub fn strategy_choices() -> Vec<clap::builder::PossibleValue> {
    let mut seen = std::collections::HashSet::new();
    levels()
        .iter()
        .flat_map(|level| {
            level
                .strategies
                .iter()
                .map(move |s| (level.number, s.name, s.about))
        })
        .filter(|(_, name, _)| seen.insert(*name))
        .map(|(number, name, about)| {
            clap::builder::PossibleValue::new(name).help(format!("level {number}: {about}"))
        })
        .collect()
}

/// The level numbered `number`.
pub fn level(number: u8) -> anyhow::Result<LevelInfo> {
    let all = levels();
    let known: Vec<String> = all.iter().map(|l| l.number.to_string()).collect();
    all.into_iter()
        .find(|l| l.number == number)
        .with_context(|| {
            format!(
                "no level {number}; this build has levels {}",
                known.join(", ")
            )
        })
}

/// The level whose binary is called `binary` (`level1`).
pub fn level_by_binary(binary: &str) -> anyhow::Result<LevelInfo> {
    levels()
        .into_iter()
        .find(|l| l.binary == binary)
        .with_context(|| format!("no level called {binary:?}"))
}

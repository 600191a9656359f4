//! # ticket-rush workshop exercises
//!
//! Each exercise is one file a learner edits, `exercises/NN-name/sell.rs`,
//! next to its statement, `exercises/NN-name/README.md`. The file holds a
//! strategy that compiles, runs, and is wrong: it implements the same
//! [`ticket_core::SellTickets`] trait every level implements, so it is served
//! by the same HTTP API and can be rushed by the same load tool.
//!
//! `cargo run -p load -- exercise check N` builds this crate, starts two
//! `exercise-server --exercise N` processes on one database (and one Redis),
//! sends a rush at them, judges the result from the database, and explains
//! what went wrong in a learner's words, with the next hint.
//!
//! | module | role |
//! | --- | --- |
//! | the `exNN_*` modules | the learner's files (`exercises/NN-name/sell.rs`) |
//! | [`stubs`] | the pristine stubs (`exercises/stubs/`): `load exercise reset N` copies one back, and CI checks that each one fails |
//! | [`solutions`] | one reference solution per exercise, in the stub's shape, each calling or retelling a level's code; CI checks that each one passes |
//! | [`kit`] | what is not the lesson: a Redis connection, a lock's acquire loop, fencing tokens |
//!
//! The server picks a variant with `--variant learner|stub|solution`
//! (default: the learner's file).

pub mod kit;
pub mod solutions;
pub mod stubs;

#[path = "../01-one-lock/sell.rs"]
pub mod ex01_one_lock;
#[path = "../02-lock-across-commit/sell.rs"]
pub mod ex02_lock_across_commit;
#[path = "../03-row-lock/sell.rs"]
pub mod ex03_row_lock;
#[path = "../04-optimistic-retry/sell.rs"]
pub mod ex04_optimistic_retry;
#[path = "../05-atomic-update/sell.rs"]
pub mod ex05_atomic_update;
#[path = "../06-owner-release/sell.rs"]
pub mod ex06_owner_release;
#[path = "../07-fencing/sell.rs"]
pub mod ex07_fencing;
#[path = "../08-idempotency-key/sell.rs"]
pub mod ex08_idempotency_key;
#[path = "../09-lua-purchase/sell.rs"]
pub mod ex09_lua_purchase;
#[path = "../10-lock-order/sell.rs"]
pub mod ex10_lock_order;

use clap::Parser;
use ticket_core::server::ServerArgs;
use ticket_core::strategy::{BuildStrategy, Expected, StrategyEntry};
use ticket_core::RunningServer;

use crate::kit::Config;

/// Which code an exercise server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// The learner's file, `exercises/NN-name/sell.rs`.
    Learner,
    /// The pristine stub, `exercises/stubs/NN-name.rs` (fails its check).
    Stub,
    /// The reference solution (passes its check).
    Solution,
}

/// One exercise: its number, and how to build each variant.
pub struct Exercise {
    /// 1, 2, ...
    pub number: u8,
    /// Whether its servers need `--redis-url`.
    pub needs_redis: bool,
    learner: BuildStrategy<Config>,
    stub: BuildStrategy<Config>,
    solution: BuildStrategy<Config>,
}

macro_rules! exercise {
    ($number:literal, $redis:literal, $learner:ident, $stub:ident, $solution:ident) => {
        Exercise {
            number: $number,
            needs_redis: $redis,
            learner: $learner::build,
            stub: stubs::$stub::build,
            solution: solutions::$solution::build,
        }
    };
}

/// Every exercise, in order.
pub const EXERCISES: &[Exercise] = &[
    exercise!(1, false, ex01_one_lock, ex01, ex01),
    exercise!(2, false, ex02_lock_across_commit, ex02, ex02),
    exercise!(3, false, ex03_row_lock, ex03, ex03),
    exercise!(4, false, ex04_optimistic_retry, ex04, ex04),
    exercise!(5, false, ex05_atomic_update, ex05, ex05),
    exercise!(6, true, ex06_owner_release, ex06, ex06),
    exercise!(7, true, ex07_fencing, ex07, ex07),
    exercise!(8, false, ex08_idempotency_key, ex08, ex08),
    exercise!(9, true, ex09_lua_purchase, ex09, ex09),
    exercise!(10, false, ex10_lock_order, ex10, ex10),
];

/// The exercise whose strategy owns the `Idempotency-Key`s: its servers
/// run with `--idempotency strategy`.
pub const KEYS_EXERCISE: u8 = 8;

const NAMES: [&str; 10] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];

/// The exercise numbered `number`.
pub fn exercise(number: u8) -> anyhow::Result<&'static Exercise> {
    EXERCISES
        .iter()
        .find(|e| e.number == number)
        .ok_or_else(|| {
            let known: Vec<String> = EXERCISES.iter().map(|e| e.number.to_string()).collect();
            anyhow::anyhow!("no exercise {number}; there are: {}", known.join(", "))
        })
}

impl Exercise {
    /// The strategy table ticket-core's server picks from: one entry, this
    /// exercise in `variant`, named by its number.
    fn table(&self, variant: Variant) -> &'static [StrategyEntry<Config>] {
        let build = match variant {
            Variant::Learner => self.learner,
            Variant::Stub => self.stub,
            Variant::Solution => self.solution,
        };
        Box::leak(Box::new([StrategyEntry {
            name: NAMES[usize::from(self.number) - 1],
            about: "a workshop exercise",
            expected: Expected::CORRECT,
            build,
        }]))
    }
}

/// `exercise-server`: serves one exercise's strategy exactly like a level's
/// binary serves its own.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "exercise-server",
    version,
    about = "Serves a ticket-rush workshop exercise (your code) on a port, like a level binary",
    long_about = "Serves a ticket-rush workshop exercise on a port, with the same HTTP API as every level.\n\n\
        `cargo run -p load -- exercise check N` starts two of these and rushes them; you can also \
        start two yourself (same DATABASE_URL, and REDIS_URL for exercises 6, 7 and 9) and point \
        `load run --target` at them."
)]
pub struct Cli {
    /// Where to listen and which database to use.
    #[command(flatten)]
    pub server: ServerArgs,

    /// Which exercise to serve.
    #[arg(long)]
    pub exercise: u8,

    /// Whose code: yours (learner), the pristine stub, or the reference
    /// solution.
    #[arg(long, value_enum, default_value_t = Variant::Learner)]
    pub variant: Variant,

    /// Redis for exercises 6, 7 and 9. Every server must use the same one.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
}

impl Cli {
    /// Starts the server this command line describes.
    pub async fn start(mut self) -> anyhow::Result<RunningServer> {
        let exercise = exercise(self.exercise)?;
        if exercise.number == KEYS_EXERCISE {
            // The learner's code owns the keys: the API must not answer a
            // repeat before the strategy sees it.
            self.server.idempotency = ticket_core::idempotency::Mode::Strategy;
        }
        let mut config = Config::default();
        if exercise.needs_redis {
            let (url, throwaway) = ticket_core::server::redis_or_throwaway(self.redis_url).await?;
            config.redis_url = Some(url);
            config.throwaway_redis = throwaway;
        }
        let table = exercise.table(self.variant);
        let name = table[0].name;
        ticket_core::server::start(self.server, "exercise", table, name, config).await
    }
}

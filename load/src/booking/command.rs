//! `load booking` on the command line: its flags, its output and its exit
//! status (0 correct, 1 the run's verdict is not the expected one, 2 the
//! tool failed), as `load run` does.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use super::run::{booking, BookingOptions};
use crate::expect::{EXIT_MET, EXIT_NOT_MET};

/// `load booking`'s flags.
#[derive(Args, Debug, Clone)]
pub struct BookingArgs {
    /// How many users try to book.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,

    /// How many seats are on sale (a tenth VIP at the front, then R, then S).
    #[arg(long, default_value_t = 1_000)]
    pub seats: i64,

    /// How many Level 5 servers to start, sharing one database and Redis.
    /// Users are dealt round-robin over them.
    #[arg(long, default_value_t = 2)]
    pub servers: usize,

    /// The servers' hold strategy: pessimistic, optimistic or redis-lua.
    #[arg(long, default_value = "pessimistic", value_parser = clap::builder::PossibleValuesParser::new(level5::holds::STRATEGIES))]
    pub strategy: String,

    /// The share of users who pay once they hold seats; the others walk
    /// away and their holds must expire.
    #[arg(long, default_value_t = 0.8)]
    pub pay_ratio: f64,

    /// The waiting room: `on` (join, poll, get admitted) or `off` (go
    /// straight to the seat map; for servers started with --queue off).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub queue: String,

    /// Most admitted, unfinished users at once (the servers' --active-limit,
    /// for the servers started).
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub active_limit: u32,

    /// How long a hold lasts unpaid, for the servers started: short, so
    /// that walked-away holds expire within the run.
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    pub hold_ttl_ms: u64,

    /// How long an admitted user may stay idle, for the servers started.
    /// Users who find no seat leave without a word (the API has no way to
    /// leave the line); their place comes back only after this, so it
    /// bounds how fast the line moves once the seats are gone.
    #[arg(long, default_value_t = 3_000, value_name = "MS")]
    pub admitted_ttl_ms: u64,

    /// The servers' --think-time-ms: widens the race windows, so that the
    /// broken modes (--server-arg) break on demand.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub think_time_ms: u64,

    /// An extra flag for the servers started (repeatable), for example
    /// --server-arg=--lock-scope=before-commit.
    #[arg(long = "server-arg", value_name = "FLAG", allow_hyphen_values = true)]
    pub server_args: Vec<String>,

    /// Use servers you started yourself instead (repeat for each). Needs
    /// --database-url and --admin-token.
    #[arg(long = "target", value_name = "URL")]
    pub targets: Vec<String>,

    /// The admin token of the --target servers, to put a show on sale.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// PostgreSQL. Default: DATABASE_URL, else a throwaway server.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Redis. Default: REDIS_URL, else a throwaway redis-server.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Most HTTP requests in flight at once, over all users: users are
    /// tasks, not sockets.
    #[arg(long, default_value_t = 256)]
    pub connections: usize,

    /// Tries at holding seats (other seats each time) before a user gives up.
    #[arg(long, default_value_t = 5)]
    pub hold_attempts: u32,

    /// Seed for the users' choices.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Seconds before the users are abandoned (the run then fails).
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,

    /// Kill (SIGKILL) the first server once this share of the users is
    /// done (0 to 1): the run must still end correct on the others.
    #[arg(long, value_name = "SHARE")]
    pub kill_at: Option<f64>,

    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Also write the HTML booking page (and its JSON) into this directory.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
}

impl BookingArgs {
    /// The options of a run, with the `load` executable that starts servers.
    pub fn options(&self, exe: PathBuf) -> BookingOptions {
        BookingOptions {
            users: self.users,
            seats: self.seats,
            servers: self.servers,
            strategy: self.strategy.clone(),
            pay_ratio: self.pay_ratio,
            queue: self.queue == "on",
            active_limit: Some(self.active_limit),
            hold_ttl_ms: self.hold_ttl_ms,
            admitted_ttl_ms: self.admitted_ttl_ms,
            think_time_ms: self.think_time_ms,
            server_args: self.server_args.clone(),
            targets: self.targets.clone(),
            admin_token: self.admin_token.clone(),
            database_url: self.database_url.clone(),
            redis_url: self.redis_url.clone(),
            connections: self.connections,
            hold_attempts: self.hold_attempts,
            seed: self.seed,
            timeout: Duration::from_secs(self.timeout),
            progress: !self.json,
            kill_at: self.kill_at,
            exe,
        }
    }
}

/// Runs `load booking` and turns its verdict into the exit status.
pub async fn command(args: BookingArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.pay_ratio),
        "--pay-ratio must be between 0 and 1"
    );
    let exe = std::env::current_exe().context("cannot find the load executable")?;
    let run = booking(&args.options(exe)).await?;
    if args.json {
        println!("{}", serde_json::to_string(&run.report)?);
    } else {
        print!("{}", super::model::render(&run.report));
        println!("measured with {}", run.machine.settings_line());
    }
    if let Some(dir) = &args.report {
        let page = super::report::write(dir, &run)?;
        eprintln!("report written to {}", page.display());
    }
    Ok(ExitCode::from(if run.report.is_correct() {
        EXIT_MET
    } else {
        EXIT_NOT_MET
    }))
}

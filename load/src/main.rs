//! `load`: rush any level of ticket-rush and verify the outcome from the
//! database.
//!
//! Run with:
//!
//! ```text
//! cargo run --release -p load -- tour
//! cargo run --release -p load -- run --level 1 --strategy mutex --servers 2
//! cargo run --release -p load -- run --level 1 --target http://127.0.0.1:8080 --target http://127.0.0.1:8081
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::{Args, Parser, Subcommand};
use load::expect::{ExpectVerdict, Expectations, EXIT_MET, EXIT_NOT_MET, EXIT_TOOL_FAILED};
use load::output::{render_report, tour_row};
use load::report::{ReportData, ReportRow};
use load::run::{run, RunOptions, RushSettings, Sustained};
use load::tour::{tour, TourOptions};
use load::units::OnOff;

/// Rush a ticket-rush server with many buyers at once and check, from the
/// database, whether exactly the right number of tickets sold.
///
/// Exit status: 0 every expectation met; 1 the run finished but a verdict or
/// threshold was not met (or a tour row was unexpected); 2 the tool could
/// not run (bad arguments, a target or database that does not answer).
#[derive(Parser, Debug)]
#[command(name = "load", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Rush one level and strategy, on servers this tool starts (--servers)
    /// or on servers you started (--target).
    Run(RunArgs),
    /// Rush every level and strategy, on one server and on two, and print
    /// one comparison table. Exits 1 when a result is not the expected one
    /// (a correct strategy oversold, or a race that did not reproduce), 2
    /// when the tour itself could not run.
    Tour(TourArgs),
    /// Book seats at Level 5's box office with many users (queue, seat map,
    /// hold, wallet, pay or walk away) and judge the run from the database.
    Booking(load::booking::BookingArgs),
    /// Start a throwaway PostgreSQL (and Redis) for a two-terminal demo and
    /// print their URLs; stops them on Ctrl-C.
    Services(load::services::ServicesArgs),
    /// Workshop exercises: list them with your progress, `check N` your
    /// code with a real rush judged from the database, `reset N` a stub.
    Exercise(load::exercise::ExerciseArgs),
    /// Print a shell completion script: `load completions bash >
    /// ~/.local/share/bash-completion/completions/load`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run one level's server (used by `run` and `tour` to start servers as
    /// separate processes). Example: `load serve level1 --port 8080`.
    #[command(hide = true)]
    Serve {
        /// The level binary's name followed by its flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
}

/// How the buyers behave; shared by `run` and `tour`.
#[derive(Args, Debug)]
struct RushArgs {
    /// How many buyers click "buy" at the same instant. Each has its own
    /// connection.
    #[arg(long, default_value_t = 1000)]
    buyers: usize,

    /// How many tickets are on sale. The run resets the ticket to this stock
    /// before it starts.
    #[arg(long, default_value_t = 100)]
    tickets: i32,

    /// How many different people the buyers are. By default every buyer is
    /// a different person; 1 means one person clicking many times.
    #[arg(long)]
    distinct_users: Option<usize>,

    /// Seed for the buyers' user ids, to repeat a run exactly.
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// How many times a buyer answered "503 busy" clicks again before giving
    /// up.
    #[arg(long, default_value_t = load::rush::DEFAULT_MAX_ATTEMPTS)]
    max_attempts: u32,

    /// Seconds before a rush is abandoned.
    #[arg(long, default_value_t = 300)]
    timeout: u64,

    /// Repeat each rush this many times. Races are probabilistic; a verdict
    /// must hold in every round.
    #[arg(long, default_value_t = 1)]
    rounds: u32,

    /// Pause in milliseconds that servers take between reading and writing
    /// the stock (their --think-time-ms). By default each level uses the
    /// window that makes its races reproduce every time.
    #[arg(long, value_name = "MS")]
    think_time_ms: Option<u64>,

    /// PostgreSQL to use. Default: DATABASE_URL, else a throwaway server
    /// started from the local PostgreSQL binaries.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,

    /// Redis to use, for levels that need it. Default: REDIS_URL, else a
    /// throwaway redis-server.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,

    /// Sustained mode: instead of a sell-out, buy for this long (30s, 2m,
    /// 1h30m, 500ms; a bare number is seconds) from a stock that never runs
    /// out, to measure throughput. Each result is shown as a fraction of
    /// ceilings measured in the same run (the same purchase straight to
    /// PostgreSQL, an HTTP endpoint that does no work, a Lua decrement
    /// straight to Redis).
    #[arg(long, value_name = "DURATION", value_parser = load::units::parse_duration)]
    duration: Option<Duration>,

    /// Concurrent buyers in sustained mode (--duration); with --rate, the
    /// most requests in flight (connections).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,

    /// Open model for sustained mode: this many new buyers arrive every
    /// second whether or not earlier ones were answered (as wrk2 and k6's
    /// constant-arrival-rate do). Latency then runs from when each buyer
    /// was due, so a stalled server shows in it (coordinated-omission
    /// correction); the uncorrected figure is shown beside it.
    #[arg(long, value_name = "PER_SEC", requires = "duration", value_parser = load::units::parse_rate)]
    rate: Option<f64>,

    /// Whether every purchase carries an Idempotency-Key (one per buyer, the
    /// same on each of its attempts), so that a sale whose answer was lost
    /// is replayed as 201 on the retry. `off` measures the bare purchase.
    #[arg(long, value_enum, default_value = "on", value_name = "ON_OFF")]
    idempotency_keys: OnOff,

    /// Print JSON on stdout instead of tables (one object per round).
    #[arg(long)]
    json: bool,

    /// Measure with durability on: the throwaway PostgreSQL keeps its
    /// defaults (fsync, synchronous_commit and full_page_writes on) and the
    /// throwaway Redis writes an append-only file (see --appendfsync). By
    /// default both run with nothing flushed to disk, which is faster. Servers
    /// given by URL keep their own settings; the report shows them either way.
    #[arg(long)]
    durable: bool,

    /// With --durable: how often Redis flushes its append-only file.
    #[arg(long, value_enum, default_value = "everysec", requires = "durable")]
    appendfsync: load::run::AppendFsync,

    /// Also write an HTML report with plots (and the JSON behind it) into
    /// this directory. It is self-contained: open DIR/index.html offline.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
}

impl RushArgs {
    fn settings(&self) -> RushSettings {
        RushSettings {
            buyers: self.buyers,
            tickets: self.tickets,
            distinct_users: self.distinct_users,
            seed: self.seed,
            max_attempts: self.max_attempts,
            timeout: Duration::from_secs(self.timeout),
            progress: !self.json,
            idempotency_keys: self.idempotency_keys == OnOff::On,
            sustained: self.duration.map(|duration| Sustained {
                duration,
                concurrency: self.concurrency.max(1),
                rate: self.rate,
            }),
            durable: self.durable.then_some(self.appendfsync),
        }
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Which level to rush (0: no control, 1: local locks, ...).
    #[arg(long, value_parser = level_parser())]
    level: u8,

    /// Which of the level's strategies. Default: its first.
    #[arg(long, value_parser = PossibleValuesParser::new(load::levels::strategy_choices()))]
    strategy: Option<String>,

    /// How many servers to start, all sharing one database. Buyers are dealt
    /// round-robin over them.
    #[arg(long, default_value_t = 2)]
    servers: usize,

    /// Use servers you started yourself instead (repeat for each). Needs
    /// --database-url: the database they share.
    #[arg(long = "target", value_name = "URL")]
    targets: Vec<String>,

    /// The ticket id to race for.
    #[arg(long, default_value_t = 1)]
    ticket_id: i64,

    /// An extra flag for the servers this tool starts (repeatable), for
    /// example --server-arg=--max-retries=0.
    #[arg(long = "server-arg", value_name = "FLAG", allow_hyphen_values = true)]
    server_args: Vec<String>,

    /// The verdict every round must earn, else exit 1: correct, oversold,
    /// undersold, inconsistent, errors, or any (judge, but accept every
    /// verdict: useful with thresholds alone).
    #[arg(long, value_name = "VERDICT", default_value = "correct")]
    expect: ExpectVerdict,

    /// Threshold: exit 1 when a round's p99 latency is above this many
    /// milliseconds.
    #[arg(long, value_name = "MS")]
    max_p99_ms: Option<f64>,

    /// Threshold: exit 1 when a round has more failed answers (errors) than
    /// this.
    #[arg(long, value_name = "N")]
    max_errors: Option<u64>,

    /// Threshold: exit 1 when a round sends fewer requests per second
    /// (throughput_rps, retries included) than this.
    #[arg(long, value_name = "N")]
    min_rps: Option<f64>,

    #[command(flatten)]
    rush: RushArgs,
}

#[derive(Args, Debug)]
struct TourArgs {
    /// Only these levels (comma-separated). Default: every level.
    #[arg(long, value_delimiter = ',', value_parser = level_parser())]
    levels: Option<Vec<u8>>,

    /// Run on a throwaway Redis Cluster (three masters, three replicas)
    /// instead of one Redis: the levels that run there (see
    /// `load::tour::cluster_levels`). Replaces --redis-url.
    #[arg(long)]
    redis_cluster: bool,

    #[command(flatten)]
    rush: RushArgs,
}

fn main() -> ExitCode {
    // `.env` first: flags read DATABASE_URL and REDIS_URL from the
    // environment. Clap exits 2 on a usage error, like any tool failure.
    ticket_core::server::load_dotenv();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_TOOL_FAILED);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_TOOL_FAILED)
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    // Every buyer holds a socket, and servers started from here inherit the
    // limit: raise the soft open-file limit to the hard one, first.
    load::client::raise_fd_limit();
    match command {
        Command::Run(args) => run_command(args).await,
        Command::Tour(args) => tour_command(args).await,
        Command::Booking(args) => {
            init_logging();
            load::booking::command(args).await
        }
        Command::Services(args) => {
            init_logging();
            load::services::command(args).await
        }
        Command::Exercise(args) => {
            init_logging();
            load::exercise::exercise_command(args).await
        }
        Command::Serve { args } => serve_command(args).await,
        Command::Completions { shell } => {
            let mut cli = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cli, "load", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn this_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the load executable to start servers with")
}

async fn run_command(args: RunArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let options = RunOptions {
        level: args.level,
        strategy: args.strategy,
        servers: args.servers,
        targets: args.targets,
        think_time_ms: args.rush.think_time_ms,
        server_args: args.server_args,
        ticket_id: args.ticket_id,
        rounds: args.rush.rounds,
        database_url: args.rush.database_url.clone(),
        redis_url: args.rush.redis_url.clone(),
        exe: this_exe()?,
        rush: args.rush.settings(),
    };
    let expectations = Expectations {
        verdict: args.expect.0,
        max_p99_ms: args.max_p99_ms,
        max_errors: args.max_errors,
        min_rps: args.min_rps,
    };
    let mut result = run(&options).await?;
    let settings = result.machine.settings_line();
    for report in &mut result.reports {
        report.settings.clone_from(&settings);
    }
    let reports = &result.reports;
    let many = reports.len() > 1;
    for (i, report) in reports.iter().enumerate() {
        if args.rush.json {
            println!("{}", serde_json::to_string(report)?);
        } else {
            print!("{}", render_report(report, many.then_some(i as u32 + 1)));
        }
    }
    if !args.rush.json {
        println!("measured with {settings}");
    }
    if let Some(dir) = &args.rush.report {
        let expected = if options.targets.is_empty() {
            load::levels::level(options.level)?
                .strategy(options.strategy.as_deref())
                .ok()
                .map(|s| s.expected.for_servers(options.servers.max(1)))
        } else {
            None
        };
        let rows = reports
            .iter()
            .map(|report| ReportRow {
                expected,
                as_expected: expected.map(|e| e == report.verdict),
                report: report.clone(),
            })
            .collect();
        let data = ReportData::new(
            format!("ticket-rush: level {} run", options.level),
            result.machine.clone(),
            rows,
        );
        let page = load::report::write(dir, &data)?;
        eprintln!("report written to {}", page.display());
    }
    let mut met = true;
    for (i, report) in reports.iter().enumerate() {
        for broken in expectations.broken(report) {
            met = false;
            let round = if many {
                format!("round {}: ", i + 1)
            } else {
                String::new()
            };
            eprintln!("NOT MET: {round}{broken}");
        }
    }
    Ok(ExitCode::from(if met { EXIT_MET } else { EXIT_NOT_MET }))
}

async fn tour_command(args: TourArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    // Kept alive (and stopped on drop) for the whole tour.
    let cluster = load::tour::start_cluster(args.redis_cluster).await?;
    let options = TourOptions {
        levels: match &cluster {
            Some(_) => Some(load::tour::cluster_levels(args.levels)?),
            None => args.levels,
        },
        think_time_ms: args.rush.think_time_ms,
        rounds: args.rush.rounds,
        database_url: args.rush.database_url.clone(),
        redis_url: match &cluster {
            Some(cluster) => Some(cluster.url().to_owned()),
            None => args.rush.redis_url.clone(),
        },
        exe: this_exe()?,
        rush: RushSettings {
            progress: false,
            ..args.rush.settings()
        },
    };
    let json = args.rush.json;
    if !json {
        load::output::print_tour_intro(&options.rush);
    }
    let result = tour(&options, |row| {
        if !json {
            println!("{}", tour_row(row));
        }
    })
    .await?;
    if let (false, Some(booking)) = (json, &result.booking) {
        println!("{}", load::booking::tour::tour_line(booking));
    }
    if json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        load::output::print_tour_summary(&result, &options.rush);
    }
    if let Some(dir) = &args.rush.report {
        load::tour::write_report(dir, &result, &options.rush)?;
    }
    Ok(ExitCode::from(if result.as_expected {
        EXIT_MET
    } else {
        EXIT_NOT_MET
    }))
}

async fn serve_command(args: Vec<String>) -> anyhow::Result<ExitCode> {
    ticket_core::server::init_tracing();
    let binary = args
        .first()
        .context("serve needs a level name, e.g. level1")?;
    if binary == load::booking::servers::BINARY {
        load::booking::servers::serve(args).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let info = load::levels::level_by_binary(binary)?;
    let server = (info.start)(args).await?;
    // Stop on Ctrl-C/SIGTERM, or when the load process that started us is
    // gone (our stdin closes), so that no server outlives its run.
    tokio::select! {
        () = ticket_core::server::shutdown_signal() => {},
        () = load::servers::parent_gone() => {},
    }
    server.stop().await?;
    Ok(ExitCode::SUCCESS)
}

/// Parses `--level`: one of the numbers in the levels table, listed in
/// `--help` and in shell completion.
fn level_parser() -> impl clap::builder::TypedValueParser<Value = u8> {
    PossibleValuesParser::new(load::levels::level_choices())
        .map(|number| number.parse::<u8>().expect("level numbers are small"))
}

fn init_logging() {
    // Quiet by default: the tables are the output.
    ticket_core::server::init_tracing_with_default("warn");
}

//! `load run` (and the steps `load tour` repeats per row): find the services,
//! start the servers, rush, judge, stop everything.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use ticket_core::services::{free_port, Durability, Postgres, Redis};

use crate::balancer::{Balancer, Front};
use crate::levels::{level, LevelInfo, SettleArgs};
use crate::machine::Machine;
use crate::model::{peak_rss_mib, Ceiling, Memory, Report};
use crate::rush::{rush, Reset, RushPlan, Settle, DEFAULT_MAX_ATTEMPTS};
use crate::servers::{check_targets, normalise_target, start_processes, ServerProcess, ServerSpec};
use crate::sustain::{self, SustainPlan};

/// The shared knobs of a rush, as the command line gives them.
#[derive(Debug, Clone)]
pub struct RushSettings {
    /// Concurrent buyers.
    pub buyers: usize,
    /// Units on sale.
    pub tickets: i32,
    /// Different people among the buyers (`None`: all different).
    pub distinct_users: Option<usize>,
    /// First seed for user ids; round k uses `seed + k - 1`.
    pub seed: u64,
    /// Most attempts per buyer.
    pub max_attempts: u32,
    /// Time limit for one rush.
    pub timeout: Duration,
    /// Show progress on stderr.
    pub progress: bool,
    /// Buyers send `Idempotency-Key`s (`--idempotency-keys`).
    pub idempotency_keys: bool,
    /// Sustained mode instead of a sell-out (`--duration`).
    pub sustained: Option<Sustained>,
    /// `--durable`: throwaway services keep every commit (PostgreSQL's
    /// defaults; Redis with an append-only file flushed this often).
    /// `None`: the fast settings (nothing flushed).
    pub durable: Option<AppendFsync>,
}

/// How often a durable Redis flushes its append-only file (`appendfsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppendFsync {
    /// Once a second: a crash loses at most about a second of sales.
    Everysec,
    /// Before every reply: a crash loses nothing that was answered.
    Always,
}

impl AppendFsync {
    /// The `appendfsync` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Everysec => "everysec",
            Self::Always => "always",
        }
    }
}

/// A sustained run's shape.
#[derive(Debug, Clone, Copy)]
pub struct Sustained {
    /// How long to buy.
    pub duration: Duration,
    /// Concurrent buyers; with `rate`, the most requests in flight.
    pub concurrency: usize,
    /// Open model: arrivals per second (`--rate`); `None`: closed model.
    pub rate: Option<f64>,
}

impl Default for RushSettings {
    fn default() -> Self {
        Self {
            buyers: 1000,
            tickets: 100,
            distinct_users: None,
            seed: 42,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: Duration::from_secs(300),
            progress: false,
            idempotency_keys: true,
            sustained: None,
            durable: None,
        }
    }
}

/// The database (and Redis) a run uses: given, or throwaway for this run.
pub struct Services {
    postgres: Postgres,
    redis: Option<Redis>,
}

impl Services {
    /// Uses the given URLs, else the environment, else throwaway servers
    /// (fast, or durable when `durable` says how Redis flushes). Redis is
    /// only found or started when `need_redis`. Servers given by URL keep
    /// their own settings; the report shows what they are.
    pub async fn find(
        database_url: Option<String>,
        redis_url: Option<String>,
        need_redis: bool,
        durable: Option<AppendFsync>,
    ) -> anyhow::Result<Self> {
        let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let postgres = match database_url.or_else(|| from_env("DATABASE_URL")) {
            Some(url) => Postgres::external(url),
            None => {
                let durability = if durable.is_some() {
                    Durability::Durable
                } else {
                    Durability::Fast
                };
                tokio::task::spawn_blocking(move || Postgres::throwaway_with(durability)).await??
            }
        };
        let redis = match (redis_url.or_else(|| from_env("REDIS_URL")), need_redis) {
            (Some(url), _) => Some(Redis::external(url)),
            (None, true) => Some(
                tokio::task::spawn_blocking(move || match durable {
                    None => Redis::throwaway(),
                    Some(fsync) => Redis::throwaway_on(
                        free_port()?,
                        &["--appendonly", "yes", "--appendfsync", fsync.as_str()],
                    ),
                })
                .await??,
            ),
            (None, false) => None,
        };
        Ok(Self { postgres, redis })
    }

    /// The PostgreSQL URL.
    pub fn database_url(&self) -> &str {
        self.postgres.url()
    }

    /// The Redis URL, if any.
    pub fn redis_url(&self) -> Option<&str> {
        self.redis.as_ref().map(Redis::url)
    }

    /// The load generator and these services' processes, for CPU per sale:
    /// only throwaway services started here have processes we know.
    pub async fn cpu_watch(&self) -> crate::cpu::Watch {
        let postgres = match self.postgres.is_throwaway() {
            true => crate::cpu::postmaster_pid(self.database_url()).await,
            false => None,
        };
        let redis = match &self.redis {
            // A port: a throwaway redis-server (not a URL, not a container).
            Some(redis) if redis.port().is_some() => crate::cpu::redis_pid(redis.url()).await,
            _ => None,
        };
        crate::cpu::Watch::services(Some(postgres), self.redis.as_ref().map(|_| redis))
    }
}

/// `load run`: one level and strategy, on servers it starts or on `targets`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Level number.
    pub level: u8,
    /// Strategy (`None`: the level's first).
    pub strategy: Option<String>,
    /// How many servers to start (ignored with `targets`).
    pub servers: usize,
    /// Servers someone else started.
    pub targets: Vec<String>,
    /// A load balancer to put in front of the servers (`--balancer`):
    /// buyers then use its one URL.
    pub balancer: Option<Balancer>,
    /// `--think-time-ms` for started servers (`None`: the level's race window).
    pub think_time_ms: Option<u64>,
    /// Extra flags for started servers.
    pub server_args: Vec<String>,
    /// The ticket to race for.
    pub ticket_id: i64,
    /// Repeat the rush this many times.
    pub rounds: u32,
    /// PostgreSQL (`None`: environment or throwaway).
    pub database_url: Option<String>,
    /// Redis (`None`: environment or throwaway, for levels that need it).
    pub redis_url: Option<String>,
    /// The `load` executable, which runs servers with `load serve`.
    pub exe: PathBuf,
    /// The rush itself.
    pub rush: RushSettings,
}

/// Runs `options.rounds` rushes and returns every round's report.
pub async fn run(options: &RunOptions) -> anyhow::Result<RunResult> {
    let info = level(options.level)?;
    let strategy = info.strategy(options.strategy.as_deref())?.name;
    let given_targets = given_targets(options).await?;
    let services = Services::find(
        options.database_url.clone(),
        options.redis_url.clone(),
        info.needs_redis && options.targets.is_empty(),
        options.rush.durable,
    )
    .await?;
    check_database(services.database_url()).await?;

    let (think_time_ms, processes, targets) = if options.targets.is_empty() {
        let (think, processes) = start_servers(options, &info, strategy, &services).await?;
        let targets = processes.iter().map(|p| p.url().to_owned()).collect();
        (Some(think), processes, targets)
    } else {
        (None, Vec::new(), given_targets)
    };

    let mut reports = Vec::new();
    let watch = services
        .cpu_watch()
        .await
        .with_servers(server_pids(&processes, targets.len()));
    let result = async {
        let front = match options.balancer {
            Some(kind) => Some(Front::start(kind, targets.clone(), options.rush.timeout).await?),
            None => None,
        };
        let buyers_use = front
            .as_ref()
            .map_or_else(|| targets.clone(), |f| vec![f.url().to_owned()]);
        let ceilings = match options.rush.sustained {
            Some(shape) => {
                let pools = targets.len() * default_pool_size();
                let id = options.ticket_id + 1;
                measure_ceilings(&services, &buyers_use, shape, pools, id, &watch).await?
            }
            None => Vec::new(),
        };
        for round in 0..options.rounds.max(1) {
            let mut report = round_via(
                front.as_ref(),
                &options.rush,
                &info,
                &services,
                targets.clone(),
                (options.ticket_id, round),
                &watch,
            )
            .await?;
            label_report(
                &mut report,
                &ceilings,
                &processes,
                (info.number, strategy),
                think_time_ms,
            );
            reports.push(report);
        }
        anyhow::Ok(())
    }
    .await;
    let machine = Machine::describe(services.database_url(), services.redis_url()).await;
    stop_all(processes).await;
    result?;
    Ok(RunResult { reports, machine })
}

/// The servers given with `--target`, normalised and answering `/health`,
/// once the database they share is known.
async fn given_targets(options: &RunOptions) -> anyhow::Result<Vec<String>> {
    if !options.targets.is_empty()
        && options.database_url.is_none()
        && std::env::var("DATABASE_URL").map_or(true, |v| v.is_empty())
    {
        anyhow::bail!(
            "with --target, also give --database-url (or DATABASE_URL): the database those \
             servers share, which the load tool resets before and checks after the rush"
        );
    }
    let targets = options
        .targets
        .iter()
        .map(|t| normalise_target(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    check_targets(&targets).await?;
    Ok(targets)
}

/// Writes into a round's report where it ran: the ceilings measured in the
/// same run, the servers' memory, the level and strategy, the think time,
/// and the CPU floor its cost is compared with.
pub(crate) fn label_report(
    report: &mut Report,
    ceilings: &[Ceiling],
    processes: &[ServerProcess],
    (level, strategy): (u8, &str),
    think_time_ms: Option<u64>,
) {
    report.ceilings = ceilings.to_vec();
    report.memory = memory_of(processes);
    report.level = Some(level);
    report.strategy = Some(strategy.to_owned());
    report.think_time_ms = think_time_ms;
    crate::cpu::attach_floor(report);
}

/// Starts `options.servers` servers of the level and strategy on
/// `services`, and returns the think time they were given with them.
async fn start_servers(
    options: &RunOptions,
    info: &LevelInfo,
    strategy: &str,
    services: &Services,
) -> anyhow::Result<(u64, Vec<ServerProcess>)> {
    let think = options
        .think_time_ms
        .unwrap_or(default_think_time(info, &options.rush));
    let spec = ServerSpec::new(info.number, strategy)
        .think_time_ms(think)
        .args(options.server_args.iter().cloned());
    let processes = start_processes(
        &options.exe,
        &spec,
        services.database_url(),
        services.redis_url(),
        options.servers.max(1),
    )
    .await?;
    Ok((think, processes))
}

/// What `load run` measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// One report per round.
    pub reports: Vec<Report>,
    /// The machine and services it ran on.
    pub machine: Machine,
}

/// The database connections one server opens by default (`--max-connections`).
pub(crate) fn default_pool_size() -> usize {
    ticket_core::ServerArgs::default().max_connections as usize
}

/// The think time when none is given: the level's race window for a
/// sell-out (so its races reproduce), none for a sustained run (which
/// measures speed, and a pause would measure only the pause).
pub(crate) fn default_think_time(info: &LevelInfo, settings: &RushSettings) -> u64 {
    if settings.sustained.is_some() {
        0
    } else {
        info.race_think_time_ms
    }
}

/// The level's own steps around a rush, bound to where its sale lives: the
/// wait for persistence before judging, and the reset before selling (Level
/// 4 has both; other levels neither, and are reset in PostgreSQL alone).
pub fn level_steps(info: &LevelInfo, args: &SettleArgs) -> (Option<Settle>, Option<Reset>) {
    let settle = info.settle.map(|settle| {
        let args = args.clone();
        Settle(Arc::new(move || settle(args.clone())))
    });
    let reset = info.reset.map(|reset| {
        let args = args.clone();
        Reset(Arc::new(move |name, stock| {
            reset(args.clone(), name, stock)
        }))
    });
    (settle, reset)
}

/// One round on `targets`, or, given a `front`, through its one URL,
/// reported as the servers behind it (see [`Front::label`]). `place` is
/// the ticket and the round's number; `watch` the processes whose CPU
/// time a sustained run measures.
pub(crate) async fn round_via(
    front: Option<&Front>,
    settings: &RushSettings,
    info: &LevelInfo,
    services: &Services,
    targets: Vec<String>,
    (ticket_id, round): (i64, u32),
    watch: &crate::cpu::Watch,
) -> anyhow::Result<Report> {
    let Some(front) = front else {
        return one_round(settings, info, services, targets, ticket_id, round, watch).await;
    };
    let before = front.counters().await;
    let through = vec![front.url().to_owned()];
    let mut report = one_round(settings, info, services, through, ticket_id, round, watch).await?;
    front.label(&mut report, &before).await;
    Ok(report)
}

/// One sell-out rush, or one sustained run when the settings say so
/// (measuring the CPU time of `watch`'s processes per sale).
pub(crate) async fn one_round(
    settings: &RushSettings,
    info: &LevelInfo,
    services: &Services,
    targets: Vec<String>,
    ticket_id: i64,
    round: u32,
    watch: &crate::cpu::Watch,
) -> anyhow::Result<Report> {
    let database_url = services.database_url();
    let (settle, resetter) = level_steps(
        info,
        &SettleArgs {
            database_url: database_url.to_owned(),
            redis_url: services.redis_url().map(str::to_owned),
            ticket_id,
        },
    );
    match settings.sustained {
        Some(shape) => {
            sustain::sustain(&SustainPlan {
                targets,
                database_url: database_url.to_owned(),
                ticket_id,
                concurrency: shape.concurrency,
                duration: shape.duration,
                rate: shape.rate,
                progress: settings.progress,
                idempotency_keys: settings.idempotency_keys,
                settle,
                resetter,
                cpu: watch.clone(),
            })
            .await
        }
        None => {
            rush(&RushPlan {
                settle,
                resetter,
                ..plan_for(settings, targets, database_url, ticket_id, round)
            })
            .await
        }
    }
}

/// The ceilings for a sustained run, at its concurrency and duration: the
/// purchase transaction straight to PostgreSQL, `GET /livez` on
/// `http_targets` (as many servers as the run uses, buyers dealt over them
/// the same way), and (when a Redis is at hand) the Lua decrement straight
/// to Redis. Each ceiling records the concurrency and servers it was
/// measured at, and the tables print them.
///
/// The PostgreSQL ceiling is measured twice, with as many connections as
/// there are buyers and with as many as the servers' pools open
/// (`db_connections`), and the better run is kept: on a small machine a hot
/// row with 64 backends thrashes, and a pool of 20 in front of it is faster,
/// so the buyers' count alone would understate what the database can do.
pub async fn measure_ceilings(
    services: &Services,
    http_targets: &[String],
    shape: Sustained,
    db_connections: usize,
    ticket_id: i64,
    watch: &crate::cpu::Watch,
) -> anyhow::Result<Vec<Ceiling>> {
    let mut best: Option<Ceiling> = None;
    let mut tried = vec![shape.concurrency];
    if db_connections > 0 && db_connections != shape.concurrency {
        tried.push(db_connections);
    }
    for connections in tried {
        let measured = sustain::postgres_purchase(
            services.database_url(),
            ticket_id,
            connections,
            shape.duration,
            watch,
        )
        .await
        .context("measuring the PostgreSQL ceiling")?;
        if best
            .as_ref()
            .is_none_or(|b| measured.ops_per_sec > b.ops_per_sec)
        {
            best = Some(measured);
        }
    }
    let mut ceilings = vec![
        best.expect("at least one PostgreSQL ceiling run"),
        sustain::http_noop(http_targets, shape.concurrency, shape.duration, watch)
            .await
            .context("measuring the HTTP ceiling")?,
        sustain::postgres_batch_insert(services.database_url(), ticket_id, shape.duration, watch)
            .await
            .context("measuring the batched INSERT ceiling")?,
    ];
    if let Some(redis) = services.redis_url() {
        ceilings.push(
            sustain::redis_lua(redis, shape.concurrency, shape.duration, watch)
                .await
                .context("measuring the Redis ceiling")?,
        );
    }
    Ok(ceilings)
}

/// The pids of the servers for CPU per sale: those started here, else
/// `count` servers given by `--target` (not measured).
pub(crate) fn server_pids(processes: &[ServerProcess], count: usize) -> Vec<Option<u32>> {
    if processes.is_empty() {
        vec![None; count]
    } else {
        processes.iter().map(ServerProcess::pid).collect()
    }
}

/// Peak memory of this process and of the servers it started.
pub(crate) fn memory_of(processes: &[ServerProcess]) -> Option<Memory> {
    Some(Memory {
        load_peak_rss_mib: peak_rss_mib(None)?,
        servers_peak_rss_mib: processes
            .iter()
            .filter_map(|p| peak_rss_mib(p.pid()))
            .collect(),
    })
}

/// Fails fast, in one line, when the database does not answer, before any
/// server is started.
pub(crate) async fn check_database(url: &str) -> anyhow::Result<()> {
    let pool = ticket_core::db::connect(url, 1, Duration::from_secs(5)).await?;
    pool.close().await;
    Ok(())
}

fn plan_for(
    settings: &RushSettings,
    targets: Vec<String>,
    database_url: &str,
    ticket_id: i64,
    round: u32,
) -> RushPlan {
    RushPlan {
        ticket_id,
        tickets: settings.tickets,
        buyers: settings.buyers,
        distinct_users: settings.distinct_users,
        seed: settings.seed.wrapping_add(u64::from(round)),
        max_attempts: settings.max_attempts,
        timeout: settings.timeout,
        progress: settings.progress,
        idempotency_keys: settings.idempotency_keys,
        ..RushPlan::new(targets, database_url)
    }
}

pub(crate) async fn stop_all(processes: Vec<ServerProcess>) {
    for process in processes {
        if let Err(err) = process.stop().await {
            tracing::warn!("stopping a server: {err:#}");
        }
    }
}

//! One booking run: find the services, start the servers, put a show on
//! sale, release the users, wait for the sweepers, ask the database.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sqlx::PgPool;

use super::api::{Api, Call};
use super::model::{BookingReport, QueueReport};
use super::probe::Probe;
use super::record::{fifo_violations, Outcome, Recorded, Recorder, Step};
use super::servers::{self, BoxOfficeProcess};
use super::user::{Journey, User};
use super::verdict;
use crate::machine::Machine;
use crate::run::Services;

/// What `load booking` was asked to do.
#[derive(Debug, Clone)]
pub struct BookingOptions {
    /// Users who try to book.
    pub users: usize,
    /// Seats on sale.
    pub seats: i64,
    /// Servers to start (ignored with `targets`).
    pub servers: usize,
    /// The hold strategy of the servers started.
    pub strategy: String,
    /// The share of users who pay once they hold seats.
    pub pay_ratio: f64,
    /// Whether users go through the waiting room (`--queue on`).
    pub queue: bool,
    /// `--active-limit` for the servers started (`None`: theirs).
    pub active_limit: Option<u32>,
    /// `--hold-ttl-ms` for the servers started: short, so that walked-away
    /// holds expire within the run.
    pub hold_ttl_ms: u64,
    /// `--admitted-ttl-ms` for the servers started.
    pub admitted_ttl_ms: u64,
    /// `--think-time-ms` for the servers started (widens race windows).
    pub think_time_ms: u64,
    /// More flags for the servers started (the broken modes, for instance).
    pub server_args: Vec<String>,
    /// Servers someone else started.
    pub targets: Vec<String>,
    /// Their admin token (`ADMIN_TOKEN`), needed with `targets`.
    pub admin_token: Option<String>,
    /// PostgreSQL (`None`: environment or throwaway).
    pub database_url: Option<String>,
    /// Redis (`None`: environment or throwaway, when needed).
    pub redis_url: Option<String>,
    /// Requests in flight at once, over all users.
    pub connections: usize,
    /// Tries at holding seats before a user gives up.
    pub hold_attempts: u32,
    /// Seed for the users' choices.
    pub seed: u64,
    /// Time limit for the users.
    pub timeout: Duration,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Kill (SIGKILL) the first server once this share of users is done.
    pub kill_at: Option<f64>,
    /// The `load` executable, which runs servers with `load serve level5`.
    pub exe: PathBuf,
}

/// What a run produced: the report, and what the HTML page draws.
#[derive(Debug, Clone)]
pub struct BookingRun {
    /// The report (`--json`).
    pub report: BookingReport,
    /// What the users saw.
    pub seen: Recorded,
    /// The servers' queue samples.
    pub probe: super::probe::Samples,
    /// The machine and services.
    pub machine: Machine,
    /// The page's data from the database (seat outcomes, sales over time).
    pub page: super::report::PageData,
}

/// Runs one booking and judges it.
pub async fn booking(options: &BookingOptions) -> anyhow::Result<BookingRun> {
    anyhow::ensure!(options.users > 0, "at least one user is needed");
    anyhow::ensure!(options.users < 1_000_000, "at most 999,999 users");
    anyhow::ensure!(options.seats > 0, "at least one seat is needed");
    let given = options
        .targets
        .iter()
        .map(|t| crate::servers::normalise_target(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !given.is_empty() {
        anyhow::ensure!(
            options.database_url.is_some() && options.admin_token.is_some(),
            "with --target, also give --database-url (or DATABASE_URL), the database those \
             servers share, and --admin-token (or ADMIN_TOKEN), to put a show on sale"
        );
        crate::servers::check_targets(&given).await?;
    }
    let need_redis = given.is_empty() && (options.queue || options.strategy == "redis-lua");
    let services = Services::find(
        options.database_url.clone(),
        options.redis_url.clone(),
        need_redis,
        None,
    )
    .await?;
    let pool = crate::client::open_database(services.database_url()).await?;
    let admin_token = options
        .admin_token
        .clone()
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let processes = if given.is_empty() {
        let args = server_args(options, &services);
        servers::start(&options.exe, &args, &admin_token, options.servers.max(1)).await?
    } else {
        Vec::new()
    };
    let targets = if given.is_empty() {
        processes.iter().map(|p| p.url().to_owned()).collect()
    } else {
        given
    };
    let outcome = run_users(
        options,
        &pool,
        targets,
        &admin_token,
        services.redis_url(),
        processes,
    )
    .await;
    let machine = Machine::describe(services.database_url(), services.redis_url()).await;
    pool.close().await;
    let (report, seen, probe, page) = outcome?;
    Ok(BookingRun {
        report,
        seen,
        probe,
        machine,
        page,
    })
}

/// The flags of every server this tool starts.
fn server_args(options: &BookingOptions, services: &Services) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--database-url".into(),
        services.database_url().into(),
        "--strategy".into(),
        options.strategy.clone(),
        "--queue".into(),
        if options.queue { "on" } else { "off" }.into(),
        "--hold-ttl-ms".into(),
        options.hold_ttl_ms.to_string(),
        "--admitted-ttl-ms".into(),
        options.admitted_ttl_ms.to_string(),
        "--think-time-ms".into(),
        options.think_time_ms.to_string(),
    ];
    if let Some(redis) = services.redis_url() {
        args.extend(["--redis-url".into(), redis.into()]);
    }
    if let Some(limit) = options.active_limit {
        args.extend(["--active-limit".into(), limit.to_string()]);
    }
    args.extend(options.server_args.iter().cloned());
    args
}

type Outcomes = (
    BookingReport,
    Recorded,
    super::probe::Samples,
    super::report::PageData,
);

/// Puts the show on sale, runs the users, judges; stops the servers.
async fn run_users(
    options: &BookingOptions,
    pool: &PgPool,
    targets: Vec<String>,
    admin_token: &str,
    redis_url: Option<&str>,
    processes: Vec<BoxOfficeProcess>,
) -> anyhow::Result<Outcomes> {
    let api = Api::new(targets.clone(), options.connections)?;
    let result = async {
        let show_id = create_show(&api, admin_token, options.seats).await?;
        let probe = Probe::start(targets.clone(), show_id);
        let recorder = Arc::new(Recorder::new());
        let journey = Journey {
            api: api.clone(),
            recorder: recorder.clone(),
            show_id,
            queue: options.queue,
            pay_ratio: options.pay_ratio,
            hold_attempts: options.hold_attempts,
            deadline: Instant::now() + options.timeout,
        };
        let started = Instant::now();
        let processes = release_users(options, &journey, show_id, processes).await?;
        let elapsed = started.elapsed();
        let expiry_wait = verdict::wait_for_expiry(pool, show_id, Duration::from_secs(10)).await?;
        let samples = probe.stop().await;
        let seen = recorder.snapshot();
        let lo = user_base(show_id);
        let truth = verdict::truth(pool, show_id, (lo, lo + 999_999), &seen.holds).await?;
        let mut report = BookingReport {
            users: options.users,
            seats: options.seats,
            strategy: options.strategy.clone(),
            servers: api.servers(),
            show_id,
            elapsed_ms: elapsed.as_secs_f64() * 1000.0,
            expiry_wait_ms: expiry_wait.as_secs_f64() * 1000.0,
            ..BookingReport::default()
        };
        report.observe(&seen);
        report.settle(truth);
        report.admitted = admitted(options.queue, &seen);
        report.queue =
            queue_report(options.queue, &samples, &seen, pool, redis_url, show_id).await?;
        report.judge();
        let page = super::report::PageData::gather(pool, show_id, recorder.start_unix_ms()).await?;
        anyhow::Ok((report, seen, samples, page, processes))
    }
    .await;
    match result {
        Ok((report, seen, samples, page, processes)) => {
            servers::stop_all(processes).await;
            Ok((report, seen, samples, page))
        }
        Err(err) => Err(err),
    }
}

/// The waiting room's figures: the servers' high-water mark and limit,
/// FIFO from the admission log in Redis and from the users' sightings.
async fn queue_report(
    enabled: bool,
    samples: &super::probe::Samples,
    seen: &Recorded,
    pool: &PgPool,
    redis_url: Option<&str>,
    show_id: i64,
) -> anyhow::Result<QueueReport> {
    if !enabled {
        return Ok(QueueReport::default());
    }
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await?;
    let log = super::probe::admission_log(redis_url, &database, show_id)
        .await
        .context("reading the waiting room's admission log in Redis")?;
    let seen_by_users = fifo_violations(&seen.sightings);
    let (fifo_violations, fifo_source) = match &log {
        Some(log) => (
            super::probe::log_inversions(log),
            format!("the admission log in Redis, {} admissions", log.len()),
        ),
        None => (
            seen_by_users,
            "the users' sightings (no Redis URL to read the log)".to_owned(),
        ),
    };
    Ok(QueueReport {
        enabled,
        max_active: samples.max_active,
        max_active_source: samples.source.clone(),
        active_limit: samples.active_limit,
        fifo_violations,
        fifo_violations_seen_by_users: seen_by_users,
        fifo_source,
    })
}

/// Users admitted: those who saw `admitted` (everyone who got to the seat
/// map, when there is no queue).
fn admitted(queue: bool, seen: &Recorded) -> u64 {
    if queue {
        seen.sightings
            .iter()
            .filter(|s| s.admitted_seen_ms.is_some())
            .count() as u64
    } else {
        seen.outcomes
            .iter()
            .filter(|(o, _)| !matches!(o, Outcome::Error | Outcome::QueueExpired))
            .map(|(_, n)| n)
            .sum()
    }
}

/// The user ids of a show's run: a block of a million per show, so that
/// runs on one database never share a wallet.
pub fn user_base(show_id: i64) -> i64 {
    show_id * 1_000_000 + 1
}

/// `POST /admin/shows`: the run's show, its seats numbered from the front.
async fn create_show(api: &Api, admin_token: &str, seats: i64) -> anyhow::Result<i64> {
    let body = json!({
        "title": "load booking",
        "starts_at": "2030-12-24T19:00:00Z",
        "grades": super::seats::grades(seats),
    });
    let call = Call::post(Step::Hold, "/admin/shows", body)
        .header("authorization", format!("Bearer {admin_token}"));
    let (answer, _) = api
        .send(0, &call)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the show: {e}"))?;
    anyhow::ensure!(
        answer.status == 201,
        "creating the show answered {}: {} (is the admin token the servers'?)",
        answer.status,
        answer.body
    );
    answer.body["show_id"]
        .as_i64()
        .context("the show's answer has no show_id")
}

/// Spawns every user, waits for all (at most the timeout), and kills a
/// server on the way when asked to. Returns the servers, still running.
async fn release_users(
    options: &BookingOptions,
    journey: &Journey,
    show_id: i64,
    mut processes: Vec<BoxOfficeProcess>,
) -> anyhow::Result<Vec<BoxOfficeProcess>> {
    let progress = progress_bar(options);
    let mut tasks = tokio::task::JoinSet::new();
    let base = user_base(show_id);
    for index in 0..options.users {
        let user = User {
            user_id: base + index as i64,
            home: index % journey.api.servers(),
            seed: options.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        };
        let journey = journey.clone();
        tasks.spawn(async move { user.book(&journey).await });
    }
    let kill_after = options
        .kill_at
        .map(|share| ((options.users as f64 * share) as usize).max(1));
    let mut done = 0usize;
    let collect = async {
        while let Some(joined) = tasks.join_next().await {
            joined.context("a user task panicked")?;
            done += 1;
            progress.inc(1);
            if kill_after == Some(done) {
                if let Some(first) = processes.first_mut() {
                    first.kill().await?;
                    progress.println(format!("killed the server at {} (SIGKILL)", first.url()));
                }
            }
        }
        anyhow::Ok(())
    };
    let finished = tokio::time::timeout(options.timeout, collect).await;
    progress.finish_and_clear();
    match finished {
        Ok(result) => result?,
        Err(_) => anyhow::bail!(
            "the users did not finish within {:?} ({done} of {} done)",
            options.timeout,
            options.users
        ),
    }
    Ok(processes)
}

fn progress_bar(options: &BookingOptions) -> ProgressBar {
    if !options.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(options.users as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} users done {pos}/{len} [{bar:40}] {elapsed}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

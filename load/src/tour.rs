//! `load tour`: every level and strategy, on one server and on two, each
//! row judged against the verdict its level promises.

use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use ticket_core::Verdict;

use crate::levels::{levels, LevelInfo, StrategyInfo};
use crate::machine::Machine;
use crate::model::{Ceiling, Report};
use crate::run::{
    check_database, default_pool_size, default_think_time, measure_ceilings, memory_of, one_round,
    stop_all, RushSettings, Services, Sustained,
};
use crate::servers::{start_processes, ServerSpec};

/// `load tour`: every level and strategy, on one server and on two.
#[derive(Debug, Clone)]
pub struct TourOptions {
    /// Only these levels (`None`: all).
    pub levels: Option<Vec<u8>>,
    /// Override every level's think time.
    pub think_time_ms: Option<u64>,
    /// Rounds per row: the verdict must hold in every one.
    pub rounds: u32,
    /// PostgreSQL (`None`: environment or throwaway).
    pub database_url: Option<String>,
    /// Redis (`None`: environment or throwaway, if any level needs it).
    pub redis_url: Option<String>,
    /// The `load` executable.
    pub exe: PathBuf,
    /// The rush itself.
    pub rush: RushSettings,
}

/// The levels `load tour --redis-cluster` runs: those whose every Redis
/// script and transaction keeps its keys in one hash slot (Level 4: one tag
/// per database; Level 5: one per show), so they run on a cluster as on
/// one Redis. Level 3 (its pub/sub wake-ups) is not on this list yet: a
/// cluster delivers a plain PUBLISH to every node, and its sharded pub/sub
/// port is work in progress (docs/08-cluster.md). Levels 0-2 use no Redis;
/// Level 6's partition leases and streams are not tagged for a cluster.
pub const CLUSTER_LEVELS: &[u8] = &[4, 5];

/// The levels to tour on a cluster: `requested` (default: all of
/// [`CLUSTER_LEVELS`]), refusing any level not on that list with the reason.
pub fn cluster_levels(requested: Option<Vec<u8>>) -> anyhow::Result<Vec<u8>> {
    let levels = requested.unwrap_or_else(|| CLUSTER_LEVELS.to_vec());
    if let Some(level) = levels.iter().find(|l| !CLUSTER_LEVELS.contains(l)) {
        anyhow::bail!(
            "level {level} does not run on a Redis Cluster in this build; \
             --redis-cluster tours levels {CLUSTER_LEVELS:?} (see docs/08-cluster.md)"
        );
    }
    Ok(levels)
}

/// Starts a throwaway Redis Cluster when `wanted` (`load tour
/// --redis-cluster`); it stops when dropped.
pub async fn start_cluster(
    wanted: bool,
) -> anyhow::Result<Option<ticket_core::services::RedisCluster>> {
    if !wanted {
        return Ok(None);
    }
    let cluster =
        tokio::task::spawn_blocking(ticket_core::services::RedisCluster::throwaway).await??;
    eprintln!("Redis Cluster: {}", cluster.url());
    Ok(Some(cluster))
}

/// Servers every strategy of a sustained tour runs on (and the HTTP ceiling
/// is measured on).
pub const SUSTAINED_TOUR_SERVERS: usize = 2;

/// One row of the tour.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TourRow {
    /// Level number.
    pub level: u8,
    /// Strategy name.
    pub strategy: String,
    /// Servers.
    pub servers: usize,
    /// The servers' think time.
    pub think_time_ms: u64,
    /// The verdict the level promises.
    pub expected: Verdict,
    /// Every round's report.
    pub rounds: Vec<Report>,
    /// Whether every round earned the expected verdict.
    pub as_expected: bool,
}

/// The whole tour.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tour {
    /// The machine and services it ran on.
    pub machine: Machine,
    /// One row per (level, strategy, servers).
    pub rows: Vec<TourRow>,
    /// Whether every row earned its expected verdict.
    pub as_expected: bool,
    /// The booking row (Level 5, `load booking`), when the tour includes it.
    #[serde(default)]
    pub booking: Option<crate::booking::BookingReport>,
}

/// Runs the tour. `on_row` sees each row as soon as it is done.
pub async fn tour(options: &TourOptions, mut on_row: impl FnMut(&TourRow)) -> anyhow::Result<Tour> {
    let chosen: Vec<LevelInfo> = levels()
        .into_iter()
        .filter(|l| {
            options
                .levels
                .as_ref()
                .is_none_or(|only| only.contains(&l.number))
        })
        .collect();
    // Level 5 is not a rush: its row is a short `load booking`.
    let wants_booking = options.rush.sustained.is_none()
        && options.levels.as_ref().is_none_or(|only| only.contains(&5));
    anyhow::ensure!(
        !chosen.is_empty() || wants_booking,
        "no such levels in this build"
    );
    let need_redis = chosen.iter().any(|l| l.needs_redis) || wants_booking;
    let services = Services::find(
        options.database_url.clone(),
        options.redis_url.clone(),
        need_redis,
        options.rush.durable,
    )
    .await?;
    check_database(services.database_url()).await?;
    let (ceilings, server_counts) = match options.rush.sustained {
        Some(shape) => (
            sustained_ceilings(options, &services, shape).await?,
            vec![SUSTAINED_TOUR_SERVERS],
        ),
        None => (Vec::new(), vec![1usize, 2]),
    };

    let mut rows = Vec::new();
    let mut ticket_id = 1_000;
    for info in &chosen {
        for strategy in &info.strategies {
            for &servers in &server_counts {
                ticket_id += 1;
                let place = Place {
                    info,
                    strategy,
                    servers,
                    ticket_id,
                };
                let row = tour_row(options, &services, &ceilings, place).await?;
                on_row(&row);
                rows.push(row);
            }
        }
    }
    let booking = if wants_booking {
        let exe = &options.exe;
        let redis = services.redis_url();
        Some(crate::booking::tour::tour_booking(exe, services.database_url(), redis).await?)
    } else {
        None
    };
    let as_expected =
        rows.iter().all(|r| r.as_expected) && booking.as_ref().is_none_or(|b| b.is_correct());
    let machine = Machine::describe(services.database_url(), services.redis_url()).await;
    Ok(Tour {
        machine,
        rows,
        as_expected,
        booking,
    })
}

/// Sustained tours measure the ceilings once, first, against servers that
/// do no work (Level 0's /livez), as many as every strategy then runs on
/// (two), at the same concurrency.
async fn sustained_ceilings(
    options: &TourOptions,
    services: &Services,
    shape: Sustained,
) -> anyhow::Result<Vec<Ceiling>> {
    let servers = SUSTAINED_TOUR_SERVERS;
    let idle = start_processes(
        &options.exe,
        &ServerSpec::new(0, "naive"),
        services.database_url(),
        None,
        servers,
    )
    .await?;
    let idle_urls: Vec<String> = idle.iter().map(|p| p.url().to_owned()).collect();
    // Strategies run on two servers, each with its default pool.
    let pools = servers * default_pool_size();
    let measured = measure_ceilings(services, &idle_urls, shape, pools, 999).await;
    stop_all(idle).await;
    measured
}

/// Where one row of the tour runs: a strategy of a level, on some servers,
/// selling its own ticket.
struct Place<'a> {
    info: &'a LevelInfo,
    strategy: &'a StrategyInfo,
    servers: usize,
    ticket_id: i64,
}

/// Starts the row's servers, runs its rounds, stops the servers, and says
/// whether every round earned the verdict the level promises.
async fn tour_row(
    options: &TourOptions,
    services: &Services,
    ceilings: &[Ceiling],
    place: Place<'_>,
) -> anyhow::Result<TourRow> {
    let Place {
        info,
        strategy,
        servers,
        ticket_id,
    } = place;
    let think = options
        .think_time_ms
        .unwrap_or(default_think_time(info, &options.rush));
    let spec = ServerSpec::new(info.number, strategy.name).think_time_ms(think);
    let processes = start_processes(
        &options.exe,
        &spec,
        services.database_url(),
        services.redis_url(),
        servers,
    )
    .await
    .with_context(|| format!("starting level {} {}", info.number, strategy.name))?;
    let targets: Vec<String> = processes.iter().map(|p| p.url().to_owned()).collect();
    let expected = strategy.expected.for_servers(servers);
    let mut rounds = Vec::new();
    let mut failure = None;
    for round in 0..options.rounds.max(1) {
        let report = one_round(
            &options.rush,
            info,
            services,
            targets.clone(),
            ticket_id,
            round,
        )
        .await;
        match report {
            Ok(mut report) => {
                report.ceilings = ceilings.to_vec();
                report.memory = memory_of(&processes);
                report.level = Some(info.number);
                report.strategy = Some(strategy.name.to_owned());
                report.think_time_ms = Some(think);
                rounds.push(report);
            }
            Err(err) => {
                failure = Some(err);
                break;
            }
        }
    }
    stop_all(processes).await;
    if let Some(err) = failure {
        return Err(err.context(format!(
            "level {} {} on {servers} server(s)",
            info.number, strategy.name
        )));
    }
    // A sustained run never sells out, so only strategies meant to be
    // correct are held to a verdict there; the racy ones are shown for their
    // speed.
    let as_expected = if options.rush.sustained.is_some() {
        expected != Verdict::Correct || rounds.iter().all(|r| r.verdict == Verdict::Correct)
    } else {
        rounds.iter().all(|r| r.verdict == expected)
    };
    Ok(TourRow {
        level: info.number,
        strategy: strategy.name.to_owned(),
        servers,
        think_time_ms: think,
        expected,
        rounds,
        as_expected,
    })
}

/// The HTML report of a tour: per row, the round that disagrees, else the last.
pub fn write_report(
    dir: &std::path::Path,
    result: &Tour,
    rush: &RushSettings,
) -> anyhow::Result<()> {
    let rows = result
        .rows
        .iter()
        .filter_map(|row| {
            let shown = row
                .rounds
                .iter()
                .find(|r| r.verdict != row.expected)
                .or(row.rounds.last())?;
            Some(crate::report::ReportRow {
                expected: Some(row.expected),
                as_expected: Some(row.as_expected),
                report: shown.clone(),
            })
        })
        .collect();
    let title = match rush.sustained {
        Some(shape) => format!(
            "ticket-rush: sustained throughput, {} concurrent buyers for {} s",
            shape.concurrency,
            shape.duration.as_secs()
        ),
        None => format!(
            "ticket-rush tour: {} buyers, {} tickets",
            rush.buyers, rush.tickets
        ),
    };
    let data = crate::report::ReportData::new(title, result.machine.clone(), rows);
    let page = crate::report::write(dir, &data)?;
    eprintln!("report written to {}", page.display());
    Ok(())
}

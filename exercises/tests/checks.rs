//! Exercises never rot: every pristine stub fails its check, and every
//! reference solution passes it, judged by the same code as
//! `load exercise check N` (a rush, then the database's verdict).
//!
//! The servers run in this process (two per check, one for the
//! single-server exercises) on one PostgreSQL and one Redis for the whole
//! binary; each check has its own database and its own ticket id (so its
//! Redis keys are its own), and four checks run at a time. The rushes are
//! smaller than the workshop's (200 buyers, 20 tickets), with the same think
//! times, so the stubs' races happen on every run.

use futures::StreamExt as _;
use load::exercise::catalogue::{ExerciseInfo, CATALOGUE};
use load::exercise::judge::{judge, Judgement, RushSize, Targets};
use ticket_core::services::{Postgres, Redis};
use ticket_core::RunningServer;

const SIZE: RushSize = RushSize {
    buyers: 200,
    tickets: 20,
};

/// Starts `info.servers` in-process servers of `variant` and judges one rush.
async fn check(info: &ExerciseInfo, variant: &str, ticket_id: i64) -> anyhow::Result<Judgement> {
    let postgres = tokio::task::spawn_blocking(Postgres::shared).await??;
    let database_url = postgres.fresh_database().await?;
    let redis_url = if info.needs_redis {
        Some(tokio::task::spawn_blocking(|| Redis::shared().map(|r| r.url().to_owned())).await??)
    } else {
        None
    };
    let mut servers: Vec<RunningServer> = Vec::new();
    for _ in 0..info.servers {
        let mut args = vec![
            "exercise-server".to_owned(),
            "--exercise".into(),
            info.number.to_string(),
            "--variant".into(),
            variant.into(),
            "--port".into(),
            "0".into(),
            "--database-url".into(),
            database_url.clone(),
            "--think-time-ms".into(),
            info.think_time_ms.to_string(),
        ];
        if let Some(redis_url) = &redis_url {
            args.extend(["--redis-url".to_owned(), redis_url.clone()]);
        }
        let cli = <exercises::Cli as clap::Parser>::try_parse_from(args)?;
        servers.push(cli.start().await?);
    }
    let targets = Targets {
        urls: servers.iter().map(RunningServer::url).collect(),
        database_url,
        redis_url,
        ticket_id,
    };
    let judged = judge(info, &targets, SIZE).await;
    for server in servers {
        server.stop().await?;
    }
    judged
}

/// Every stub fails its check with a finding in words, and every reference
/// solution passes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_stub_fails_its_check_and_every_solution_passes_it() {
    load::client::raise_fd_limit();
    let cases = CATALOGUE.iter().flat_map(|info| {
        [("stub", false), ("solution", true)]
            .into_iter()
            .enumerate()
            .map(move |(i, (variant, should_pass))| (info, variant, should_pass, i))
    });
    let outcomes: Vec<String> = futures::stream::iter(cases)
        .map(|(info, variant, should_pass, i)| async move {
            let ticket_id = i64::from(info.number) * 10 + i as i64;
            match check(info, variant, ticket_id).await {
                Ok(j) if j.passed == should_pass && (should_pass || !j.findings.is_empty()) => {
                    String::new()
                }
                Ok(j) => format!(
                    "exercise {} {variant}: passed = {}, verdict {}, findings {:?}",
                    info.number, j.passed, j.report.verdict, j.findings
                ),
                Err(err) => format!(
                    "exercise {} {variant}: the check failed: {err:#}",
                    info.number
                ),
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let wrong: Vec<&String> = outcomes.iter().filter(|o| !o.is_empty()).collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The load tool's catalogue (which it keeps without linking this crate)
/// and this crate's table name the same exercises, with the same needs.
#[test]
fn the_load_tools_catalogue_and_the_crate_agree() {
    let crate_side: Vec<(u8, bool)> = exercises::EXERCISES
        .iter()
        .map(|e| (e.number, e.needs_redis))
        .collect();
    let load_side: Vec<(u8, bool)> = CATALOGUE
        .iter()
        .map(|e| (e.number, e.needs_redis))
        .collect();
    assert_eq!(crate_side, load_side);
}

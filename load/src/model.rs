//! The report model: what a rush or a sustained run measured, serialized as
//! `load run --json` (fields listed in docs/load.md), with its latency
//! summary and the ceilings it is compared against. Rush, sustain, output and
//! the HTML report all read it; it reads none of them.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use ticket_core::verify::Judgement;
use ticket_core::Verdict;

use crate::failures::FailureKind;

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest buyer.
    pub max: f64,
}

impl Latency {
    /// p50, p95, p99 and max of a histogram of microseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        Self {
            p50: ms(0.50),
            p95: ms(0.95),
            p99: ms(0.99),
            max: histogram.max() as f64 / 1000.0,
        }
    }
}

/// The percentiles drawn in latency plots.
const CDF_PERCENTILES: &[f64] = &[
    0.0, 1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.9, 100.0,
];

/// `[percentile, milliseconds]` points of a latency distribution, for plots.
pub fn latency_cdf(histogram: &Histogram<u64>) -> Vec<[f64; 2]> {
    if histogram.is_empty() {
        return Vec::new();
    }
    CDF_PERCENTILES
        .iter()
        .map(|&p| [p, histogram.value_at_percentile(p) as f64 / 1000.0])
        .collect()
}

/// Everything a rush measured. Serialized as the `--json` output; the field
/// names are part of the contract (docs/load.md, "JSON (`load run --json`)").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The level, when known.
    pub level: Option<u8>,
    /// The strategy, when known.
    pub strategy: Option<String>,
    /// How many servers the buyers were spread over.
    pub servers: usize,
    /// The load balancer the buyers went through (`nginx`), one URL in
    /// front of the servers; `None`: buyers were dealt over the servers'
    /// own ports.
    #[serde(default)]
    pub balancer: Option<String>,
    /// Concurrent buyers.
    pub buyers: usize,
    /// Units put on sale.
    pub tickets: i32,
    /// Different people among the buyers.
    pub distinct_users: usize,
    /// The ticket raced for.
    pub ticket_id: i64,
    /// The servers' think time, when the caller set it.
    pub think_time_ms: Option<u64>,

    /// Buyers answered 201.
    pub succeeded: u64,
    /// Buyers answered 409 sold_out.
    pub sold_out: u64,
    /// Buyers answered 409 already_purchased.
    pub already_purchased: u64,
    /// 503 busy answers (every attempt counts).
    pub busy: u64,
    /// Buyers who got anything else: 404, 5xx other than 503, a transport
    /// error, a timeout.
    pub errors: u64,
    /// Buyers still busy after `max_attempts`.
    pub gave_up: u64,
    /// Purchase requests sent, retries included.
    pub attempts: u64,
    /// 5xx answers other than 503 (always a bug).
    pub server_errors: u64,
    /// Failed answers by kind (`refused`, `timeout`, `4xx`, `5xx`,
    /// `transport`), each with the first message seen.
    #[serde(default)]
    pub error_kinds: BTreeMap<String, FailureKind>,

    /// Order rows in the database.
    pub db_orders: i64,
    /// The stock column after the run.
    pub db_stock: i32,
    /// `tickets.total` after the run: must be what the run put on sale.
    #[serde(default)]
    pub db_total: i32,
    /// Orders beyond the tickets on sale.
    pub oversold: i64,
    /// 201 answers beyond the tickets on sale, whether or not the database
    /// took them (distinct from `oversold`, which counts rows).
    #[serde(default)]
    pub oversold_answers: i64,
    /// Rows beyond one per buyer.
    pub duplicate_orders: i64,
    /// Buyers answered 201 who hold no order row.
    #[serde(default)]
    pub answered_without_order: i64,
    /// Order rows whose buyer was never answered 201 (and did not lose the
    /// answer to an error).
    #[serde(default)]
    pub orders_without_answer: i64,
    /// The judgement.
    pub verdict: Verdict,
    /// What broke, in words.
    pub problems: Vec<String>,

    /// Per-buyer latency, barrier to final answer (sustained: per request;
    /// open model, `rate`: per visitor, from the time it was due to its
    /// final answer, corrected for coordinated omission).
    pub latency_ms: Latency,
    /// Open model only: the same visitors' latency from the moment their
    /// request actually left, *not* corrected (what a closed-model tool
    /// would report; shown beside the corrected one).
    #[serde(default)]
    pub latency_uncorrected_ms: Option<Latency>,
    /// The whole latency distribution, `[percentile, ms]`, for plots.
    #[serde(default)]
    pub latency_cdf_ms: Vec<[f64; 2]>,
    /// Rushes only: where each buyer's latency went (connecting, queueing,
    /// the servers' own time from `Server-Timing`).
    #[serde(default)]
    pub latency_split_ms: Option<LatencySplit>,
    /// Barrier to last answer.
    pub elapsed_ms: f64,
    /// HTTP answers per second (attempts / elapsed).
    pub throughput_rps: f64,
    /// Successful purchases per second.
    pub sales_per_sec: f64,

    /// The servers' own counters after the run, summed over servers:
    /// `event:retry`, `event:conflict`, `purchases:created`...
    pub server_metrics: BTreeMap<String, f64>,

    /// `sell_out` (N buyers race for a small stock) or `sustained` (a fixed
    /// number of buyers buy for a fixed time from a stock that never runs
    /// out; latency is then per request).
    #[serde(default = "sell_out")]
    pub mode: String,
    /// Sustained runs of the open model (`--rate`): arrivals per second.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Ceilings measured in the same run, for sustained runs.
    #[serde(default)]
    pub ceilings: Vec<Ceiling>,
    /// For levels that persist asynchronously: from the last 201 to the
    /// newest order row in PostgreSQL, in milliseconds.
    #[serde(default)]
    pub persistence_lag_ms: Option<f64>,
    /// Peak memory of the load process and of each server it started.
    #[serde(default)]
    pub memory: Option<Memory>,
    /// CPU time per successful sale, by process (sustained runs; see
    /// [`crate::cpu`]).
    #[serde(default)]
    pub cpu: Option<CpuCost>,
    /// The CPU floor of the strategy and the ratio to it (sustained runs).
    #[serde(default)]
    pub cpu_floor: Option<Floor>,
    /// The services' durability settings as they reported them, e.g.
    /// `PostgreSQL fsync=on full_page_writes=on synchronous_commit=on`
    /// (filled in by `load run`; empty when not read).
    #[serde(default)]
    pub settings: String,
}

/// A rush's buyer latency (barrier to final answer) split into its parts.
/// Each part has its own percentiles over buyers (they do not add up); the
/// `slowest` means say what the slowest 1% of buyers waited for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct LatencySplit {
    /// Opening connections after the start (zero for a buyer whose warm-up
    /// connection was kept).
    pub connect: Latency,
    /// The rest: waiting in queues (the load tool's runtime, the kernel's
    /// accept and socket queues, the server's workers before its handler
    /// ran), the network stack, pauses before a retry.
    pub queue: Latency,
    /// The servers' own time, the sum of the `Server-Timing: app` of the
    /// buyer's answers.
    pub server: Latency,
    /// Part of `server`: the strategy's own work (`Server-Timing: sale`;
    /// Level 4: its Lua call).
    #[serde(default)]
    pub sale: Latency,
    /// Part of `server`: claiming and recording the `Idempotency-Key` in
    /// PostgreSQL (`Server-Timing: idem`).
    #[serde(default)]
    pub idem: Latency,
    /// The slowest 1% of buyers (at or above the p99 of the whole latency):
    /// their mean connect, queue and server time, in that order.
    pub slowest: [f64; 3],
    /// Connections opened after the start, all buyers together.
    pub connections_opened: u64,
    /// Answers that carried a `Server-Timing` duration.
    pub timed_answers: u64,
}

/// Peak resident memory (VmHWM), in MiB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// The load tool itself (all buyers' connections live here).
    pub load_peak_rss_mib: f64,
    /// Each server the load tool started, in order.
    pub servers_peak_rss_mib: Vec<f64>,
}

/// A process's peak resident memory in MiB, from /proc (Linux).
pub fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn sell_out() -> String {
    "sell_out".to_owned()
}

impl Report {
    /// A report holding only `judgement`'s fields, for the rest to be
    /// filled in with `..Report::judged(judgement)`.
    pub fn judged(judgement: Judgement) -> Self {
        let Judgement {
            verdict,
            oversold,
            oversold_answers,
            duplicate_orders,
            answered_without_order,
            orders_without_answer,
            problems,
        } = judgement;
        Self {
            level: None,
            strategy: None,
            servers: 0,
            balancer: None,
            buyers: 0,
            tickets: 0,
            distinct_users: 0,
            ticket_id: 0,
            think_time_ms: None,
            succeeded: 0,
            sold_out: 0,
            already_purchased: 0,
            busy: 0,
            errors: 0,
            gave_up: 0,
            attempts: 0,
            server_errors: 0,
            error_kinds: BTreeMap::new(),
            db_orders: 0,
            db_stock: 0,
            db_total: 0,
            oversold,
            oversold_answers,
            duplicate_orders,
            answered_without_order,
            orders_without_answer,
            verdict,
            problems,
            latency_ms: Latency::default(),
            latency_uncorrected_ms: None,
            latency_cdf_ms: Vec::new(),
            latency_split_ms: None,
            elapsed_ms: 0.0,
            throughput_rps: 0.0,
            sales_per_sec: 0.0,
            server_metrics: BTreeMap::new(),
            mode: sell_out(),
            rate: None,
            ceilings: Vec::new(),
            persistence_lag_ms: None,
            memory: None,
            cpu: None,
            cpu_floor: None,
            settings: String::new(),
        }
    }

    /// This run's sales per second as a fraction of the named ceiling.
    pub fn ratio_to(&self, ceiling: &str) -> Option<f64> {
        self.ceilings
            .iter()
            .find(|c| c.name == ceiling && c.ops_per_sec > 0.0)
            .map(|c| self.sales_per_sec / c.ops_per_sec)
    }
}

/// A ceiling: what the bare mechanism does at the same concurrency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ceiling {
    /// `postgres_purchase`, `postgres_batch_insert`, `http_noop` or `redis_lua`.
    pub name: String,
    /// Concurrent workers (for `postgres_purchase`: connections).
    pub concurrency: usize,
    /// Servers the workers were dealt over (`http_noop`; 0 for the ceilings
    /// that use no server).
    #[serde(default)]
    pub servers: usize,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Successful operations.
    pub operations: u64,
    /// Failed operations.
    pub errors: u64,
    /// Per-operation latency.
    pub latency_ms: Latency,
    /// CPU time per operation, by the processes it exercises (see
    /// [`crate::cpu`]).
    #[serde(default)]
    pub cpu: Option<CpuCost>,
}

impl Ceiling {
    /// How a ceiling was measured, in words: "64 concurrent on 2 servers",
    /// "20 connections".
    pub fn shape(&self) -> String {
        match (self.name.as_str(), self.servers) {
            ("postgres_purchase", _) => format!("{} connections", self.concurrency),
            (_, 0) => format!("{} concurrent", self.concurrency),
            (_, 1) => format!("{} concurrent on 1 server", self.concurrency),
            (_, n) => format!("{} concurrent on {n} servers", self.concurrency),
        }
    }
}

/// What part a measured process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The load generator (this process).
    Load,
    /// A server under test.
    Server,
    /// PostgreSQL, all its processes.
    Postgres,
    /// Redis.
    Redis,
}

/// What one process spent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessCpu {
    /// `load`, `server 1`, `postgres`, `redis`.
    pub name: String,
    /// Its part.
    pub role: Role,
    /// CPU time over the run, in milliseconds (`None`: not measured).
    pub cpu_ms: Option<f64>,
    /// CPU time per operation, in microseconds (`None`: not measured, or
    /// no operation succeeded).
    pub us_per_op: Option<f64>,
}

/// CPU time per operation (a sale, or a ceiling's operation), by process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuCost {
    /// What the time is divided by: successful sales, or a ceiling's
    /// successful operations.
    pub operations: u64,
    /// Each process measured.
    pub processes: Vec<ProcessCpu>,
}

/// One ceiling's share of a floor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloorPart {
    /// The ceiling.
    pub ceiling: String,
    /// How many of its operations one sale needs.
    pub times: f64,
    /// Its CPU µs per operation, all processes together.
    pub us_per_op: f64,
}

/// A strategy's floor, and how its measured cost compares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Floor {
    /// The ceilings it is made of.
    pub parts: Vec<FloorPart>,
    /// CPU µs per sale the strategy cannot go below.
    pub total_us: f64,
    /// Measured CPU µs per sale over the floor (`None`: a process was not
    /// measured).
    pub ratio: Option<f64>,
}

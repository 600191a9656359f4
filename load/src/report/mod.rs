//! A report a workshop can project: one self-contained HTML page (no CDN,
//! opens offline) with the comparison table, the plots and the machine it
//! ran on, plus the JSON behind it.
//!
//! Plots are drawn with `plotters` into SVG and inlined into the page, so the
//! directory can be mailed or opened from a USB stick.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

pub mod cost;
mod page;
mod plots;

use page::html;
use plots::{latency_plot, outcomes_plot, throughput_plot};

use crate::machine::Machine;
use crate::model::{Ceiling, Report};

/// One row of a report: a run of one level, strategy and server count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// The verdict the level promises, when known.
    pub expected: Option<ticket_core::Verdict>,
    /// Whether every round earned it.
    pub as_expected: Option<bool>,
    /// The round shown (the one that disagrees, else the last).
    pub report: Report,
}

impl ReportRow {
    /// A short label such as `L2 atomic ×2`.
    pub fn label(&self) -> String {
        let r = &self.report;
        format!(
            "L{} {} ×{}",
            r.level.map_or_else(|| "?".to_owned(), |l| l.to_string()),
            r.strategy.as_deref().unwrap_or("?"),
            r.servers
        )
    }
}

/// Everything the page shows; also written as `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportData {
    /// The page's title.
    pub title: String,
    /// The command that produced it, to run it again.
    pub command: String,
    /// When it was written (seconds since the Unix epoch).
    pub generated_unix: u64,
    /// The machine.
    pub machine: Machine,
    /// The rows, in order.
    pub rows: Vec<ReportRow>,
    /// Ceilings measured in the same run, if any.
    pub ceilings: Vec<Ceiling>,
}

impl ReportData {
    /// A report with the current time and this process's command line.
    pub fn new(title: impl Into<String>, machine: Machine, rows: Vec<ReportRow>) -> Self {
        let ceilings = rows
            .iter()
            .find(|r| !r.report.ceilings.is_empty())
            .map(|r| r.report.ceilings.clone())
            .unwrap_or_default();
        Self {
            title: title.into(),
            command: command_line(),
            generated_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            machine,
            rows,
            ceilings,
        }
    }
}

fn command_line() -> String {
    let mut args = std::env::args();
    let _ = args.next();
    let rest: Vec<String> = args.collect();
    format!("cargo run --release -p load -- {}", rest.join(" "))
}

/// Writes `index.html`, `report.json` and the plots as separate SVG files
/// into `dir` (created if needed) and returns the page's path.
pub fn write(dir: &Path, data: &ReportData) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(data)?;
    std::fs::write(dir.join("report.json"), json).context("cannot write report.json")?;
    let plots = [
        ("latency.svg", "Latency distribution", latency_plot(data)?),
        ("throughput.svg", "Throughput", throughput_plot(data)?),
        (
            "outcomes.svg",
            "What buyers were answered",
            outcomes_plot(data)?,
        ),
    ];
    for (file, _, svg) in &plots {
        std::fs::write(dir.join(file), svg).with_context(|| format!("cannot write {file}"))?;
    }
    let page = dir.join("index.html");
    std::fs::write(&page, html(data, &plots)).context("cannot write index.html")?;
    Ok(page)
}

/// Reads a `report.json` back.
pub fn read(dir: &Path) -> anyhow::Result<ReportData> {
    let text =
        std::fs::read_to_string(dir.join("report.json")).context("cannot read report.json")?;
    serde_json::from_str(&text).context("report.json does not parse")
}

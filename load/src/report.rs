//! A report a workshop can project: one self-contained HTML page (no CDN,
//! opens offline) with the comparison table, the plots and the machine it
//! ran on, plus the JSON behind it.
//!
//! Plots are drawn with `plotters` into SVG and inlined into the page, so the
//! directory can be mailed or opened from a USB stick.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

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

const WIDTH: u32 = 960;

fn color(index: usize) -> RGBColor {
    let c = Palette99::pick(index).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

fn plot_error(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {err}")
}

/// Latency CDF: one line per row, x = milliseconds (log scale), y = share of
/// buyers answered within that time.
fn latency_plot(data: &ReportData) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let height = 440 + 18 * data.rows.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let max_ms = data
            .rows
            .iter()
            .flat_map(|r| r.report.latency_cdf_ms.iter().map(|p| p[1]))
            .fold(1.0_f64, f64::max)
            * 1.2;
        let (chart_area, legend_area) = root.split_vertically(440);
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(
                "Latency: share of buyers answered within x ms",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((0.1_f64..max_ms).log_scale(), 0.0_f64..100.0)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("milliseconds (log scale)")
            .y_desc("percent of buyers")
            .draw()
            .map_err(plot_error)?;
        for (i, row) in data.rows.iter().enumerate() {
            let points: Vec<(f64, f64)> = row
                .report
                .latency_cdf_ms
                .iter()
                .map(|p| (p[1].max(0.1), p[0]))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color(i).stroke_width(2)))
                .map_err(plot_error)?;
        }
        for (i, row) in data.rows.iter().enumerate() {
            let y = 8 + 18 * i as i32;
            legend_area
                .draw(&Rectangle::new([(60, y), (80, y + 10)], color(i).filled()))
                .map_err(plot_error)?;
            legend_area
                .draw(&Text::new(row.label(), (88, y), ("sans-serif", 13)))
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// Horizontal bars of one value per row.
fn bars(title: &str, unit: &str, rows: &[(String, f64, RGBColor)]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let height = 80 + 26 * rows.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let max = rows.iter().map(|r| r.1).fold(1.0_f64, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(180)
            .build_cartesian_2d(0.0_f64..max, 0.0_f64..rows.len() as f64)
            .map_err(plot_error)?;
        let labels: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows.len() * 2 + 1)
            .y_label_formatter(&|y| {
                let index = (y - 0.5).round();
                if (y - 0.5 - index).abs() < 1e-6 && index >= 0.0 {
                    labels
                        .get(rows.len() - 1 - index as usize)
                        .cloned()
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc(unit)
            .draw()
            .map_err(plot_error)?;
        for (i, (_, value, fill)) in rows.iter().enumerate() {
            let y = (rows.len() - 1 - i) as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y + 0.15), (*value, y + 0.85)],
                    fill.filled(),
                )))
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

fn throughput_plot(data: &ReportData) -> anyhow::Result<String> {
    let sustained = data.rows.iter().any(|r| r.report.mode == "sustained");
    let rows: Vec<(String, f64, RGBColor)> = data
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let value = if sustained {
                r.report.sales_per_sec
            } else {
                r.report.throughput_rps
            };
            (r.label(), value, color(i))
        })
        .collect();
    if sustained {
        bars("Sustained purchases per second", "purchases / s", &rows)
    } else {
        bars(
            "Requests answered per second during the rush",
            "requests / s",
            &rows,
        )
    }
}

/// One kind of answer in the outcome plot: its name, colour and count.
type Outcome = (&'static str, RGBColor, fn(&Report) -> f64);

/// Stacked bars: how each row's buyers were answered.
fn outcomes_plot(data: &ReportData) -> anyhow::Result<String> {
    let kinds: [Outcome; 5] = [
        ("201 created", RGBColor(46, 139, 87), |r| r.succeeded as f64),
        ("409 sold_out", RGBColor(120, 144, 156), |r| {
            r.sold_out as f64
        }),
        ("409 already_purchased", RGBColor(171, 130, 255), |r| {
            r.already_purchased as f64
        }),
        ("503 busy (every attempt)", RGBColor(255, 165, 0), |r| {
            r.busy as f64
        }),
        ("errors", RGBColor(220, 20, 60), |r| r.errors as f64),
    ];
    let mut svg = String::new();
    {
        let n = data.rows.len().max(1);
        let height = 110 + 26 * n as u32;
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (chart_area, legend_area) = root.split_vertically(height - 30);
        let max = data
            .rows
            .iter()
            .map(|r| kinds.iter().map(|k| (k.2)(&r.report)).sum::<f64>())
            .fold(1.0_f64, f64::max)
            * 1.1;
        let labels: Vec<String> = data.rows.iter().map(ReportRow::label).collect();
        let mut chart = ChartBuilder::on(&chart_area)
            .caption("What buyers were answered", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(180)
            .build_cartesian_2d(0.0_f64..max, 0.0_f64..n as f64)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n * 2 + 1)
            .y_label_formatter(&|y| {
                let index = (y - 0.5).round();
                if (y - 0.5 - index).abs() < 1e-6 && index >= 0.0 {
                    labels
                        .get(n - 1 - index as usize)
                        .cloned()
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc("answers")
            .draw()
            .map_err(plot_error)?;
        for (i, row) in data.rows.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            let mut start = 0.0;
            for (_, fill, value) in &kinds {
                let width = value(&row.report);
                if width > 0.0 {
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(start, y + 0.15), (start + width, y + 0.85)],
                            fill.filled(),
                        )))
                        .map_err(plot_error)?;
                }
                start += width;
            }
        }
        let mut x = 60;
        for (name, fill, _) in &kinds {
            legend_area
                .draw(&Rectangle::new([(x, 8), (x + 14, 20)], fill.filled()))
                .map_err(plot_error)?;
            legend_area
                .draw(&Text::new(
                    name.to_string(),
                    (x + 18, 8),
                    ("sans-serif", 13),
                ))
                .map_err(plot_error)?;
            x += 28 + 7 * name.len() as i32;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(data: &ReportData, plots: &[(&str, &str, String)]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.6rem; }} h2 {{ margin-top: 2.2rem; font-size: 1.2rem; }}
table {{ border-collapse: collapse; width: 100%; font-size: 0.9rem; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; }}
th:nth-child(-n+3), td:nth-child(-n+3) {{ text-align: left; }}
td.correct {{ color: #1b7f3b; font-weight: 600; }}
td.oversold, td.inconsistent, td.undersold {{ color: #b3261e; font-weight: 600; }}
td.unexpected {{ background: #fde7e9; }}
code {{ background: #f4f4f4; padding: 2px 4px; }}
figure {{ margin: 1rem 0; }}
</style></head><body>
<h1>{title}</h1>
<p>Every verdict comes from the database, not from HTTP answers. Reproduce with <code>{command}</code>.</p>
<p id="settings">Measured with {settings}.</p>
"#,
        title = escape(&data.title),
        command = escape(&data.command),
        settings = escape(&data.machine.settings_line())
    );
    let sustained = data.rows.iter().any(|r| r.report.mode == "sustained");
    out.push_str("<h2>Comparison</h2>\n<table id=\"comparison\">\n<thead><tr>");
    let mut headers = vec![
        "level", "strategy", "servers", "expected", "observed", "orders", "stock", "201", "busy",
        "errors", "p50 ms", "p95 ms", "p99 ms", "max ms", "req/s", "sales/s",
    ];
    if sustained {
        headers.extend(["vs pg", "vs http", "vs redis"]);
    }
    for h in &headers {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in &data.rows {
        let r = &row.report;
        let unexpected = row.as_expected == Some(false);
        let _ = write!(
            out,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.0}</td><td>{:.0}</td>",
            if unexpected {
                " class=\"unexpected\""
            } else {
                ""
            },
            r.level.map_or_else(String::new, |l| l.to_string()),
            escape(r.strategy.as_deref().unwrap_or("")),
            r.servers,
            row.expected.map_or_else(String::new, |v| v.to_string()),
            r.verdict,
            r.verdict,
            r.db_orders,
            r.db_stock,
            r.succeeded,
            r.busy,
            r.errors,
            r.latency_ms.p50,
            r.latency_ms.p95,
            r.latency_ms.p99,
            r.latency_ms.max,
            r.throughput_rps,
            r.sales_per_sec,
        );
        if sustained {
            for name in ["postgres_purchase", "http_noop", "redis_lua"] {
                let _ = write!(
                    out,
                    "<td>{}</td>",
                    r.ratio_to(name)
                        .map_or_else(|| "–".to_owned(), |x| format!("{x:.2}"))
                );
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
    if !data.ceilings.is_empty() {
        out.push_str("<h2>Ceilings measured in the same run</h2>\n<table id=\"ceilings\"><thead><tr><th>ceiling</th><th>measured at</th><th>ops/s</th><th>p50 ms</th><th>p99 ms</th></tr></thead><tbody>\n");
        for c in &data.ceilings {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.2}</td><td>{:.2}</td></tr>",
                escape(&c.name),
                escape(&crate::output::ceiling_shape(c)),
                c.ops_per_sec,
                c.latency_ms.p50,
                c.latency_ms.p99
            );
        }
        out.push_str("</tbody></table>\n");
    }
    for (file, title, svg) in plots {
        let id = file.trim_end_matches(".svg");
        let _ = write!(
            out,
            "<h2>{title}</h2>\n<figure class=\"plot\" id=\"plot-{id}\">\n{}\n</figure>\n",
            strip_xml_declaration(svg)
        );
    }
    let m = &data.machine;
    let _ = write!(
        out,
        "<h2>Machine</h2>\n<table id=\"machine\"><tbody>\
         <tr><td>CPU</td><td>{}</td></tr><tr><td>cores</td><td>{}</td></tr>\
         <tr><td>memory</td><td>{} MiB</td></tr><tr><td>kernel</td><td>{}</td></tr>\
         <tr><td>PostgreSQL</td><td>{}</td></tr><tr><td>Redis</td><td>{}</td></tr>\
         <tr><td>load</td><td>{}</td></tr></tbody></table>\n</body></html>\n",
        escape(&m.cpu),
        m.cores,
        m.memory_mib,
        escape(&m.kernel),
        escape(&m.postgres),
        escape(m.redis.as_deref().unwrap_or("not used")),
        escape(&m.load_version)
    );
    out
}

fn strip_xml_declaration(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(start) => &svg[start..],
        None => svg,
    }
}

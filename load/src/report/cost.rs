//! CPU per sale in the report: a table (text for the terminal, HTML for the
//! page) of each strategy's CPU µs per sale by process and its ratio to its
//! floor, the ceilings' own costs under it, and a stacked bar per strategy.
//! The figures come from [`crate::cpu`].

use std::fmt::Write as _;

use plotters::prelude::*;

use super::page::escape;
use super::ReportData;
use crate::cpu::{CpuCost, Floor, Role};
use crate::model::{Ceiling, Report};

/// One line of the cost table: a strategy's run or a ceiling.
struct Line<'a> {
    label: String,
    cost: &'a CpuCost,
    floor: Option<&'a Floor>,
}

/// The lines of the table: every row with a measured cost, then the
/// ceilings'.
fn lines<'a>(rows: &'a [(String, &'a Report)], ceilings: &'a [Ceiling]) -> Vec<Line<'a>> {
    let strategies = rows.iter().filter_map(|(label, report)| {
        Some(Line {
            label: label.clone(),
            cost: report.cpu.as_ref()?,
            floor: report.cpu_floor.as_ref(),
        })
    });
    let bare = ceilings.iter().filter_map(|c| {
        Some(Line {
            label: format!("ceiling {}", c.name),
            cost: c.cpu.as_ref()?,
            floor: None,
        })
    });
    strategies.chain(bare).collect()
}

/// A cell: µs with one decimal, `n/m` when not measured, `-` when the run
/// has no such process.
fn cell(cost: &CpuCost, role: Role) -> String {
    if !cost.processes.iter().any(|p| p.role == role) {
        return "-".to_owned();
    }
    cost.role_us(role)
        .map_or_else(|| "n/m".to_owned(), |us| format!("{us:.1}"))
}

/// The terminal's table; empty when nothing was measured. Row labels start
/// with `L<level>` or `ceiling`, never with a bare number, so that scripts
/// reading the tour's rows do not mistake them for tour rows.
pub fn text_table(rows: &[(String, &Report)], ceilings: &[Ceiling]) -> String {
    let lines = lines(rows, ceilings);
    if lines.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "CPU per sale, µs by process (user + system time from /proc over the run, divided by \
         successful sales;\na ceiling: per operation). floor: the ceilings a strategy cannot \
         avoid (see load/src/cpu.rs). n/m: not measured\n(a service given by URL, a server \
         given by --target).\n",
    );
    let _ = writeln!(
        out,
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "cpu per sale", "load", "servers", "postgres", "redis", "total", "floor", "x floor"
    );
    for line in &lines {
        let _ = write!(out, "{:<28}", line.label);
        for role in Role::ALL {
            let _ = write!(out, " {:>9}", cell(line.cost, role));
        }
        let total = line
            .cost
            .total_us()
            .map_or_else(|| "n/m".to_owned(), |t| format!("{t:.1}"));
        let floor = line
            .floor
            .map_or_else(|| "-".to_owned(), |f| format!("{:.1}", f.total_us));
        let ratio = line
            .floor
            .and_then(|f| f.ratio)
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
        let _ = writeln!(out, " {total:>9} {floor:>9} {ratio:>8}");
    }
    out
}

/// The page's section: the table and the plot. Nothing when no row has a
/// measured cost.
pub(super) fn section(out: &mut String, data: &ReportData) {
    let rows: Vec<(String, &Report)> = data.rows.iter().map(|r| (r.label(), &r.report)).collect();
    let lines = lines(&rows, &data.ceilings);
    if lines.is_empty() {
        return;
    }
    out.push_str(
        "<h2>CPU per sale</h2>\n<p>CPU time (user + system, from <code>/proc</code>) each \
         process spent per successful sale, in µs; for a ceiling, per operation. The floor is \
         the sum of the ceilings a strategy cannot avoid (<code>load/src/cpu.rs</code>, \
         <code>floor_recipe</code>).</p>\n<table id=\"cpu\"><thead><tr><th>run</th>",
    );
    for role in Role::ALL {
        let _ = write!(out, "<th>{} µs</th>", role.label());
    }
    out.push_str("<th>total µs</th><th>floor µs</th><th>× floor</th></tr></thead><tbody>\n");
    for line in &lines {
        let _ = write!(out, "<tr><td>{}</td>", escape(&line.label));
        for role in Role::ALL {
            let text = cell(line.cost, role).replace("n/m", "not measured");
            let _ = write!(out, "<td>{text}</td>");
        }
        let _ = writeln!(
            out,
            "<td>{}</td><td>{}</td><td>{}</td></tr>",
            line.cost
                .total_us()
                .map_or_else(|| "not measured".to_owned(), |t| format!("{t:.1}")),
            line.floor
                .map_or_else(|| "–".to_owned(), |f| format!("{:.1}", f.total_us)),
            line.floor
                .and_then(|f| f.ratio)
                .map_or_else(|| "–".to_owned(), |r| format!("{r:.2}")),
        );
    }
    out.push_str("</tbody></table>\n");
    match plot(&lines) {
        Ok(svg) => {
            let svg = &svg[svg.find("<svg").unwrap_or(0)..];
            let _ = writeln!(
                out,
                "<figure class=\"plot\" id=\"plot-cpu\">\n{svg}\n</figure>"
            );
        }
        Err(err) => tracing::warn!("drawing the CPU plot: {err:#}"),
    }
}

/// The colour of each process's segment, in [`Role::ALL`] order.
const COLOURS: [RGBColor; 4] = [
    RGBColor(120, 144, 156),
    RGBColor(66, 133, 244),
    RGBColor(46, 139, 87),
    RGBColor(220, 20, 60),
];

fn plot_error(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing the CPU plot: {err}")
}

/// One horizontal bar per line, stacked by process (unmeasured processes
/// are left out), with the floor marked as a black tick.
fn plot(lines: &[Line<'_>]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let n = lines.len();
        let height = 110 + 26 * n as u32;
        let root = SVGBackend::with_string(&mut svg, (960, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (chart_area, legend_area) = root.split_vertically(height - 30);
        let stacked = |line: &Line<'_>| -> Vec<f64> {
            Role::ALL
                .iter()
                .map(|role| line.cost.role_us(*role).unwrap_or(0.0))
                .collect()
        };
        let max = lines
            .iter()
            .map(|l| {
                let floor = l.floor.map_or(0.0, |f| f.total_us);
                stacked(l).iter().sum::<f64>().max(floor)
            })
            .fold(1.0_f64, f64::max)
            * 1.15;
        let labels: Vec<String> = lines.iter().map(|l| l.label.clone()).collect();
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(
                "CPU µs per sale by process (| = the strategy's floor)",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(200)
            .build_cartesian_2d(0.0_f64..max, 0.0_f64..n as f64)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n * 2 + 1)
            .y_label_formatter(&|y| bar_label(&labels, *y))
            .x_desc("CPU µs per sale (per operation for a ceiling)")
            .draw()
            .map_err(plot_error)?;
        for (i, line) in lines.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            super::plots::draw_segments(&mut chart, y, stacked(line).into_iter().zip(COLOURS))?;
            if let Some(floor) = line.floor {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(floor.total_us, y + 0.05), (floor.total_us, y + 0.95)],
                        BLACK.stroke_width(3),
                    )))
                    .map_err(plot_error)?;
            }
        }
        let mut x = 60;
        for (role, fill) in Role::ALL.iter().zip(COLOURS) {
            legend_area
                .draw(&Rectangle::new([(x, 8), (x + 14, 20)], fill.filled()))
                .map_err(plot_error)?;
            legend_area
                .draw(&Text::new(role.label(), (x + 18, 8), ("sans-serif", 13)))
                .map_err(plot_error)?;
            x += 100;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// The label of the bar at height `y` (bars drawn top to bottom, labels at
/// their middles, other ticks blank).
fn bar_label(labels: &[String], y: f64) -> String {
    let n = labels.len();
    let index = (y - 0.5).round();
    if (y - 0.5 - index).abs() < 1e-6 && index >= 0.0 && (index as usize) < n {
        labels[n - 1 - index as usize].clone()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ProcessCpu;

    fn report(level: u8, us: [Option<f64>; 3]) -> Report {
        let processes = [
            ("load", Role::Load),
            ("server 1", Role::Server),
            ("postgres", Role::Postgres),
        ]
        .iter()
        .zip(us)
        .map(|((name, role), us)| ProcessCpu {
            name: (*name).to_owned(),
            role: *role,
            cpu_ms: us,
            us_per_op: us,
        })
        .collect();
        Report {
            level: Some(level),
            cpu: Some(CpuCost {
                operations: 10,
                processes,
            }),
            ..Report::judged(ticket_core::verify::Judgement {
                verdict: ticket_core::Verdict::Correct,
                oversold: 0,
                oversold_answers: 0,
                duplicate_orders: 0,
                answered_without_order: 0,
                orders_without_answer: 0,
                problems: Vec::new(),
            })
        }
    }

    #[test]
    fn the_text_table_sums_processes_and_says_what_was_not_measured() {
        let measured = report(2, [Some(10.0), Some(20.0), Some(30.0)]);
        let external = report(2, [Some(10.0), Some(20.0), None]);
        let rows = [
            ("L2 atomic ×2".to_owned(), &measured),
            ("L2 nowait ×2".to_owned(), &external),
        ];
        let table = text_table(&rows, &[]);
        let atomic = table.lines().find(|l| l.starts_with("L2 atomic")).unwrap();
        assert!(atomic.contains(" 60.0"), "{table}");
        let nowait = table.lines().find(|l| l.starts_with("L2 nowait")).unwrap();
        assert!(nowait.contains("n/m"), "{table}");
        assert!(!nowait.contains(" 30.0"), "{table}");
        assert_eq!(text_table(&[], &[]), "");
    }
}

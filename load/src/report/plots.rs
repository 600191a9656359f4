//! The report's plots, drawn with `plotters` into SVG strings.

use plotters::prelude::*;

use super::ReportData;
use crate::model::Report;

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
pub(super) fn latency_plot(data: &ReportData) -> anyhow::Result<String> {
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

/// One bar of a bar chart: its label and its segments, left to right.
struct Bar {
    label: String,
    segments: Vec<(f64, RGBColor)>,
}

/// Horizontal bars of one value per row.
fn bars(title: &str, unit: &str, rows: &[(String, f64, RGBColor)]) -> anyhow::Result<String> {
    let bars: Vec<Bar> = rows
        .iter()
        .map(|(label, value, fill)| Bar {
            label: label.clone(),
            segments: vec![(*value, *fill)],
        })
        .collect();
    stacked_bars(title, unit, &bars, &[])
}

/// The label of the bar at height `y` of an `n`-bar chart (bars are drawn
/// top to bottom; labels sit at their middles, other ticks stay blank).
fn bar_label(labels: &[String], y: f64) -> String {
    let n = labels.len();
    let index = (y - 0.5).round();
    if (y - 0.5 - index).abs() < 1e-6 && index >= 0.0 && (index as usize) < n {
        labels[n - 1 - index as usize].clone()
    } else {
        String::new()
    }
}

/// Horizontal bars made of coloured segments, with a legend of the
/// segments' names under the chart when `legend` is not empty.
fn stacked_bars(
    title: &str,
    unit: &str,
    bars: &[Bar],
    legend: &[(&str, RGBColor)],
) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let n = bars.len().max(1);
        let legend_height = if legend.is_empty() { 0 } else { 30 };
        let height = 80 + 26 * n as u32 + legend_height;
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (chart_area, legend_area) = root.split_vertically(height - legend_height);
        let total = |bar: &Bar| bar.segments.iter().map(|s| s.0).sum::<f64>();
        let max = bars.iter().map(total).fold(1.0_f64, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(180)
            .build_cartesian_2d(0.0_f64..max, 0.0_f64..n as f64)
            .map_err(plot_error)?;
        let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n * 2 + 1)
            .y_label_formatter(&|y| bar_label(&labels, *y))
            .x_desc(unit)
            .draw()
            .map_err(plot_error)?;
        for (i, bar) in bars.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            let mut start = 0.0;
            for (width, fill) in bar.segments.iter().filter(|s| s.0 > 0.0) {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(start, y + 0.15), (start + width, y + 0.85)],
                        fill.filled(),
                    )))
                    .map_err(plot_error)?;
                start += width;
            }
        }
        draw_legend(&legend_area, legend)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// A row of coloured squares with their names.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    legend: &[(&str, RGBColor)],
) -> anyhow::Result<()> {
    let mut x = 60;
    for (name, fill) in legend {
        area.draw(&Rectangle::new([(x, 8), (x + 14, 20)], fill.filled()))
            .map_err(plot_error)?;
        area.draw(&Text::new(
            name.to_string(),
            (x + 18, 8),
            ("sans-serif", 13),
        ))
        .map_err(plot_error)?;
        x += 28 + 7 * name.len() as i32;
    }
    Ok(())
}

/// Requests (or, sustained, purchases) per second, one bar per row.
pub(super) fn throughput_plot(data: &ReportData) -> anyhow::Result<String> {
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

/// The kinds of answer, in the order their segments are stacked.
const OUTCOMES: [Outcome; 5] = [
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

/// Stacked bars: how each row's buyers were answered.
pub(super) fn outcomes_plot(data: &ReportData) -> anyhow::Result<String> {
    let bars: Vec<Bar> = data
        .rows
        .iter()
        .map(|row| Bar {
            label: row.label(),
            segments: OUTCOMES
                .iter()
                .map(|(_, fill, value)| (value(&row.report), *fill))
                .collect(),
        })
        .collect();
    let legend: Vec<(&str, RGBColor)> = OUTCOMES.iter().map(|(n, f, _)| (*n, *f)).collect();
    stacked_bars("What buyers were answered", "answers", &bars, &legend)
}

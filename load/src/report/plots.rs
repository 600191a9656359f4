//! The report's plots, drawn with `plotters` into SVG strings.

use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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

/// Colours for the strategies of one panel: the Okabe-Ito palette, told
/// apart by most colour-blind readers and on a washed-out projector.
const STRATEGY_COLORS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// Panels side by side, and each panel's size in pixels.
const PANEL_COLUMNS: usize = 2;
const PANEL_HEIGHT: u32 = 330;
/// Room on the right of a panel for the lines' names.
const LABEL_ROOM: u32 = 130;
/// Room above the panels for the title and the key of line styles.
const HEADER: u32 = 70;

/// Where a percentile sits on the x axis: `-log10(1 - p)`, so 90 %, 99 %
/// and 99.9 % are evenly spaced and the tail gets the room it deserves;
/// the maximum (100 %) is drawn half a step past 99.9 %.
fn percentile_x(percent: f64) -> f64 {
    if percent >= 99.95 {
        3.5
    } else {
        -(1.0 - percent / 100.0).log10()
    }
}

/// The x axis's ticks: where, and what they say.
const PERCENTILE_TICKS: [(f64, &str); 5] = [
    (0.301, "50%"),
    (1.0, "90%"),
    (2.0, "99%"),
    (3.0, "99.9%"),
    (3.5, "max"),
];

/// The rows of one level, for one panel.
struct Panel<'a> {
    title: String,
    rows: Vec<&'a super::ReportRow>,
}

/// Groups rows by level, in the order levels first appear.
fn panels(data: &ReportData) -> Vec<Panel<'_>> {
    let mut panels: Vec<(Option<u8>, Panel<'_>)> = Vec::new();
    for row in &data.rows {
        let level = row.report.level;
        match panels.iter_mut().find(|(l, _)| *l == level) {
            Some((_, panel)) => panel.rows.push(row),
            None => panels.push((
                level,
                Panel {
                    title: level.map_or_else(|| "Other".to_owned(), |l| format!("Level {l}")),
                    rows: vec![row],
                },
            )),
        }
    }
    panels.into_iter().map(|(_, panel)| panel).collect()
}

/// Latency by percentile as small multiples: one panel per level, one
/// colour per strategy, a solid line for one server and a dashed one for
/// two, each strategy named at the end of its line (no legend to decode).
/// x = percentile of buyers (0 % to the slowest), y = milliseconds (log).
pub(super) fn latency_plot(data: &ReportData) -> anyhow::Result<String> {
    let panels = panels(data);
    let grid_rows = panels.len().div_ceil(PANEL_COLUMNS).max(1);
    let height = HEADER + PANEL_HEIGHT * grid_rows as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (header, grid) = root.split_vertically(HEADER);
        draw_latency_header(&header)?;
        let cells = grid.split_evenly((grid_rows, PANEL_COLUMNS));
        for (panel, area) in panels.iter().zip(&cells) {
            draw_latency_panel(area, panel)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// The title and the key of the two line styles.
fn draw_latency_header<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> anyhow::Result<()> {
    let title = "Latency: x % of buyers were answered within y ms";
    area.draw(&Text::new(title, (12, 8), ("sans-serif", 22).into_font()))
        .map_err(plot_error)?;
    let grey = RGBColor(60, 60, 60);
    area.draw(&PathElement::new(
        vec![(16, 50), (60, 50)],
        grey.stroke_width(3),
    ))
    .map_err(plot_error)?;
    area.draw(&Text::new("one server", (68, 42), ("sans-serif", 16)))
        .map_err(plot_error)?;
    area.draw(&DashedPathElement::new(
        vec![(190, 50), (234, 50)],
        8,
        5,
        grey.stroke_width(3),
    ))
    .map_err(plot_error)?;
    area.draw(&Text::new("two servers", (242, 42), ("sans-serif", 16)))
        .map_err(plot_error)?;
    area.draw(&Text::new(
        "colour = strategy, named at the end of its line",
        (380, 42),
        ("sans-serif", 16),
    ))
    .map_err(plot_error)?;
    Ok(())
}

/// The points of a row's line, in plot coordinates.
fn latency_points(row: &super::ReportRow) -> Vec<(f64, f64)> {
    row.report
        .latency_cdf_ms
        .iter()
        .map(|p| (percentile_x(p[0]), p[1].max(0.1)))
        .collect()
}

/// One level's panel: its strategies' lines, named on the right.
fn draw_latency_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel<'_>,
) -> anyhow::Result<()> {
    let lines: Vec<Vec<(f64, f64)>> = panel.rows.iter().map(|r| latency_points(r)).collect();
    let all_ms = || lines.iter().flatten().map(|p| p.1);
    // The panel's own range, so that its lines fill it (panels are read
    // one at a time; each names its scale).
    let min_ms = all_ms().fold(f64::MAX, f64::min).min(1e6) * 0.7;
    let max_ms = all_ms().fold(0.0_f64, f64::max).max(min_ms * 10.0) * 1.4;
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 19).into_font())
        .margin(8)
        .margin_right(LABEL_ROOM)
        .x_label_area_size(30)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0_f64..3.6, (min_ms..max_ms).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(5)
        .y_label_style(("sans-serif", 14))
        .y_desc("ms")
        .y_label_formatter(&|ms| format_ms(*ms))
        .draw()
        .map_err(plot_error)?;
    // The chart speaks in whole-picture pixels; `area` draws in its own.
    let (base_x, base_y) = area.get_base_pixel();
    let grid = RGBColor(220, 220, 220);
    for (x, text) in PERCENTILE_TICKS {
        chart
            .draw_series(LineSeries::new(
                [(x, min_ms), (x, max_ms)],
                grid.stroke_width(1),
            ))
            .map_err(plot_error)?;
        let (px, py) = chart.backend_coord(&(x, min_ms));
        let style = ("sans-serif", 14)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        area.draw(&Text::new(text, (px - base_x, py - base_y + 6), style))
            .map_err(plot_error)?;
    }
    let mut strategies: Vec<&str> = Vec::new();
    let mut labels: Vec<(i32, String, RGBColor)> = Vec::new();
    for (row, points) in panel.rows.iter().zip(&lines) {
        let name = row.report.strategy.as_deref().unwrap_or("?");
        let index = strategies
            .iter()
            .position(|s| *s == name)
            .unwrap_or_else(|| {
                strategies.push(name);
                strategies.len() - 1
            });
        let color = STRATEGY_COLORS[index % STRATEGY_COLORS.len()];
        let style = color.stroke_width(3);
        if row.report.servers <= 1 {
            chart.draw_series(LineSeries::new(points.clone(), style))
        } else {
            chart.draw_series(DashedLineSeries::new(points.clone(), 9, 6, style))
        }
        .map_err(plot_error)?;
        // A strategy is named once, at the end of its first line.
        if let (Some(end), false) = (points.last(), labels.iter().any(|l| l.1 == name)) {
            labels.push((chart.backend_coord(end).1 - base_y, name.to_owned(), color));
        }
    }
    let x = chart.backend_coord(&(3.6, max_ms)).0 - base_x + 8;
    draw_line_names(area, x, labels)
}

/// Names each line at its end (`labels`: height, name, colour), spread so
/// that no two names overlap.
fn draw_line_names<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    x: i32,
    labels: Vec<(i32, String, RGBColor)>,
) -> anyhow::Result<()> {
    for (y, name, color) in spread_labels(labels, 17) {
        let style = ("sans-serif", 15)
            .into_font()
            .color(&color)
            .pos(Pos::new(HPos::Left, VPos::Center));
        area.draw(&Text::new(name, (x, y), style))
            .map_err(plot_error)?;
    }
    Ok(())
}

/// One horizontal bar at height `y` of a bar chart, its segments (width,
/// colour) laid end to end from 0.
pub(super) fn draw_segments<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    y: f64,
    segments: impl IntoIterator<Item = (f64, RGBColor)>,
) -> anyhow::Result<()> {
    let mut start = 0.0;
    for (width, fill) in segments {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(start, y + 0.15), (start + width, y + 0.85)],
                fill.filled(),
            )))
            .map_err(plot_error)?;
        start += width;
    }
    Ok(())
}

/// Milliseconds as an axis label: no trailing noise.
fn format_ms(ms: f64) -> String {
    if ms >= 10.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// Moves labels apart vertically so that none overlaps the next: sorted
/// top to bottom, each at least `gap` pixels below the one above.
fn spread_labels(
    mut labels: Vec<(i32, String, RGBColor)>,
    gap: i32,
) -> Vec<(i32, String, RGBColor)> {
    labels.sort_by_key(|l| l.0);
    let mut last = i32::MIN / 2;
    for label in &mut labels {
        label.0 = label.0.max(last + gap);
        last = label.0;
    }
    labels
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
            let segments = bar.segments.iter().filter(|s| s.0 > 0.0).copied();
            draw_segments(&mut chart, y, segments)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_names_at_one_height_are_spread_so_none_overlaps() {
        let blue = STRATEGY_COLORS[0];
        let labels = vec![
            (100, "b".to_owned(), blue),
            (100, "a".to_owned(), blue),
            (105, "c".to_owned(), blue),
            (300, "d".to_owned(), blue),
        ];
        let heights: Vec<i32> = spread_labels(labels, 17).iter().map(|l| l.0).collect();
        assert_eq!(heights, [100, 117, 134, 300]);
    }

    #[test]
    fn the_tail_percentiles_are_evenly_spaced_and_the_maximum_last() {
        let x: Vec<f64> = [90.0, 99.0, 99.9, 100.0]
            .iter()
            .map(|p| percentile_x(*p))
            .collect();
        assert!(
            (x[0] - 1.0).abs() < 1e-9 && (x[1] - 2.0).abs() < 1e-9,
            "{x:?}"
        );
        assert!((x[2] - 3.0).abs() < 1e-6 && x[3] > x[2], "{x:?}");
    }
}

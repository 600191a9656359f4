//! The booking page of the HTML report (`load booking --report DIR`): the
//! queue and the admitted users over time, latency per step, seats sold
//! over time, and the seat map coloured by how each seat ended.
//!
//! Like the rush report ([`crate::report`]) it is one self-contained page
//! (plots as inline SVG drawn with `plotters`, no CDN), beside the JSON it
//! was drawn from (`booking.json`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row as _};

use super::model::BookingReport;
use super::run::BookingRun;

/// How a seat ended, for the seat map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeatEnd {
    /// Owned by a paid hold.
    Sold,
    /// Held once by a hold that expired, and on sale again.
    BackOnSale,
    /// Never held.
    NeverHeld,
    /// Still owned by a hold that is not paid (a failure).
    Stuck,
    /// In two live holds (a failure).
    DoubleSold,
}

impl SeatEnd {
    fn colour(self) -> RGBColor {
        match self {
            SeatEnd::Sold => RGBColor(46, 139, 87),
            SeatEnd::BackOnSale => RGBColor(255, 193, 7),
            SeatEnd::NeverHeld => RGBColor(210, 210, 210),
            SeatEnd::Stuck => RGBColor(120, 80, 200),
            SeatEnd::DoubleSold => RGBColor(220, 20, 60),
        }
    }

    const ALL: [(SeatEnd, &'static str); 5] = [
        (SeatEnd::Sold, "sold"),
        (SeatEnd::BackOnSale, "expired, back on sale"),
        (SeatEnd::NeverHeld, "never held"),
        (SeatEnd::Stuck, "still held (failure)"),
        (SeatEnd::DoubleSold, "double-sold (failure)"),
    ];
}

/// What the page reads from the database.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PageData {
    /// Every seat, in seat order, and how it ended.
    pub seats: Vec<(i32, SeatEnd)>,
    /// Each payment: ms since the run's start, and its seats.
    pub sales: Vec<(f64, i64)>,
}

impl PageData {
    /// Reads the seat outcomes and the sales of `show_id`; `start_unix_ms`
    /// puts the database's timestamps on the run's clock.
    pub async fn gather(pool: &PgPool, show_id: i64, start_unix_ms: f64) -> anyhow::Result<Self> {
        let rows = sqlx::query(
            "SELECT s.seat_no, h.status, \
               EXISTS (SELECT 1 FROM hold_seats hs JOIN holds x ON x.id = hs.hold_id \
                 WHERE hs.show_id = s.show_id AND hs.seat_no = s.seat_no \
                   AND x.status = 'expired') AS was_expired, \
               (SELECT count(*) FROM hold_seats hs JOIN holds x ON x.id = hs.hold_id \
                 WHERE hs.show_id = s.show_id AND hs.seat_no = s.seat_no \
                   AND x.status IN ('held', 'paid')) AS live \
             FROM seats s LEFT JOIN holds h ON h.id = s.hold_id \
             WHERE s.show_id = $1 ORDER BY s.seat_no",
        )
        .bind(show_id)
        .fetch_all(pool)
        .await?;
        let seats = rows
            .iter()
            .map(|row| {
                let live: i64 = row.get("live");
                let end = match row.get::<Option<String>, _>("status").as_deref() {
                    _ if live > 1 => SeatEnd::DoubleSold,
                    Some("paid") => SeatEnd::Sold,
                    Some(_) => SeatEnd::Stuck,
                    None if row.get::<bool, _>("was_expired") => SeatEnd::BackOnSale,
                    None => SeatEnd::NeverHeld,
                };
                (row.get::<i32, _>("seat_no"), end)
            })
            .collect();
        let sales = sqlx::query_as(
            "SELECT (extract(epoch FROM p.created_at) * 1000 - $2)::float8, \
                    (SELECT count(*) FROM hold_seats hs WHERE hs.hold_id = p.hold_id) \
             FROM payments p JOIN holds h ON h.id = p.hold_id \
             WHERE h.show_id = $1 ORDER BY p.created_at",
        )
        .bind(show_id)
        .bind(start_unix_ms)
        .fetch_all(pool)
        .await?;
        Ok(Self { seats, sales })
    }
}

const WIDTH: u32 = 960;

fn plot_error(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {err}")
}

/// Writes `index.html`, `booking.json` and the plots into `dir`; returns
/// the page's path.
pub fn write(dir: &Path, run: &BookingRun) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::json!({
        "report": run.report,
        "machine": run.machine,
        "queue_samples": run.probe,
        "seats": run.page.seats,
        "sales": run.page.sales,
    });
    std::fs::write(
        dir.join("booking.json"),
        serde_json::to_string_pretty(&json)?,
    )
    .context("cannot write booking.json")?;
    let plots = [
        (
            "queue.svg",
            "The queue and admitted users",
            queue_plot(run)?,
        ),
        (
            "latency.svg",
            "Latency per step",
            latency_plot(&run.report)?,
        ),
        ("sold.svg", "Seats sold over time", sold_plot(&run.page)?),
        (
            "seats.svg",
            "The seat map, by how each seat ended",
            seat_map(&run.page)?,
        ),
    ];
    for (file, _, svg) in &plots {
        std::fs::write(dir.join(file), svg).with_context(|| format!("cannot write {file}"))?;
    }
    let page = dir.join("index.html");
    std::fs::write(&page, html(run, &plots)).context("cannot write index.html")?;
    Ok(page)
}

/// A step curve of `(x, y)` points, for a cumulative count.
fn steps(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2);
    let mut last = 0.0;
    for &(x, y) in points {
        out.push((x, last));
        out.push((x, y));
        last = y;
    }
    out
}

/// One line of a time plot: its name, colour and `(ms, value)` points.
type Series = (String, RGBColor, Vec<(f64, f64)>);

/// Lines over the run's time.
fn lines(title: &str, y_desc: &str, series: &[Series]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let all = series.iter().flat_map(|s| s.2.iter());
        let (max_x, max_y) = all.fold((1.0_f64, 1.0_f64), |(x, y), p| {
            (x.max(p.0 / 1000.0), y.max(p.1))
        });
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_x * 1.02, 0.0..max_y * 1.1)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the start")
            .y_desc(y_desc)
            .draw()
            .map_err(plot_error)?;
        for (name, colour, points) in series {
            let colour = *colour;
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (p.0 / 1000.0, p.1)),
                    colour.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// Waiting and admitted users over time, as the users saw them, and the
/// servers' own queue gauges when they expose any.
fn queue_plot(run: &BookingRun) -> anyhow::Result<String> {
    let mut events: Vec<(f64, f64)> = Vec::new();
    let mut admitted: Vec<f64> = Vec::new();
    for s in &run.seen.sightings {
        events.push((s.joined_ms, 1.0));
        if let Some(at) = s.admitted_seen_ms {
            events.push((at, -1.0));
            admitted.push(at);
        }
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    admitted.sort_by(f64::total_cmp);
    let mut waiting = 0.0;
    let waiting: Vec<(f64, f64)> = events
        .iter()
        .map(|(at, d)| {
            waiting += d;
            (*at, waiting)
        })
        .collect();
    let admitted: Vec<(f64, f64)> = admitted
        .iter()
        .enumerate()
        .map(|(i, at)| (*at, (i + 1) as f64))
        .collect();
    let mut series = vec![
        (
            "waiting (users' view)".to_owned(),
            RGBColor(255, 140, 0),
            steps(&waiting),
        ),
        (
            "admitted so far (users' view)".to_owned(),
            RGBColor(30, 110, 200),
            steps(&admitted),
        ),
    ];
    for (i, (name, points)) in run.probe.series.iter().enumerate() {
        let c = Palette99::pick(i + 3).to_rgba();
        series.push((
            format!("server: {name}"),
            RGBColor(c.0, c.1, c.2),
            points.clone(),
        ));
    }
    lines(
        "The waiting room: users waiting and admitted",
        "users",
        &series,
    )
}

fn sold_plot(page: &PageData) -> anyhow::Result<String> {
    let mut total = 0.0;
    let points: Vec<(f64, f64)> = page
        .sales
        .iter()
        .map(|(at, n)| {
            total += *n as f64;
            (*at, total)
        })
        .collect();
    lines(
        "Seats sold (paid) over time, from payments.created_at",
        "seats",
        &[(
            "seats sold".to_owned(),
            RGBColor(46, 139, 87),
            steps(&points),
        )],
    )
}

/// p50, p95 and p99 per step, as grouped bars.
fn latency_plot(report: &BookingReport) -> anyhow::Result<String> {
    let steps: Vec<(&str, super::model::Percentiles)> = super::record::Step::ALL
        .iter()
        .filter_map(|s| Some((s.name(), *report.latency_ms.get(s.name())?)))
        .filter(|(_, p)| p.count > 0)
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let max = steps.iter().map(|(_, p)| p.p99).fold(1.0_f64, f64::max) * 1.15;
        let names: Vec<&str> = steps.iter().map(|(n, _)| *n).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Latency per request, by step (ms): p50, p95, p99",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..names.len().max(1) as f64, 0.0..max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(names.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = (x - 0.5).round();
                if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                    names
                        .get(i as usize)
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("milliseconds")
            .draw()
            .map_err(plot_error)?;
        let shades = [
            ("p50", RGBColor(144, 202, 249)),
            ("p95", RGBColor(66, 133, 244)),
            ("p99", RGBColor(21, 67, 150)),
        ];
        for (k, (label, colour)) in shades.iter().enumerate() {
            let bars = steps.iter().enumerate().map(|(i, (_, p))| {
                let value = [p.p50, p.p95, p.p99][k];
                let x = i as f64 + 0.15 + 0.23 * k as f64;
                Rectangle::new([(x, 0.0), (x + 0.22, value)], colour.filled())
            });
            let colour = *colour;
            chart
                .draw_series(bars)
                .map_err(plot_error)?
                .label(*label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// The seats as a grid, front row first, coloured by how each ended.
fn seat_map(page: &PageData) -> anyhow::Result<String> {
    let per_row = 50usize;
    let cell = (WIDTH as usize - 40) / per_row;
    let rows = page.seats.len().div_ceil(per_row).max(1);
    let height = (rows * cell + 90) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        root.draw(&Text::new(
            "stage (seat 1 is front left)",
            (20, 6),
            ("sans-serif", 14),
        ))
        .map_err(plot_error)?;
        for (i, (_, end)) in page.seats.iter().enumerate() {
            let (x, y) = (
                20 + (i % per_row * cell) as i32,
                28 + (i / per_row * cell) as i32,
            );
            let size = cell as i32 - 2;
            root.draw(&Rectangle::new(
                [(x, y), (x + size, y + size)],
                end.colour().filled(),
            ))
            .map_err(plot_error)?;
        }
        let mut x = 20;
        let y = height as i32 - 30;
        for (end, label) in SeatEnd::ALL {
            let count = page.seats.iter().filter(|(_, e)| *e == end).count();
            let text = format!("{label}: {count}");
            root.draw(&Rectangle::new(
                [(x, y), (x + 14, y + 14)],
                end.colour().filled(),
            ))
            .map_err(plot_error)?;
            root.draw(&Text::new(text.clone(), (x + 18, y), ("sans-serif", 13)))
                .map_err(plot_error)?;
            x += 30 + 7 * text.len() as i32;
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

fn html(run: &BookingRun, plots: &[(&str, &str, String)]) -> String {
    let r = &run.report;
    let command = format!(
        "cargo run --release -p load -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>ticket-rush: load booking</title>\n\
         <style>body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}\n\
         table {{ border-collapse: collapse; }} td, th {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; }}\n\
         .correct {{ color: #1b7f3b; font-weight: 600; }} .wrong {{ color: #b3261e; font-weight: 600; }}\n\
         code {{ background: #f4f4f4; padding: 2px 4px; }}</style></head><body>\n\
         <h1>load booking: {} users, {} seats, {} on {} server(s)</h1>\n\
         <p>Every verdict comes from the database. Reproduce with <code>{}</code>.</p>\n\
         <p id=\"settings\">Measured with {}; {} cores ({}).</p>\n<table id=\"verdict\"><tbody>\n",
        r.users, r.seats, escape(&r.strategy), r.servers, escape(&command),
        escape(&run.machine.settings_line()), run.machine.cores, escape(&run.machine.cpu),
    );
    let rows = verdict_rows(r);
    for (name, value) in rows {
        let _ = writeln!(out, "<tr><th>{name}</th><td>{value}</td></tr>");
    }
    out.push_str("</tbody></table>\n");
    for problem in &r.problems {
        let _ = writeln!(out, "<p class=\"wrong\">{}</p>", escape(problem));
    }
    for (file, title, svg) in plots {
        let id = file.trim_end_matches(".svg");
        let start = svg.find("<svg").unwrap_or(0);
        let _ = write!(
            out,
            "<h2>{title}</h2>\n<figure id=\"plot-{id}\">\n{}\n</figure>\n",
            &svg[start..]
        );
    }
    out.push_str("</body></html>\n");
    out
}

/// The verdict table's rows: name, HTML value.
fn verdict_rows(r: &BookingReport) -> Vec<(&'static str, String)> {
    let class = if r.is_correct() { "correct" } else { "wrong" };
    vec![
        (
            "verdict",
            format!("<span class=\"{class}\">{}</span>", escape(&r.verdict)),
        ),
        ("admitted", r.admitted.to_string()),
        (
            "holds / payments / expired",
            format!("{} / {} / {}", r.holds, r.payments, r.expired_holds),
        ),
        (
            "seats sold / back on sale after expiry / double-sold",
            format!(
                "{} / {} / {}",
                r.seats_sold, r.seats_available_after_expiry, r.double_sold_seats
            ),
        ),
        (
            "money: charged = balances + paid",
            format!(
                "{} = {} + {} ({})",
                r.money.charged,
                r.money.balances,
                r.money.paid,
                if r.money.conserved {
                    "conserved"
                } else {
                    "NOT conserved"
                }
            ),
        ),
        (
            "queue: max active / limit / FIFO violations",
            format!(
                "{} / {} / {}",
                r.queue.max_active.map_or("?".into(), |m| m.to_string()),
                r.queue.active_limit.map_or("-".into(), |l| l.to_string()),
                r.queue.fifo_violations
            ),
        ),
        ("elapsed", format!("{:.1} s", r.elapsed_ms / 1000.0)),
    ]
}

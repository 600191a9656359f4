//! The HTML report renders in a real browser (headless Chromium), its JSON
//! round-trips and matches the page, and servers' /metrics agree with the
//! database.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{plan, servers, stop};
use load::rush::rush;
use load::servers::ServerSpec;

fn chromium() -> PathBuf {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .expect("the report test needs Chromium: apt-get install chromium (.ci/run does)")
}

/// Runs headless Chromium with the flags this sandbox needs (no network
/// chatter, no GPU, no setuid sandbox as root).
fn headless(profile: &Path, args: &[&str]) -> std::process::Output {
    Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium runs")
}

/// `load tour --report DIR` writes a page that Chromium renders with the
/// comparison table and every plot; the JSON behind it matches the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tour_report_renders_in_a_browser_and_matches_its_json() {
    let database = common::fresh_database().await;
    let dir = tempdir("report");

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_load"))
        .args([
            "tour",
            "--levels",
            "1",
            "--buyers",
            "120",
            "--tickets",
            "12",
            "--think-time-ms",
            "5",
        ])
        .arg("--database-url")
        .arg(&database)
        .arg("--report")
        .arg(&dir)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The JSON round-trips.
    let data = load::report::read(&dir).expect("report.json parses");
    let again: load::report::ReportData =
        serde_json::from_str(&serde_json::to_string(&data).unwrap()).unwrap();
    assert_eq!(again, data);
    assert_eq!(data.rows.len(), level1::STRATEGIES.len() * 2);

    // The browser renders the table and the three plots.
    let profile = tempdir("chromium");
    let page = format!("file://{}", dir.join("index.html").display());
    let dom = headless(&profile, &["--dump-dom", &page]);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    let table = section(&dom, "<table id=\"comparison\">", "</table>");
    let body_rows: Vec<&str> = table.split("<tr").skip(2).collect();
    assert_eq!(
        body_rows.len(),
        data.rows.len(),
        "one table row per report row"
    );
    for (html_row, row) in body_rows.iter().zip(&data.rows) {
        let cells = cells(html_row);
        assert_eq!(cells[1], row.report.strategy.clone().unwrap());
        assert_eq!(cells[2], row.report.servers.to_string());
        assert_eq!(cells[4], row.report.verdict.to_string());
        assert_eq!(cells[5], row.report.db_orders.to_string());
        assert_eq!(cells[7], row.report.succeeded.to_string());
    }
    for plot in ["plot-latency", "plot-throughput", "plot-outcomes"] {
        let figure = section(&dom, &format!("id=\"{plot}\""), "</figure>");
        assert!(figure.contains("<svg"), "{plot} has an SVG");
        assert!(
            figure.matches("<polyline").count() + figure.matches("<rect").count() > 3,
            "{plot} draws something"
        );
    }

    // A screenshot, kept as an artifact for a person to look at.
    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report.png");
    let shot = headless(
        &profile,
        &[
            "--window-size=1200,2600",
            &format!("--screenshot={}", png.display()),
            &page,
        ],
    );
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = std::fs::read(&png).expect("a screenshot was written");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "a real PNG"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&profile);
}

/// After a rush over two servers, each server's /metrics is valid
/// Prometheus text, and their purchase counters add up to the database's
/// order count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_agree_with_the_database() {
    let spec = ServerSpec::new(1, "mutex");
    let (servers, database) = servers(&spec, 2).await;

    let report = rush(&plan(&servers, &database)).await.unwrap();

    let mut created = 0.0;
    let mut answered = 0.0;
    for server in &servers {
        let text = reqwest::get(format!("{}/metrics", server.url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_valid_prometheus_text(&text);
        created += ticket_core::metrics::sum_samples(
            &text,
            "ticket_rush_purchases_total",
            Some("outcome=\"created\""),
        );
        answered += ticket_core::metrics::sum_samples(&text, "ticket_rush_purchases_total", None);
    }
    assert_eq!(created as i64, report.db_orders);
    assert_eq!(answered as u64, report.attempts);
    stop(servers).await;
}

/// Every sample line is `name{labels} value` with a known metric family,
/// and the exposition ends with `# EOF`.
fn assert_valid_prometheus_text(text: &str) {
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let mut families = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.push(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name: {line}"
        );
        assert!(
            families.iter().any(|f| name.starts_with(f.as_str())),
            "sample without a family: {line}"
        );
        if let Some(labels) = series.split_once('{').map(|(_, l)| l) {
            assert!(labels.ends_with('}'), "unclosed labels: {line}");
        }
    }
    for family in [
        "ticket_rush_purchases",
        "ticket_rush_purchase_duration_seconds",
        "ticket_rush_lock_wait_seconds",
        "ticket_rush_db_pool_connections",
    ] {
        assert!(families.iter().any(|f| f == family), "missing {family}");
    }
}

fn section<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in the page"));
    let to = text[from..].find(end).map_or(text.len(), |i| from + i);
    &text[from..to]
}

fn cells(row: &str) -> Vec<String> {
    row.split("<td")
        .skip(1)
        .map(|cell| {
            let inner = cell.split_once('>').map_or("", |(_, rest)| rest);
            inner.split("</td>").next().unwrap_or("").trim().to_owned()
        })
        .collect()
}

fn tempdir(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ticket-rush-test-{kind}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

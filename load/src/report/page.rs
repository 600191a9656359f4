//! The report's HTML page: tables, inlined plots, the machine. One file,
//! no script, no external style: it opens offline and prints as it shows.

use std::fmt::Write as _;

use super::{ReportData, ReportRow};

/// The page's style. The `@media print` block keeps each table and plot
/// on one page, drops the grey backgrounds (a printer drops them anyway;
/// an unexpected row is then marked in bold and underlined) and lets the
/// plots shrink to the page's width, and a tall one (the latency panels)
/// to the page's height.
const STYLE: &str = r#"
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; font-size: 1.2rem; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; }
th:nth-child(-n+3), td:nth-child(-n+3) { text-align: left; }
td.correct { color: #1b7f3b; font-weight: 600; }
td.oversold, td.inconsistent, td.undersold { color: #b3261e; font-weight: 600; }
td.unexpected { background: #fde7e9; }
code { background: #f4f4f4; padding: 2px 4px; }
figure { margin: 1rem 0; }
figure svg { max-width: 100%; height: auto; }
@media print {
  body { margin: 0; max-width: none; font-size: 10pt; }
  code, td.unexpected { background: none; }
  td.unexpected { font-weight: 700; text-decoration: underline; }
  table, figure { break-inside: avoid; page-break-inside: avoid; }
  figure svg { max-height: 180mm; width: auto; }
  h2 { break-after: avoid; page-break-after: avoid; }
  @page { size: A4 landscape; margin: 12mm; }
}
"#;

/// The whole page.
pub(super) fn html(data: &ReportData, plots: &[(&str, &str, String)]) -> String {
    let mut out = head(data);
    comparison_table(&mut out, data);
    ceilings_table(&mut out, data);
    super::cost::section(&mut out, data);
    for (file, title, svg) in plots {
        let id = file.trim_end_matches(".svg");
        let _ = write!(
            out,
            "<h2>{title}</h2>\n<figure class=\"plot\" id=\"plot-{id}\">\n{}\n</figure>\n",
            strip_xml_declaration(svg)
        );
    }
    machine_table(&mut out, data);
    out.push_str("</body></html>\n");
    out
}

fn head(data: &ReportData) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{STYLE}</style></head><body>
<h1>{title}</h1>
<p>Every verdict comes from the database, not from HTTP answers. Reproduce with <code>{command}</code>.</p>
<p id="settings">Measured with {settings}.</p>
"#,
        title = escape(&data.title),
        command = escape(&data.command),
        settings = escape(&data.machine.settings_line())
    )
}

fn comparison_table(out: &mut String, data: &ReportData) {
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
        comparison_row(out, row, sustained);
    }
    out.push_str("</tbody></table>\n");
}

fn comparison_row(out: &mut String, row: &ReportRow, sustained: bool) {
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
            let ratio = r
                .ratio_to(name)
                .map_or_else(|| "–".to_owned(), |x| format!("{x:.2}"));
            let _ = write!(out, "<td>{ratio}</td>");
        }
    }
    out.push_str("</tr>\n");
}

fn ceilings_table(out: &mut String, data: &ReportData) {
    if data.ceilings.is_empty() {
        return;
    }
    out.push_str(
        "<h2>Ceilings measured in the same run</h2>\n<table id=\"ceilings\"><thead><tr>\
         <th>ceiling</th><th>measured at</th><th>ops/s</th><th>p50 ms</th><th>p99 ms</th>\
         </tr></thead><tbody>\n",
    );
    for c in &data.ceilings {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.2}</td><td>{:.2}</td></tr>",
            escape(&c.name),
            escape(&c.shape()),
            c.ops_per_sec,
            c.latency_ms.p50,
            c.latency_ms.p99
        );
    }
    out.push_str("</tbody></table>\n");
}

fn machine_table(out: &mut String, data: &ReportData) {
    let m = &data.machine;
    let _ = writeln!(
        out,
        "<h2>Machine</h2>\n<table id=\"machine\"><tbody>\
         <tr><td>CPU</td><td>{}</td></tr><tr><td>cores</td><td>{}</td></tr>\
         <tr><td>memory</td><td>{} MiB</td></tr><tr><td>kernel</td><td>{}</td></tr>\
         <tr><td>PostgreSQL</td><td>{}</td></tr><tr><td>Redis</td><td>{}</td></tr>\
         <tr><td>load</td><td>{}</td></tr></tbody></table>",
        escape(&m.cpu),
        m.cores,
        m.memory_mib,
        escape(&m.kernel),
        escape(&m.postgres),
        escape(m.redis.as_deref().unwrap_or("not used")),
        escape(&m.load_version)
    );
}

/// Escapes text for HTML.
pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn strip_xml_declaration(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(start) => &svg[start..],
        None => svg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_prints_with_tables_and_plots_kept_whole() {
        let print = &STYLE[STYLE.find("@media print").expect("a print style")..];
        assert!(print.contains("break-inside: avoid"), "{print}");
        assert!(print.contains("@page"), "{print}");
        assert!(STYLE.contains("figure svg { max-width: 100%"), "{STYLE}");
        assert!(print.contains("figure svg { max-height: 180mm"), "{print}");
    }
}

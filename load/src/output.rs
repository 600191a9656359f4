//! Turning reports into text a person reads at a terminal (or a projector).

use std::fmt::Write as _;

use ticket_core::Verdict;

use crate::model::{Ceiling, Report};
use crate::run::RushSettings;
use crate::tour::TourRow;

/// A short block describing one rush.
pub fn render_report(report: &Report, round: Option<u32>) -> String {
    let mut out = String::new();
    title_line(&mut out, report, round);
    answers_lines(&mut out, report);
    truth_lines(&mut out, report);
    speed_lines(&mut out, report);
    resource_lines(&mut out, report);
    cpu_lines(&mut out, report);
    out
}

/// CPU µs per sale by process, and the ratio to the strategy's floor.
fn cpu_lines(out: &mut String, report: &Report) {
    let Some(cpu) = &report.cpu else { return };
    let parts: Vec<String> = cpu
        .processes
        .iter()
        .map(|p| match p.us_per_op {
            Some(us) => format!("{} {us:.1}", p.name),
            None => format!("{} not measured", p.name),
        })
        .collect();
    let _ = writeln!(out, "  cpu µs per sale {}", parts.join("  ·  "));
    if let Some(floor) = &report.cpu_floor {
        let ratio = floor
            .ratio
            .map_or_else(|| "not measured".to_owned(), |r| format!("{r:.2}"));
        let _ = writeln!(
            out,
            "  cpu vs floor    {ratio} of {:.1} µs ({})",
            floor.total_us,
            floor
                .parts
                .iter()
                .map(|p| format!("{} x {}", p.times, p.ceiling))
                .collect::<Vec<_>>()
                .join(" + ")
        );
    }
}

/// What ran: level, strategy, servers, shape, round.
fn title_line(out: &mut String, report: &Report, round: Option<u32>) {
    let what = match (report.level, &report.strategy) {
        (Some(level), Some(strategy)) => format!("level {level} · {strategy}"),
        _ => "rush".to_owned(),
    };
    let think = report
        .think_time_ms
        .map(|t| format!(" · think time {t} ms"))
        .unwrap_or_default();
    let round = round.map(|r| format!(" · round {r}")).unwrap_or_default();
    let plural = if report.servers == 1 { "" } else { "s" };
    let plural = match &report.balancer {
        Some(balancer) => format!("{plural} behind {balancer} (one URL)"),
        None => plural.to_owned(),
    };
    if let Some(rate) = report.rate {
        let _ = writeln!(
            out,
            "{what} · {} server{plural} · open model, {rate} arrivals/s for {:.0} s · at most {} in flight{think}{round}",
            report.servers,
            report.elapsed_ms / 1000.0,
            report.buyers,
        );
    } else if report.mode == "sustained" {
        let _ = writeln!(
            out,
            "{what} · {} server{plural} · sustained {:.0} s · {} concurrent buyers{think}{round}",
            report.servers,
            report.elapsed_ms / 1000.0,
            report.buyers,
        );
    } else {
        let _ = writeln!(
            out,
            "{what} · {} server{plural} · {} buyers · {} tickets{think}{round}",
            report.servers, report.buyers, report.tickets
        );
    }
}

/// The HTTP answers, and the failures by kind.
fn answers_lines(out: &mut String, report: &Report) {
    let _ = writeln!(
        out,
        "  HTTP answers    201 created {}  ·  sold_out {}  ·  already_purchased {}  ·  busy (503) {}  ·  errors {}{}",
        report.succeeded,
        report.sold_out,
        report.already_purchased,
        report.busy,
        report.errors,
        if report.gave_up > 0 {
            format!("  ·  gave up {}", report.gave_up)
        } else {
            String::new()
        }
    );
    for (kind, failure) in &report.error_kinds {
        let _ = writeln!(
            out,
            "  errors: {kind:<9}{}  e.g. {}",
            failure.count, failure.sample
        );
    }
}

/// What the database holds, the identities, and the verdict.
fn truth_lines(out: &mut String, report: &Report) {
    let _ = writeln!(
        out,
        "  database truth  orders {}  ·  stock {}  ·  oversold {}  ·  duplicate orders {}",
        report.db_orders, report.db_stock, report.oversold, report.duplicate_orders
    );
    let _ = writeln!(
        out,
        "  identities      201 without a row {}  ·  rows without a 201 {}  ·  201s beyond the stock {}",
        report.answered_without_order, report.orders_without_answer, report.oversold_answers
    );
    let _ = writeln!(out, "  verdict         {}", verdict_label(report.verdict));
    for problem in &report.problems {
        let _ = writeln!(out, "                  - {problem}");
    }
}

/// Latency, elapsed time, throughput and the ceilings.
fn speed_lines(out: &mut String, report: &Report) {
    let l = report.latency_ms;
    let _ = writeln!(
        out,
        "  latency         p50 {:.1} ms  ·  p95 {:.1} ms  ·  p99 {:.1} ms  ·  max {:.1} ms",
        l.p50, l.p95, l.p99, l.max
    );
    if let Some(u) = report.latency_uncorrected_ms {
        let _ = writeln!(
            out,
            "  uncorrected     p50 {:.1} ms  ·  p95 {:.1} ms  ·  p99 {:.1} ms  ·  max {:.1} ms  (from the actual send, not the due time)",
            u.p50, u.p95, u.p99, u.max
        );
    }
    split_lines(out, report);
    let _ = writeln!(
        out,
        "  elapsed         {:.0} ms  ·  {:.0} requests/s  ·  {:.0} sales/s  ·  {} requests",
        report.elapsed_ms, report.throughput_rps, report.sales_per_sec, report.attempts
    );
    for ceiling in &report.ceilings {
        if let Some(ratio) = report.ratio_to(&ceiling.name) {
            let _ = writeln!(
                out,
                "  vs ceiling      {ratio:.2} of {} ({:.0} ops/s at {})",
                ceiling.name,
                ceiling.ops_per_sec,
                Ceiling::shape(ceiling)
            );
        }
    }
}

/// Where the buyers' latency went (rushes): each part's p50 and p99, and
/// what the slowest 1% waited for.
fn split_lines(out: &mut String, report: &Report) {
    let Some(split) = report.latency_split_ms else {
        return;
    };
    let [connect, queue, server] = split.slowest;
    let _ = writeln!(
        out,
        "  latency split   connect p50 {:.1} p99 {:.1}  ·  queue p50 {:.1} p99 {:.1}  ·  server p50 {:.1} p99 {:.1} ms",
        split.connect.p50, split.connect.p99, split.queue.p50, split.queue.p99, split.server.p50, split.server.p99
    );
    let _ = writeln!(
        out,
        "  server parts    sale p50 {:.1} p99 {:.1}  ·  idempotency key p50 {:.1} p99 {:.1} ms",
        split.sale.p50, split.sale.p99, split.idem.p50, split.idem.p99
    );
    let _ = writeln!(
        out,
        "  slowest 1%      connect {connect:.1}  ·  queue {queue:.1}  ·  server {server:.1} ms on average  ·  {} connections opened after the start  ·  {} answers timed",
        split.connections_opened, split.timed_answers
    );
}

/// Memory, persistence lag and the servers' own events.
fn resource_lines(out: &mut String, report: &Report) {
    if let Some(memory) = &report.memory {
        let servers: Vec<String> = memory
            .servers_peak_rss_mib
            .iter()
            .map(|m| format!("{m:.0} MiB"))
            .collect();
        let _ = writeln!(
            out,
            "  peak memory     load {:.0} MiB  ·  servers {}",
            memory.load_peak_rss_mib,
            if servers.is_empty() {
                "-".to_owned()
            } else {
                servers.join(", ")
            }
        );
    }
    if let Some(lag) = report.persistence_lag_ms {
        let _ = writeln!(
            out,
            "  persistence lag {lag:.0} ms (last 201 to last order row in PostgreSQL)"
        );
    }
    let events: Vec<String> = report
        .server_metrics
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("event:").map(|e| format!("{e} {v}")))
        .collect();
    if !events.is_empty() {
        let _ = writeln!(out, "  server events   {}", events.join("  ·  "));
    }
}

/// The verdict in capitals, so that it stands out.
pub fn verdict_label(verdict: Verdict) -> String {
    verdict.as_str().to_uppercase()
}

/// The tour table's header (`sustained`: the throughput columns).
pub fn tour_header(sustained: bool) -> String {
    if sustained {
        return format!(
            "{:<5} {:<13} {:>7} {:<12} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  {}\n{}",
            "level",
            "strategy",
            "servers",
            "observed",
            "sales/s",
            "vs pg",
            "vs http",
            "p50 ms",
            "p99 ms",
            "busy",
            "retries",
            "",
            "-".repeat(112)
        );
    }
    format!(
        "{:<5} {:<13} {:>7} {:>6} {:<12} {:<12} {:>6} {:>5} {:>5} {:>6} {:>8} {:>8} {:>8} {:>7}  {}\n{}",
        "level",
        "strategy",
        "servers",
        "think",
        "expected",
        "observed",
        "orders",
        "stock",
        "201s",
        "busy",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "req/s",
        "",
        "-".repeat(128)
    )
}

/// One tour row (the worst round's figures when there are several).
pub fn tour_row(row: &TourRow) -> String {
    // Show the round that disagrees with the expectation, if any, else the last.
    let shown = row
        .rounds
        .iter()
        .find(|r| r.verdict != row.expected)
        .or(row.rounds.last());
    let Some(r) = shown else {
        return String::new();
    };
    if r.mode == "sustained" {
        let ratio = |name: &str| {
            r.ratio_to(name)
                .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
        };
        let retries = r.server_metrics.get("event:retry").copied().unwrap_or(0.0);
        return format!(
            "{:<5} {:<13} {:>7} {:<12} {:>9.0} {:>8} {:>8} {:>8.1} {:>8.1} {:>8} {:>8}  {}",
            row.level,
            row.strategy,
            row.servers,
            r.verdict.to_string(),
            r.sales_per_sec,
            ratio("postgres_purchase"),
            ratio("http_noop"),
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.busy,
            retries,
            if row.as_expected { "" } else { "UNEXPECTED" }
        );
    }
    let observed = if row.rounds.len() > 1 {
        let agree = row.rounds.iter().filter(|x| x.verdict == r.verdict).count();
        format!("{} {agree}/{}", r.verdict, row.rounds.len())
    } else {
        r.verdict.to_string()
    };
    format!(
        "{:<5} {:<13} {:>7} {:>6} {:<12} {:<12} {:>6} {:>5} {:>5} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>7.0}  {}",
        row.level,
        row.strategy,
        row.servers,
        row.think_time_ms,
        row.expected.to_string(),
        observed,
        r.db_orders,
        r.db_stock,
        r.succeeded,
        r.busy,
        r.latency_ms.p50,
        r.latency_ms.p95,
        r.latency_ms.p99,
        r.throughput_rps,
        if row.as_expected { "as expected" } else { "UNEXPECTED" }
    )
}

/// The ceilings of a sustained run, one line each.
pub fn ceilings_table(ceilings: &[Ceiling]) -> String {
    let mut out = String::from(
        "ceilings, measured first in the same run (PostgreSQL: the better of as many \
         connections as buyers and as the servers' pools open):\n",
    );
    for c in ceilings {
        let _ = writeln!(
            out,
            "  {:<18} {:>9.0} ops/s  at {}  ·  p50 {:.2} ms  ·  p99 {:.2} ms  ·  errors {}",
            c.name,
            c.ops_per_sec,
            Ceiling::shape(c),
            c.latency_ms.p50,
            c.latency_ms.p99,
            c.errors
        );
    }
    out
}

/// The tour's CPU per sale table (see [`crate::report::cost`]), after a
/// blank line; empty when nothing was measured.
pub fn cpu_table(result: &crate::tour::Tour) -> String {
    let rows: Vec<(String, &Report)> = result
        .rows
        .iter()
        .filter_map(|row| {
            let shown = row.rounds.last()?;
            let label = format!("L{} {} ×{}", row.level, row.strategy, row.servers);
            Some((label, shown))
        })
        .collect();
    let ceilings = result
        .rows
        .first()
        .map_or(&[][..], |r| &r.rounds[0].ceilings[..]);
    match crate::report::cost::text_table(&rows, ceilings) {
        table if table.is_empty() => table,
        table => format!("\n{table}"),
    }
}

/// What the tour is about to do, and the table's header.
pub fn print_tour_intro(rush: &RushSettings) {
    match rush.sustained {
        None => println!(
            "ticket-rush tour: {} buyers race for {} tickets on every level and strategy, one server and two.\n\
             Every verdict comes from the database.\n",
            rush.buyers, rush.tickets
        ),
        Some(shape) => println!(
            "ticket-rush sustained tour: {} concurrent buyers buy for {} s on {servers} servers, per strategy.\n\
             Ceilings are measured first, in the same run: HTTP at {} concurrent on {servers} idle servers, \
             PostgreSQL at the connections shown below.\n",
            shape.concurrency,
            shape.duration.as_secs(),
            shape.concurrency,
            servers = crate::tour::SUSTAINED_TOUR_SERVERS,
        ),
    }
    println!("{}", tour_header(rush.sustained.is_some()));
}

/// The ceilings, the settings, and every row that was not as expected.
pub fn print_tour_summary(result: &crate::tour::Tour, rush: &RushSettings) {
    if let Some(ceilings) = result.rows.first().map(|r| &r.rounds[0].ceilings) {
        if !ceilings.is_empty() {
            println!("\n{}", ceilings_table(ceilings));
        }
    }
    print!("{}", cpu_table(result));
    println!("\nMeasured with {}.", result.machine.settings_line());
    println!();
    if let Some(booking) = result.booking.as_ref().filter(|b| !b.is_correct()) {
        println!(
            "UNEXPECTED: level 5 booking: {}",
            booking.problems.join("; ")
        );
    }
    let unexpected: Vec<_> = result.rows.iter().filter(|r| !r.as_expected).collect();
    let booking_ok = result.booking.as_ref().is_none_or(|b| b.is_correct());
    if unexpected.is_empty() && booking_ok {
        if rush.sustained.is_some() {
            println!("Every strategy meant to be correct stayed correct under sustained load.");
        } else {
            println!("Every strategy showed what its level teaches: races reproduced where expected, and every correct strategy sold exactly {} tickets.", rush.tickets);
        }
        return;
    }
    for row in unexpected {
        let got = row
            .rounds
            .iter()
            .find(|r| r.verdict != row.expected)
            .map(|r| r.verdict);
        println!(
            "UNEXPECTED: level {} {} on {} server(s): expected {}, got {}",
            row.level,
            row.strategy,
            row.servers,
            verdict_label(row.expected),
            got.map(verdict_label).unwrap_or_default()
        );
    }
}

//! What `load booking` reports: the contract's fields
//! (`../shared/BOX_OFFICE.md`, "Load: `load booking`"), a few more that say
//! why, the verdict, and the text table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::record::{Outcome, Recorded, Step};
use super::verdict::{DbTruth, Money};

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
    /// How many were measured.
    pub count: u64,
}

impl Percentiles {
    /// The percentiles of a histogram in microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            p50: ms(0.50),
            p95: ms(0.95),
            p99: ms(0.99),
            max: h.max() as f64 / 1000.0,
            count: h.len(),
        }
    }
}

/// The waiting room, as measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueReport {
    /// Whether users went through the waiting room.
    pub enabled: bool,
    /// The most admitted-and-unfinished users at once, as the servers
    /// recorded it (`None` when they expose nothing to read it from).
    pub max_active: Option<i64>,
    /// Where `max_active` was read.
    pub max_active_source: String,
    /// The servers' `--active-limit`.
    pub active_limit: Option<u32>,
    /// Admissions out of number order in the waiting room's own log
    /// (when readable), else as seen by the users.
    pub fifo_violations: u64,
    /// Users told `admitted` while a user ahead of them was, by a request
    /// sent later, still told `waiting`.
    pub fifo_violations_seen_by_users: u64,
    /// Where `fifo_violations` came from.
    pub fifo_source: String,
}

/// Everything a booking run measured; `--json` prints it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BookingReport {
    /// Users who tried to book.
    pub users: usize,
    /// Seats on sale.
    pub seats: i64,
    /// The servers' hold strategy.
    pub strategy: String,
    /// Servers the users were dealt over.
    pub servers: usize,
    /// The show's id.
    pub show_id: i64,
    /// Users admitted (all of them when the queue is off).
    pub admitted: u64,
    /// Holds in the database.
    pub holds: i64,
    /// Payments in the database.
    pub payments: i64,
    /// Holds that expired.
    pub expired_holds: i64,
    /// Seats a paid hold owns.
    pub seats_sold: i64,
    /// Seats of expired holds back on sale (or resold).
    pub seats_available_after_expiry: i64,
    /// Seats in two live holds.
    pub double_sold_seats: i64,
    /// The money.
    pub money: Money,
    /// The waiting room.
    pub queue: QueueReport,
    /// Per-request latency: `queue` (joins and polls), `hold`, `pay`, and
    /// every other step by name.
    pub latency_ms: BTreeMap<String, Percentiles>,
    /// From joining the queue to being admitted.
    pub queue_wait_ms: Percentiles,
    /// From the first user's start to the last user's end.
    pub elapsed_ms: f64,
    /// Waiting, after the users, for the sweepers to expire abandoned holds.
    pub expiry_wait_ms: f64,
    /// Users per outcome (`paid`, `walked_away`, `no_seats`...).
    pub outcomes: BTreeMap<Outcome, u64>,
    /// Holds refused `seats_unavailable` (users then tried other seats).
    pub seats_unavailable: u64,
    /// 503 answers (users tried again).
    pub busy: u64,
    /// Requests sent to another server because theirs did not answer.
    pub failovers: u64,
    /// Users whose journey ended in an error.
    pub errors: u64,
    /// One sample per kind of error.
    pub error_samples: BTreeMap<String, String>,
    /// Every figure the database gave.
    pub db: DbTruth,
    /// `correct`, or the first problem's kind.
    pub verdict: String,
    /// Every problem found, in words.
    pub problems: Vec<String>,
}

impl BookingReport {
    /// The report's latency, outcome and error fields from what users saw.
    pub fn observe(&mut self, seen: &Recorded) {
        let mut queue = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
        for step in [Step::Join, Step::Poll] {
            if let Some(h) = seen.latency.get(&step) {
                queue.add(h).expect("same bounds");
            }
        }
        self.latency_ms
            .insert("queue".to_owned(), Percentiles::of(&queue));
        for (step, h) in &seen.latency {
            self.latency_ms
                .insert(step.name().to_owned(), Percentiles::of(h));
        }
        self.queue_wait_ms = Percentiles::of(&seen.queue_wait);
        self.outcomes = seen.outcomes.clone();
        self.seats_unavailable = seen.seats_unavailable;
        self.busy = seen.busy;
        self.failovers = seen.failovers;
        self.errors = seen.outcomes.get(&Outcome::Error).copied().unwrap_or(0);
        self.error_samples = seen.samples.clone();
    }

    /// The database's figures, copied to the contract's top-level fields.
    pub fn settle(&mut self, db: DbTruth) {
        self.holds = db.holds;
        self.payments = db.payments;
        self.expired_holds = db.expired_holds;
        self.seats_sold = db.seats_sold;
        self.seats_available_after_expiry = db.seats_available_after_expiry;
        self.double_sold_seats = db.double_sold_seats;
        self.money = db.money;
        self.db = db;
    }

    /// Judges: `correct` when no check failed, else the first failure's kind.
    pub fn judge(&mut self) {
        let db = &self.db;
        let q = &self.queue;
        let over_limit = match (q.max_active, q.active_limit) {
            (Some(max), Some(limit)) => max > i64::from(limit),
            _ => false,
        };
        let checks: [(&str, bool, String); 8] = [
            ("double_sold", db.double_sold_seats > 0, format!("{} seats belong to two live holds", db.double_sold_seats)),
            ("money_not_conserved", !db.money.conserved, format!("{} users' charges differ from balance + payments", db.money.users_not_conserved)),
            ("paid_hold_inconsistent", db.paid_holds_inconsistent + db.payments_of_unpaid_holds + db.paid_identity_mismatches > 0,
             format!("{} paid holds lack their seats or one payment of their amount, {} payments of holds not paid, {} paid holds differ from the users answered 201", db.paid_holds_inconsistent, db.payments_of_unpaid_holds, db.paid_identity_mismatches)),
            ("hold_not_expired", db.held_holds + db.abandoned_not_expired + db.seats_stuck_in_expired_holds > 0,
             format!("{} holds still held, {} abandoned holds not expired, {} seats still owned by an ended hold", db.held_holds, db.abandoned_not_expired, db.seats_stuck_in_expired_holds)),
            ("active_limit_exceeded", over_limit, format!("{:?} users active at once, above the limit {:?}", q.max_active, q.active_limit)),
            ("fifo_violated", q.fifo_violations + q.fifo_violations_seen_by_users > 0, format!("{} admissions out of order ({}), {} seen by users", q.fifo_violations, q.fifo_source, q.fifo_violations_seen_by_users)),
            ("active_limit_unknown", q.enabled && q.max_active.is_none(), "the servers expose no record of admitted users at once: the active limit cannot be checked".to_owned()),
            ("errors", self.errors > 0, format!("{} users ended in an error: {:?}", self.errors, self.error_samples)),
        ];
        self.problems = checks
            .iter()
            .filter(|(_, failed, _)| *failed)
            .map(|(kind, _, words)| format!("{kind}: {words}"))
            .collect();
        self.verdict = checks
            .iter()
            .find(|(_, failed, _)| *failed)
            .map_or("correct", |(kind, _, _)| kind)
            .to_owned();
    }

    /// Whether the verdict is `correct`.
    pub fn is_correct(&self) -> bool {
        self.verdict == "correct"
    }
}

/// The report as a text table.
pub fn render(r: &BookingReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "load booking: {} users, {} seats, strategy {}, {} server(s), show {}",
        r.users, r.seats, r.strategy, r.servers, r.show_id
    );
    let outcomes: Vec<String> = r
        .outcomes
        .iter()
        .map(|(o, n)| format!("{o:?} {n}"))
        .collect();
    let _ = writeln!(out, "  users          {}", outcomes.join(", "));
    let _ = writeln!(
        out,
        "  queue          {}; admitted {}; max active {} (limit {}, {}); FIFO violations {}",
        if r.queue.enabled { "on" } else { "off" },
        r.admitted,
        r.queue.max_active.map_or("?".to_owned(), |m| m.to_string()),
        r.queue
            .active_limit
            .map_or("-".to_owned(), |l| l.to_string()),
        if r.queue.max_active_source.is_empty() {
            "no source"
        } else {
            &r.queue.max_active_source
        },
        r.queue.fifo_violations
    );
    let _ = writeln!(
        out,
        "  database       holds {}, payments {}, expired {}, seats sold {}, given back after expiry {}, double-sold {}",
        r.holds, r.payments, r.expired_holds, r.seats_sold, r.seats_available_after_expiry, r.double_sold_seats
    );
    let m = &r.money;
    let _ = writeln!(
        out,
        "  money          charged {} = balances {} + paid {}: {}",
        m.charged,
        m.balances,
        m.paid,
        if m.conserved {
            "conserved for every user"
        } else {
            "NOT conserved"
        }
    );
    let _ = writeln!(
        out,
        "  retries        seats_unavailable {}, 503 busy {}, failovers {}",
        r.seats_unavailable, r.busy, r.failovers
    );
    latency_table(&mut out, r);
    let _ = writeln!(
        out,
        "  elapsed        {:.0} ms (then {:.0} ms waiting for expiry)",
        r.elapsed_ms, r.expiry_wait_ms
    );
    let _ = writeln!(out, "  verdict        {}", r.verdict);
    for problem in &r.problems {
        let _ = writeln!(out, "    - {problem}");
    }
    out
}

/// The latency rows of the table: each step, the queue, the queue wait.
fn latency_table(out: &mut String, r: &BookingReport) {
    let _ = writeln!(
        out,
        "  latency ms     {:>8} {:>8} {:>8} {:>8} {:>8}",
        "p50", "p95", "p99", "max", "count"
    );
    for step in Step::ALL.iter().map(|s| s.name()).chain(["queue"]) {
        if let Some(p) = r.latency_ms.get(step).filter(|p| p.count > 0) {
            let _ = writeln!(
                out,
                "    {step:<12} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8}",
                p.p50, p.p95, p.p99, p.max, p.count
            );
        }
    }
    let w = &r.queue_wait_ms;
    if w.count > 0 {
        let _ = writeln!(
            out,
            "    {:<12} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8}",
            "queue wait", w.p50, w.p95, w.p99, w.max, w.count
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean() -> BookingReport {
        let mut r = BookingReport::default();
        r.db.money.conserved = true;
        r.queue = QueueReport {
            enabled: true,
            max_active: Some(100),
            active_limit: Some(100),
            ..QueueReport::default()
        };
        r
    }

    #[test]
    fn a_run_with_nothing_wrong_is_correct() {
        let mut r = clean();
        r.judge();
        assert_eq!(r.verdict, "correct", "{:?}", r.problems);
    }

    /// A verdict and the one fault that should earn it.
    type Case = (&'static str, fn(&mut BookingReport));

    #[test]
    fn each_broken_invariant_gives_its_own_verdict() {
        let cases: [Case; 7] = [
            ("double_sold", |r| r.db.double_sold_seats = 2),
            ("money_not_conserved", |r| r.db.money.conserved = false),
            ("paid_hold_inconsistent", |r| {
                r.db.paid_identity_mismatches = 1
            }),
            ("hold_not_expired", |r| r.db.abandoned_not_expired = 1),
            ("active_limit_exceeded", |r| r.queue.max_active = Some(101)),
            ("fifo_violated", |r| r.queue.fifo_violations = 1),
            ("active_limit_unknown", |r| r.queue.max_active = None),
        ];
        for (verdict, breaks) in cases {
            let mut r = clean();
            breaks(&mut r);
            r.judge();
            assert_eq!(r.verdict, verdict, "{:?}", r.problems);
            assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        }
    }
}

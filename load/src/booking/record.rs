//! What the users saw, gathered while they run: latency per step, the
//! holds and payments they were answered (identities, for the verdict), and
//! their queue observations (for the FIFO check and the report's timeline).
//!
//! The verdict never trusts these numbers alone: it compares them with the
//! database ([`super::verdict`]). They say what users were *told*; the
//! database says what *happened*.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A step of the booking journey, for latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// `POST /queue`.
    Join,
    /// `GET /queue/{token}`.
    Poll,
    /// `GET /shows/{id}/seats`.
    SeatMap,
    /// `POST /shows/{id}/holds`.
    Hold,
    /// `GET /wallets/{id}` and `POST /wallets/{id}/charges`.
    Charge,
    /// `POST /holds/{id}/payments`.
    Pay,
}

impl Step {
    /// Every step, in journey order.
    pub const ALL: [Step; 6] = [
        Step::Join,
        Step::Poll,
        Step::SeatMap,
        Step::Hold,
        Step::Charge,
        Step::Pay,
    ];

    /// Its name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Step::Join => "join",
            Step::Poll => "poll",
            Step::SeatMap => "seat_map",
            Step::Hold => "hold",
            Step::Charge => "charge",
            Step::Pay => "pay",
        }
    }
}

/// How one user's journey ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Held seats and paid for them.
    Paid,
    /// Held seats and walked away (the hold must expire).
    WalkedAway,
    /// Admitted, but every seat they tried was taken (or none was left).
    NoSeats,
    /// The queue token expired before they got in.
    QueueExpired,
    /// A hold they held ran out before the payment (410 `hold_expired`).
    HoldExpired,
    /// An answer nothing in the contract explains, or no server answered.
    Error,
}

/// One user's place in the queue, as they observed it (ms since the start).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QueueSighting {
    /// Their `number`.
    pub number: i64,
    /// When they joined.
    pub joined_ms: f64,
    /// The latest *send* time of a request that was answered `waiting`.
    pub last_waiting_sent_ms: Option<f64>,
    /// The earliest *receive* time of an answer saying `admitted`.
    pub admitted_seen_ms: Option<f64>,
}

/// A hold a user was answered 201 for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSeats {
    /// The hold's id.
    pub hold_id: i64,
    /// Its user.
    pub user_id: i64,
    /// Its seats.
    pub seats: Vec<i32>,
    /// How the user's journey with it ended.
    pub outcome: Outcome,
}

/// Everything the users saw; shared by every user task.
pub struct Recorder {
    start: Instant,
    start_unix_ms: f64,
    latency: Mutex<BTreeMap<Step, Histogram<u64>>>,
    queue_wait: Mutex<Histogram<u64>>,
    sightings: Mutex<Vec<QueueSighting>>,
    holds: Mutex<Vec<HeldSeats>>,
    outcomes: Mutex<BTreeMap<Outcome, u64>>,
    /// Finishing times (ms) and seats paid, for the report's timeline.
    finished: Mutex<Vec<(f64, Outcome)>>,
    /// The first failure of each kind, to show the user.
    samples: Mutex<BTreeMap<String, String>>,
    /// Holds refused with `seats_unavailable` (the user tried other seats).
    pub seats_unavailable: AtomicU64,
    /// 503 `busy` answers (the user tried again).
    pub busy: AtomicU64,
    /// Requests that went to another server because theirs did not answer.
    pub failovers: AtomicU64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Locks a std mutex, ignoring poison (a panicked user leaves the numbers valid).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorder {
    /// An empty record whose clock starts now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            start_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            latency: Mutex::new(Step::ALL.iter().map(|s| (*s, histogram())).collect()),
            queue_wait: Mutex::new(histogram()),
            sightings: Mutex::default(),
            holds: Mutex::default(),
            outcomes: Mutex::default(),
            finished: Mutex::default(),
            samples: Mutex::default(),
            seats_unavailable: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
        }
    }

    /// The start as Unix time in ms, to place database timestamps on the
    /// run's clock.
    pub fn start_unix_ms(&self) -> f64 {
        self.start_unix_ms
    }

    /// Milliseconds since the start, on the run's one clock.
    pub fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }

    /// One request of `step` took `took`.
    pub fn latency(&self, step: Step, took: Duration) {
        if let Some(h) = lock(&self.latency).get_mut(&step) {
            h.saturating_record(took.as_micros().max(1) as u64);
        }
    }

    /// A user waited `waited` from joining to being admitted.
    pub fn queue_wait(&self, waited: Duration) {
        lock(&self.queue_wait).saturating_record(waited.as_micros().max(1) as u64);
    }

    /// A user's queue observations, once they stopped polling.
    pub fn sighting(&self, sighting: QueueSighting) {
        lock(&self.sightings).push(sighting);
    }

    /// A hold the user was answered 201 for, and how it ended.
    pub fn hold(&self, held: HeldSeats) {
        lock(&self.holds).push(held);
    }

    /// A user's journey ended.
    pub fn finish(&self, outcome: Outcome) {
        *lock(&self.outcomes).entry(outcome).or_default() += 1;
        let now = self.now_ms();
        lock(&self.finished).push((now, outcome));
    }

    /// A failure the report shows one sample of per kind.
    pub fn failure(&self, kind: &str, sample: impl FnOnce() -> String) {
        lock(&self.samples)
            .entry(kind.to_owned())
            .or_insert_with(sample);
    }

    /// How many users ended `outcome` so far.
    pub fn count(&self, outcome: Outcome) -> u64 {
        lock(&self.outcomes).get(&outcome).copied().unwrap_or(0)
    }

    /// Copies everything out, for the verdict and the report.
    pub fn snapshot(&self) -> Recorded {
        Recorded {
            latency: lock(&self.latency).clone(),
            queue_wait: lock(&self.queue_wait).clone(),
            sightings: lock(&self.sightings).clone(),
            holds: lock(&self.holds).clone(),
            outcomes: lock(&self.outcomes).clone(),
            finished: lock(&self.finished).clone(),
            samples: lock(&self.samples).clone(),
            seats_unavailable: self.seats_unavailable.load(Ordering::Relaxed),
            busy: self.busy.load(Ordering::Relaxed),
            failovers: self.failovers.load(Ordering::Relaxed),
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// A copy of what the users saw.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Per-request latency by step (µs).
    pub latency: BTreeMap<Step, Histogram<u64>>,
    /// Join to admission (µs).
    pub queue_wait: Histogram<u64>,
    /// Every user's queue observations.
    pub sightings: Vec<QueueSighting>,
    /// Every hold answered 201.
    pub holds: Vec<HeldSeats>,
    /// Users per outcome.
    pub outcomes: BTreeMap<Outcome, u64>,
    /// When each user finished, and how.
    pub finished: Vec<(f64, Outcome)>,
    /// One failure sample per kind.
    pub samples: BTreeMap<String, String>,
    /// Holds refused `seats_unavailable`.
    pub seats_unavailable: u64,
    /// 503 answers.
    pub busy: u64,
    /// Requests that failed over to another server.
    pub failovers: u64,
}

/// FIFO violations seen by the users: users told `admitted` while a user
/// with a smaller number was, *later*, still told `waiting`.
///
/// Only what is certain counts: Y's `waiting` answer came to a request
/// *sent after* X had *received* its `admitted`, so at that instant the
/// servers held X admitted and Y (ahead of X) waiting. Two answers whose
/// requests overlapped prove nothing and are not counted.
pub fn fifo_violations(sightings: &[QueueSighting]) -> u64 {
    let mut by_number: Vec<&QueueSighting> = sightings.iter().collect();
    by_number.sort_by_key(|s| s.number);
    let mut latest_waiting_ahead = f64::NEG_INFINITY;
    let mut violations = 0;
    let mut i = 0;
    while i < by_number.len() {
        // Users with the same number (there should be none) are not "ahead".
        let mut j = i;
        while j < by_number.len() && by_number[j].number == by_number[i].number {
            if let Some(admitted) = by_number[j].admitted_seen_ms {
                if latest_waiting_ahead > admitted {
                    violations += 1;
                }
            }
            j += 1;
        }
        for s in &by_number[i..j] {
            if let Some(waiting) = s.last_waiting_sent_ms {
                latest_waiting_ahead = latest_waiting_ahead.max(waiting);
            }
        }
        i = j;
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(number: i64, waiting: Option<f64>, admitted: Option<f64>) -> QueueSighting {
        QueueSighting {
            number,
            joined_ms: 0.0,
            last_waiting_sent_ms: waiting,
            admitted_seen_ms: admitted,
        }
    }

    #[test]
    fn a_later_number_admitted_while_an_earlier_one_still_waits_is_a_violation() {
        // 1 is still told "waiting" at 50 ms; 2 saw "admitted" at 40 ms.
        let sightings = [seen(1, Some(50.0), Some(60.0)), seen(2, None, Some(40.0))];
        assert_eq!(fifo_violations(&sightings), 1);
    }

    #[test]
    fn admission_in_number_order_or_overlapping_answers_are_not_violations() {
        let in_order = [
            seen(1, Some(10.0), Some(20.0)),
            seen(2, Some(25.0), Some(30.0)),
        ];
        assert_eq!(fifo_violations(&in_order), 0);
        // 1's waiting request was sent before 2 saw admitted: no proof.
        let overlapping = [seen(1, Some(35.0), Some(45.0)), seen(2, None, Some(40.0))];
        assert_eq!(fifo_violations(&overlapping), 0);
    }
}

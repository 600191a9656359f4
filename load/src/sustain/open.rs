//! The open model (`--rate R`): buyers *arrive* at a fixed rate, whether or
//! not earlier ones have been answered, as visitors of a real shop do.
//!
//! A closed model (N buyers, each buying again when answered) slows down
//! with the server: when the server stalls, nobody new arrives, and the
//! stall is measured once per buyer instead of once per visitor who would
//! have come meanwhile. That is *coordinated omission*. Here arrival `i` is
//! due at `start + i / rate`. At most `slots` requests are in flight (the
//! connections, as in wrk2); an arrival that finds none free waits, and its
//! latency is still measured from the time it was due: the latency a visitor
//! would have seen had the request been sent on schedule (wrk2's
//! correction, k6's constant-arrival-rate). The uncorrected latency, from
//! the moment the request actually left, is kept beside it to show the
//! difference.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

use super::closed::{attempt, Attempt, Person, Shared};
use super::Meter;

/// What an open run measured: the corrected meter (latency from the due
/// time) and the uncorrected latencies (from the actual send).
pub(super) struct OpenMeter {
    pub(super) meter: Meter,
    pub(super) uncorrected: Histogram<u64>,
}

impl OpenMeter {
    fn new() -> Self {
        Self {
            meter: Meter::new(),
            uncorrected: Meter::new().histogram,
        }
    }

    fn merge(&mut self, other: &OpenMeter) {
        self.meter.merge(&other.meter);
        let _ = self.uncorrected.add(&other.uncorrected);
    }
}

/// When arrival `index` is due, `rate` arrivals per second after `start`.
pub fn due_at(start: Instant, rate: f64, index: u64) -> Instant {
    start + Duration::from_secs_f64(index as f64 / rate)
}

/// How many arrivals a run of `duration` at `rate` has.
pub fn arrivals(rate: f64, duration: Duration) -> u64 {
    (rate * duration.as_secs_f64()).floor() as u64
}

/// Sends `arrivals(rate, duration)` purchases, arrival `i` due at
/// [`due_at`]`(started, rate, i)` and dealt round-robin over `urls`, with at
/// most `slots` in flight. A busy or failed visitor clicks again (with the
/// same key) until `deadline`.
pub(super) async fn arrive(
    urls: &[String],
    rate: f64,
    slots: usize,
    started: Instant,
    deadline: Instant,
    shared: Arc<Shared>,
) -> anyhow::Result<OpenMeter> {
    let clients = (0..urls.len())
        .map(|_| crate::client::pooled_client(slots))
        .collect::<reqwest::Result<Vec<_>>>()?;
    let free = Arc::new(Semaphore::new(slots.max(1)));
    let mut total = OpenMeter::new();
    let mut visits = tokio::task::JoinSet::new();
    for index in 0..arrivals(rate, deadline - started) {
        let due = due_at(started, rate, index);
        tokio::time::sleep_until(due.into()).await;
        // No free slot: this visitor waits, and the wait is in its latency.
        let slot = free.clone().acquire_owned().await?;
        let which = index as usize % urls.len();
        let (client, url) = (clients[which].clone(), urls[which].clone());
        let shared = shared.clone();
        visits.spawn(async move {
            let _slot = slot;
            visit(&client, &url, due, deadline, &shared).await
        });
        while let Some(done) = visits.try_join_next() {
            total.merge(&done.context("a visitor panicked")?);
        }
    }
    while let Some(done) = visits.join_next().await {
        total.merge(&done.context("a visitor panicked")?);
    }
    Ok(total)
}

/// One visitor, due at `due`: buys, clicking again while busy or failed.
async fn visit(
    client: &reqwest::Client,
    url: &str,
    due: Instant,
    deadline: Instant,
    shared: &Shared,
) -> OpenMeter {
    let mut measured = OpenMeter::new();
    let sent = Instant::now();
    let mut person = Person::next(shared);
    loop {
        let outcome = attempt(client, url, person.user, shared).await;
        if person.answered(outcome, &mut measured.meter) {
            break;
        }
        if Instant::now() >= deadline {
            person.finish(&mut measured.meter);
            break;
        }
        if outcome == Attempt::Busy {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    measured.meter.record(due.elapsed());
    let _ = measured
        .uncorrected
        .record(sent.elapsed().as_micros().max(1) as u64);
    measured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_due_on_a_fixed_schedule() {
        let start = Instant::now();
        assert_eq!(due_at(start, 100.0, 0), start);
        assert_eq!(
            due_at(start, 100.0, 250),
            start + Duration::from_millis(2500)
        );
        assert_eq!(arrivals(100.0, Duration::from_secs(3)), 300);
        assert_eq!(arrivals(0.5, Duration::from_secs(3)), 1);
    }
}

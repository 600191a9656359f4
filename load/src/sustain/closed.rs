//! The closed model: a fixed number of buyers, each buying again as soon
//! as it is answered. A buyer is a new person after every final answer; a
//! busy or failed person clicks again, with the same idempotency key.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ticket_core::api::input::IDEMPOTENCY_KEY;

use super::Meter;
use crate::client::buyer_client;
use crate::failures::Failures;
use crate::rush::idempotency_key;

/// What every worker of a sustained run shares.
pub(super) struct Shared {
    /// This run's number, in every idempotency key it sends; `None`: no keys.
    pub(super) run: Option<u64>,
    pub(super) next_user: AtomicI64,
    pub(super) counts: Counts,
    pub(super) failures: Failures,
    pub(super) last_success: std::sync::Mutex<Option<std::time::SystemTime>>,
}

impl Shared {
    /// A fresh run whose first person is `first_user`.
    pub(super) fn new(first_user: i64, keys: bool) -> Self {
        Self {
            run: keys.then(rand::random),
            next_user: AtomicI64::new(first_user),
            counts: Counts::default(),
            failures: Failures::default(),
            last_success: std::sync::Mutex::new(None),
        }
    }

    /// The next person to buy.
    pub(super) fn next_person(&self) -> i64 {
        self.next_user.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a 201 now, for the persistence lag.
    fn sold_now(&self) {
        let now = std::time::SystemTime::now();
        let mut last = self.last_success.lock().unwrap_or_else(|p| p.into_inner());
        *last = Some(last.map_or(now, |t| t.max(now)));
    }

    /// When the last 201 was answered.
    pub(super) fn last_success(&self) -> Option<std::time::SystemTime> {
        *self.last_success.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The run's answer counters.
#[derive(Default)]
pub(super) struct Counts {
    pub(super) attempts: AtomicU64,
    pub(super) succeeded: AtomicU64,
    pub(super) busy: AtomicU64,
    pub(super) conflicts: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) server_errors: AtomicU64,
}

/// What one attempt means for the person who made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attempt {
    /// 201: sold; the next buyer is someone new.
    Sold,
    /// 503: the same person clicks again, after a short pause.
    Busy,
    /// 409: a final answer other than 201; someone new next.
    Refused,
    /// A transport error or another status: the same person tries again.
    Failed,
}

/// Sends one purchase for `user` and counts its answer.
pub(super) async fn attempt(
    client: &reqwest::Client,
    url: &str,
    user: i64,
    shared: &Shared,
) -> Attempt {
    let counts = &shared.counts;
    let mut request = client.post(url);
    if let Some(run) = shared.run {
        // One key per person, the same on every click of theirs.
        request = request.header(IDEMPOTENCY_KEY, idempotency_key(run, user as u64));
    }
    let answer = request
        .json(&serde_json::json!({ "user_id": user }))
        .send()
        .await;
    counts.attempts.fetch_add(1, Ordering::Relaxed);
    let response = match answer {
        Ok(response) => response,
        Err(err) => {
            shared.failures.transport(url, &err);
            counts.errors.fetch_add(1, Ordering::Relaxed);
            return Attempt::Failed;
        }
    };
    let status = response.status().as_u16();
    let request_id = crate::rush::request_id_of(&response);
    let body = response.text().await.unwrap_or_default();
    let (counter, outcome) = match status {
        201 => {
            shared.sold_now();
            (&counts.succeeded, Attempt::Sold)
        }
        503 => (&counts.busy, Attempt::Busy),
        409 => (&counts.conflicts, Attempt::Refused),
        _ => {
            if (500..=599).contains(&status) {
                counts.server_errors.fetch_add(1, Ordering::Relaxed);
            }
            shared
                .failures
                .answer(url, status, request_id.as_deref(), &body);
            (&counts.errors, Attempt::Failed)
        }
    };
    counter.fetch_add(1, Ordering::Relaxed);
    outcome
}

/// Follows one person through their attempts, for the identity check.
pub(super) struct Person {
    pub(super) user: i64,
    failed: bool,
}

impl Person {
    /// The next person of the run.
    pub(super) fn next(shared: &Shared) -> Self {
        Self {
            user: shared.next_person(),
            failed: false,
        }
    }

    /// Records `attempt` in `meter`; true when this person is done (a
    /// final answer), false when they click again.
    pub(super) fn answered(&mut self, attempt: Attempt, meter: &mut Meter) -> bool {
        match attempt {
            Attempt::Sold => {
                meter.ok += 1;
                meter.answered.push(self.user);
                true
            }
            Attempt::Refused => {
                self.finish(meter);
                true
            }
            Attempt::Busy => false,
            Attempt::Failed => {
                self.failed = true;
                false
            }
        }
    }

    /// This person stops: the last answer they got was a failure, if so.
    pub(super) fn finish(&self, meter: &mut Meter) {
        if self.failed {
            meter.failed.push(self.user);
        }
    }
}

/// One worker: buys at `url` until `deadline`, a new person after every
/// final answer; a busy or failed person clicks again.
pub(super) async fn buy_until(url: String, deadline: Instant, shared: Arc<Shared>) -> Meter {
    let mut meter = Meter::new();
    let client = match buyer_client() {
        Ok(client) => client,
        Err(err) => {
            shared.failures.transport(&url, &err);
            shared.counts.errors.fetch_add(1, Ordering::Relaxed);
            meter.errors += 1;
            return meter;
        }
    };
    let mut person = Person::next(&shared);
    while Instant::now() < deadline {
        let t = Instant::now();
        let outcome = attempt(&client, &url, person.user, &shared).await;
        meter.record(t.elapsed());
        if outcome == Attempt::Busy {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if person.answered(outcome, &mut meter) {
            person = Person::next(&shared);
        }
    }
    person.finish(&mut meter);
    meter
}

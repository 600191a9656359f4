//! One user's journey through the box office, as a person clicks it:
//!
//! 1. join the waiting room (`POST /queue`) and poll `GET /queue/{token}`
//!    no sooner than the server says (`retry_after_ms`), until admitted;
//! 2. read the seat map and pick 1 to 4 seats, most people near the front;
//! 3. hold them; when some were taken (`seats_unavailable`), pick others, a
//!    few times, reading the map again after two refusals;
//! 4. top the wallet up if it is short (with an `Idempotency-Key`, so a
//!    retried charge is not charged twice);
//! 5. pay (most users) or walk away and let the hold expire.
//!
//! Every answer is recorded ([`Recorder`]); what the user was *told* is
//! later compared with what the database *holds*.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{json, Value};

use super::api::{Answer, Api, Call};
use super::record::{HeldSeats, Outcome, QueueSighting, Recorder, Step};

/// What every user shares.
#[derive(Clone)]
pub struct Journey {
    /// The servers.
    pub api: Api,
    /// What the users saw.
    pub recorder: Arc<Recorder>,
    /// The show on sale.
    pub show_id: i64,
    /// Whether to go through the waiting room.
    pub queue: bool,
    /// The share of users who pay (the rest walk away).
    pub pay_ratio: f64,
    /// Tries at holding seats before giving up.
    pub hold_attempts: u32,
    /// When every user must be done.
    pub deadline: Instant,
}

/// One user.
pub struct User {
    /// Their id.
    pub user_id: i64,
    /// The server they are dealt to (others are tried when it is down).
    pub home: usize,
    /// Their own random choices, repeatable from the run's seed.
    pub seed: u64,
}

/// Why a journey stopped early.
type Stop = Outcome;

/// Most 503 answers one request is retried after.
const MAX_BUSY: u32 = 50;

impl User {
    /// Walks the whole journey and records how it ended.
    pub async fn book(self, journey: &Journey) -> Outcome {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let outcome = match self.journey(journey, &mut rng).await {
            Ok(outcome) | Err(outcome) => outcome,
        };
        journey.recorder.finish(outcome);
        outcome
    }

    async fn journey(&self, j: &Journey, rng: &mut StdRng) -> Result<Outcome, Stop> {
        let token = if j.queue {
            Some(self.wait_in_queue(j, rng).await?)
        } else {
            None
        };
        let Some((hold_id, seats, amount)) = self.hold_seats(j, token.as_deref(), rng).await?
        else {
            return Ok(Outcome::NoSeats);
        };
        self.top_up(j, amount, rng).await?;
        let held = |outcome| HeldSeats {
            hold_id,
            user_id: self.user_id,
            seats: seats.clone(),
            outcome,
        };
        if !rng.random_bool(j.pay_ratio.clamp(0.0, 1.0)) {
            j.recorder.hold(held(Outcome::WalkedAway));
            return Ok(Outcome::WalkedAway);
        }
        let outcome = self.pay(j, token.as_deref(), hold_id, rng).await;
        let ended = match outcome {
            Ok(()) => Outcome::Paid,
            Err(stop) => stop,
        };
        j.recorder.hold(held(ended));
        Ok(ended)
    }

    /// Sends `call`, retrying 503 after the server's hint; records latency
    /// and failovers. A transport failure on every server, or a 5xx other
    /// than 503, ends the journey as an error.
    async fn call(&self, j: &Journey, call: &Call, rng: &mut StdRng) -> Result<Answer, Stop> {
        for _ in 0..MAX_BUSY {
            let (answer, server) = match j.api.send(self.home, call).await {
                Ok(answered) => answered,
                Err(err) => {
                    j.recorder.failure("transport", || err);
                    return Err(Outcome::Error);
                }
            };
            j.recorder.latency(call.step, answer.took);
            if server != self.home {
                j.recorder.failovers.fetch_add(1, Ordering::Relaxed);
            }
            // 409 request_in_progress: this payment's key is claimed by a
            // request still running, or by a server that died mid-request
            // (its claim lapses after the lease). Both mean "come back".
            match answer.status {
                503 | 409 if answer.status == 503 || answer.code() == "request_in_progress" => {
                    j.recorder.busy.fetch_add(1, Ordering::Relaxed);
                    let hint = answer.retry_after(Duration::from_millis(50));
                    tokio::time::sleep(hint.mul_f64(rng.random_range(0.5..1.5))).await;
                }
                500..=599 => {
                    let kind = format!("{} {}", answer.status, call.step.name());
                    j.recorder
                        .failure(&kind, || format!("{}: {}", call.path, answer.body));
                    return Err(Outcome::Error);
                }
                _ => return Ok(answer),
            }
        }
        j.recorder
            .failure("busy", || format!("{}: 503 {MAX_BUSY} times", call.path));
        Err(Outcome::Error)
    }

    /// An answer nothing in the contract explains: recorded, journey over.
    fn unexpected(&self, j: &Journey, step: Step, answer: &Answer) -> Stop {
        let kind = format!("{} {} {}", answer.status, step.name(), answer.code());
        j.recorder.failure(&kind, || answer.body.to_string());
        Outcome::Error
    }

    /// Joins the queue and polls until admitted; returns the token.
    async fn wait_in_queue(&self, j: &Journey, rng: &mut StdRng) -> Result<String, Stop> {
        let body = json!({ "user_id": self.user_id, "show_id": j.show_id });
        let joined_ms = j.recorder.now_ms();
        let answer = self
            .call(j, &Call::post(Step::Join, "/queue", body), rng)
            .await?;
        let (Some(token), Some(number)) = (
            answer.body["token"].as_str().map(str::to_owned),
            answer.body["number"].as_i64(),
        ) else {
            return Err(self.unexpected(j, Step::Join, &answer));
        };
        let mut sighting = QueueSighting {
            number,
            joined_ms,
            last_waiting_sent_ms: None,
            admitted_seen_ms: None,
        };
        let mut status = answer.body["status"].as_str().unwrap_or("").to_owned();
        let mut sent_ms = joined_ms;
        let mut hint = answer.retry_after(Duration::from_millis(500));
        let poll = Call::get(Step::Poll, format!("/queue/{token}"));
        loop {
            match status.as_str() {
                "admitted" => break,
                "waiting" => sighting.last_waiting_sent_ms = Some(sent_ms),
                "expired" => {
                    j.recorder.sighting(sighting);
                    return Err(Outcome::QueueExpired);
                }
                _ => return Err(self.unexpected(j, Step::Poll, &answer)),
            }
            if Instant::now() + hint > j.deadline {
                j.recorder.sighting(sighting);
                j.recorder.failure("queue timeout", || {
                    format!("user {} still waiting at the deadline", self.user_id)
                });
                return Err(Outcome::Error);
            }
            // Exactly as told: the server already spreads its hints, and a
            // client that polls sooner is what the hint exists to prevent.
            tokio::time::sleep(hint).await;
            sent_ms = j.recorder.now_ms();
            let answer = self.call(j, &poll, rng).await?;
            if answer.status != 200 {
                return Err(self.unexpected(j, Step::Poll, &answer));
            }
            status = answer.body["status"].as_str().unwrap_or("").to_owned();
            hint = answer.retry_after(Duration::from_millis(500));
        }
        let admitted_ms = j.recorder.now_ms();
        sighting.admitted_seen_ms = Some(admitted_ms);
        j.recorder.sighting(sighting);
        j.recorder.queue_wait(Duration::from_secs_f64(
            (admitted_ms - joined_ms).max(0.0) / 1000.0,
        ));
        Ok(token)
    }

    /// The seats on sale, `(seat, price)`, in seat order (front first).
    async fn seat_map(&self, j: &Journey, rng: &mut StdRng) -> Result<Vec<(i32, i64)>, Stop> {
        let call = Call::get(Step::SeatMap, format!("/shows/{}/seats", j.show_id));
        let answer = self.call(j, &call, rng).await?;
        let Some(seats) = answer.body["seats"].as_array() else {
            return Err(self.unexpected(j, Step::SeatMap, &answer));
        };
        Ok(seats
            .iter()
            .filter(|s| s["status"] == "available")
            .filter_map(|s| Some((s["seat"].as_i64()? as i32, s["price"].as_i64()?)))
            .collect())
    }

    /// Holds 1 to 4 seats; `None` when none could be had.
    async fn hold_seats(
        &self,
        j: &Journey,
        token: Option<&str>,
        rng: &mut StdRng,
    ) -> Result<Option<(i64, Vec<i32>, i64)>, Stop> {
        let want = super::seats::how_many(rng);
        let mut available = self.seat_map(j, rng).await?;
        for attempt in 0..j.hold_attempts.max(1) {
            if attempt == 2 {
                available = self.seat_map(j, rng).await?;
            }
            let chosen = super::seats::choose(&available, want, rng);
            if chosen.is_empty() {
                return Ok(None);
            }
            let body = json!({ "user_id": self.user_id, "seats": chosen });
            let mut call = Call::post(Step::Hold, format!("/shows/{}/holds", j.show_id), body);
            if let Some(token) = token {
                call = call.header("queue-token", token);
            }
            let answer = self.call(j, &call, rng).await?;
            match (answer.status, answer.code()) {
                (201, _) => {
                    let (Some(hold_id), Some(amount)) = (
                        answer.body["hold_id"].as_i64(),
                        answer.body["amount"].as_i64(),
                    ) else {
                        return Err(self.unexpected(j, Step::Hold, &answer));
                    };
                    return Ok(Some((hold_id, chosen, amount)));
                }
                (409, "seats_unavailable") => {
                    j.recorder.seats_unavailable.fetch_add(1, Ordering::Relaxed);
                    let taken = taken_seats(&answer.body, &chosen);
                    available.retain(|(seat, _)| !taken.contains(seat));
                }
                (401 | 403, "not_admitted" | "token_invalid") => return Err(Outcome::QueueExpired),
                _ => return Err(self.unexpected(j, Step::Hold, &answer)),
            }
        }
        Ok(None)
    }

    /// Charges what the wallet lacks for `amount`, in one idempotent charge.
    async fn top_up(&self, j: &Journey, amount: i64, rng: &mut StdRng) -> Result<(), Stop> {
        let wallet = Call::get(Step::Charge, format!("/wallets/{}", self.user_id));
        let answer = self.call(j, &wallet, rng).await?;
        let Some(balance) = answer.body["balance"].as_i64() else {
            return Err(self.unexpected(j, Step::Charge, &answer));
        };
        if balance >= amount {
            return Ok(());
        }
        let call = Call::post(
            Step::Charge,
            format!("/wallets/{}/charges", self.user_id),
            json!({ "amount": amount - balance }),
        )
        .header("idempotency-key", idempotency_key());
        let answer = self.call(j, &call, rng).await?;
        if answer.status != 200 {
            return Err(self.unexpected(j, Step::Charge, &answer));
        }
        Ok(())
    }

    /// Pays the hold (one key for every try of the same payment).
    async fn pay(
        &self,
        j: &Journey,
        token: Option<&str>,
        hold_id: i64,
        rng: &mut StdRng,
    ) -> Result<(), Stop> {
        let mut call = Call::post(
            Step::Pay,
            format!("/holds/{hold_id}/payments"),
            json!({ "user_id": self.user_id }),
        )
        .header("idempotency-key", idempotency_key());
        if let Some(token) = token {
            call = call.header("queue-token", token);
        }
        let answer = self.call(j, &call, rng).await?;
        match (answer.status, answer.code()) {
            (201, _) => Ok(()),
            (410, "hold_expired") => Err(Outcome::HoldExpired),
            (401 | 403, "not_admitted" | "token_invalid") => Err(Outcome::QueueExpired),
            _ => Err(self.unexpected(j, Step::Pay, &answer)),
        }
    }
}

/// The seats a `seats_unavailable` answer names, else all that were asked.
fn taken_seats(body: &Value, asked: &[i32]) -> Vec<i32> {
    match body["seats"].as_array() {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(|s| s.as_i64().map(|s| s as i32))
            .collect(),
        _ => asked.to_vec(),
    }
}

/// A fresh random `Idempotency-Key`: 128 bits in hex, from the OS-seeded
/// generator (not the run's seed: a second run with the same seed against
/// the same database must not replay the first run's charges).
fn idempotency_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

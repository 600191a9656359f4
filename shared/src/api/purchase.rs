//! `POST /tickets/{ticket_id}/orders`: the purchase, with or without an
//! `Idempotency-Key` (see [`crate::idempotency`] for the design, and
//! docs/api.md for the contract).

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::input::{BuyerBody, IdempotencyKey, TicketPath};
use super::problem::Problem;
use super::timing::{metric, SERVER_TIMING};
use super::AppState;
use crate::domain::{Order, Purchase, PurchaseError, TicketId, UserId};
use crate::idempotency::{self, Begin, Recorded};

/// Marks an answer that was recorded earlier and is being replayed.
const REPLAYED: &str = "idempotent-replayed";

/// The purchase handler. Its input was checked by the extractors; every
/// answer it gives, replays included, is counted in the metrics by outcome,
/// and says in `Server-Timing` where its time went ([`Spent`]).
pub(super) async fn purchase(
    State(state): State<AppState>,
    TicketPath(ticket): TicketPath,
    IdempotencyKey(key): IdempotencyKey,
    BuyerBody(user): BuyerBody,
) -> Response {
    let started = Instant::now();
    let mut spent = Spent::default();
    let answer = match key {
        None => {
            let outcome = spent
                .selling(state.strategy.purchase(Purchase::new(ticket, user)))
                .await;
            answer_and_record(outcome).0
        }
        Some(key) => match state.idempotency.mode {
            idempotency::Mode::Atomic => {
                idempotent_purchase(&state, &key, ticket, user, &mut spent).await
            }
            idempotency::Mode::CheckThenInsert => {
                check_then_insert_purchase(&state, &key, ticket, user).await
            }
            idempotency::Mode::Strategy => {
                let claim = crate::domain::Claim {
                    key,
                    user,
                    owner: 0,
                };
                let purchase = Purchase {
                    claim: Some(claim),
                    ..Purchase::new(ticket, user)
                };
                answer_and_record(spent.selling(state.strategy.purchase(purchase)).await).0
            }
        },
    };
    state.metrics.purchase(answer.outcome, started.elapsed());
    let mut response = answer.response;
    spent.write(&mut response);
    response
}

/// Where a purchase's time went, beyond the whole handler's `app` entry:
/// `sale`, the strategy's own work (Level 4: its Lua call; Level 2: its
/// transaction), and `idem`, claiming and recording the `Idempotency-Key`
/// in PostgreSQL (the atomic design). Written as `Server-Timing` entries.
#[derive(Debug, Default)]
struct Spent {
    sale: Option<Duration>,
    keys: Option<Duration>,
}

impl Spent {
    /// Runs the strategy's purchase, timing it as the sale.
    async fn selling<T>(&mut self, sale: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let outcome = sale.await;
        self.sale = Some(started.elapsed());
        outcome
    }

    /// Adds time spent on the key.
    fn keys(&mut self, took: Duration) {
        self.keys = Some(self.keys.unwrap_or_default() + took);
    }

    /// Appends the entries measured to `response`'s `Server-Timing`.
    fn write(&self, response: &mut Response) {
        let entries = [("sale", self.sale), ("idem", self.keys)];
        for (name, took) in entries {
            let Some(took) = took else { continue };
            let value = metric(name, took.as_secs_f64() * 1000.0);
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().append(SERVER_TIMING, value);
            }
        }
    }
}

/// A purchase's answer, with the outcome label the metrics count.
struct Answer {
    outcome: &'static str,
    response: Response,
}

impl From<Problem> for Answer {
    fn from(problem: Problem) -> Self {
        Self {
            outcome: problem.code,
            response: problem.into_response(),
        }
    }
}

/// The answer to a purchase, and what to record of it for its key (`None`
/// for retryable failures, which are not recorded).
fn answer_and_record(outcome: Result<Order, PurchaseError>) -> (Answer, Option<Recorded>) {
    match outcome {
        Ok(order) => {
            let (body, location) = idempotency::created_body(&order);
            let recorded = Recorded {
                status: 201,
                body,
                location: Some(location),
            };
            let answer = Answer {
                outcome: "created",
                response: replay_response(&recorded, false),
            };
            (answer, Some(recorded))
        }
        Err(err) => {
            let retryable = matches!(
                err,
                PurchaseError::Busy { .. }
                    | PurchaseError::Unavailable(_)
                    | PurchaseError::Unexpected(_)
            );
            let problem = Problem::from(err);
            let recorded = (!retryable).then(|| Recorded {
                status: problem.status.as_u16(),
                body: problem.body(),
                location: None,
            });
            (Answer::from(problem), recorded)
        }
    }
}

/// Builds the response for a recorded answer, byte for byte: status, body,
/// Location, the content type its status implies, and
/// `Idempotent-Replayed: true` when it is a replay. Levels that record
/// answers their own way (Level 6's request log) answer through it too.
pub fn replay_response(recorded: &Recorded, replayed: bool) -> Response {
    let status = StatusCode::from_u16(recorded.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    let mut response = (status, recorded.body.clone()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(location) = recorded
        .location
        .as_deref()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert(REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// A recorded answer, replayed, counted under the outcome it had.
fn replay(recorded: &Recorded) -> Answer {
    Answer {
        outcome: outcome_of(recorded.status, &recorded.body),
        response: replay_response(recorded, true),
    }
}

fn outcome_of(status: u16, body: &str) -> &'static str {
    if status == 201 {
        return "created";
    }
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("code")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    match code.as_str() {
        "sold_out" => "sold_out",
        "already_purchased" => "already_purchased",
        "not_found" => "not_found",
        _ => "other",
    }
}

fn key_mismatch() -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_mismatch",
        "this Idempotency-Key was used for another ticket",
    )
}

/// The correct design: claim the key, do the work with the claim (the
/// order's transaction records the answer), or wait and replay.
async fn idempotent_purchase(
    state: &AppState,
    key: &str,
    ticket: TicketId,
    user: UserId,
    spent: &mut Spent,
) -> Answer {
    let claiming = Instant::now();
    let begun = idempotency::begin(&state.pool, &state.idempotency, key, ticket, user).await;
    spent.keys(claiming.elapsed());
    let claim =
        match begun {
            Err(err) => return answer_and_record(Err(err)).0,
            Ok(Begin::Replay(recorded)) => return replay(&recorded),
            Ok(Begin::Mismatch) => return key_mismatch().into(),
            Ok(Begin::InProgress) => return Problem::new(
                StatusCode::CONFLICT,
                "request_in_progress",
                "a request with this Idempotency-Key is still being processed; try again shortly",
            )
            .into(),
            Ok(Begin::Owner(claim)) => claim,
        };
    let purchase = Purchase {
        ticket,
        user,
        claim: Some(claim.clone()),
    };
    let (answer, recorded) =
        answer_and_record(spent.selling(state.strategy.purchase(purchase)).await);
    let recording = Instant::now();
    let kept = match recorded {
        // A 201 whose order went through `insert_order` is recorded already,
        // in the order's transaction, and `finish` leaves it alone; one
        // decided elsewhere (Level 4) is recorded now.
        Some(recorded) => idempotency::finish(&state.pool, &claim, &recorded).await,
        None => idempotency::release(&state.pool, &claim).await,
    };
    spent.keys(recording.elapsed());
    if let Err(err) = kept {
        tracing::warn!(error = %err, "could not record an idempotency key's answer");
    }
    answer
}

/// The broken design, kept on purpose: look the key up, do the work, then
/// insert the key. Concurrent duplicates all miss the lookup and all do the
/// work; all but one then fail to insert the key.
async fn check_then_insert_purchase(
    state: &AppState,
    key: &str,
    ticket: TicketId,
    user: UserId,
) -> Answer {
    match idempotency::lookup(&state.pool, key, user).await {
        Ok(Some((t, recorded))) if t == ticket.get() => return replay(&recorded),
        Ok(Some(_)) => return key_mismatch().into(),
        Ok(None) => {}
        Err(err) => return answer_and_record(Err(err)).0,
    }
    let outcome = state.strategy.purchase(Purchase::new(ticket, user)).await;
    let (answer, recorded) = answer_and_record(outcome);
    if let Some(recorded) = recorded {
        let settings = &state.idempotency;
        let saved =
            idempotency::insert_after(&state.pool, settings, key, ticket, user, &recorded).await;
        if let Err(err) = saved {
            return answer_and_record(Err(err)).0;
        }
    }
    answer
}

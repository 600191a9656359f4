//! The box office's HTTP API, as `../shared/BOX_OFFICE.md` fixes it (the
//! waiting room's own routes, `/queue`, are in [`crate::queue_routes`]):
//!
//! | request | success |
//! | --- | --- |
//! | `POST /admin/shows` (Bearer token) | 201 `{"show_id", "seats"}` |
//! | `GET /shows` | 200 `{"shows": [...]}` |
//! | `GET /shows/{show_id}/seats` | 200 `{"show_id", "seats": [...]}` |
//! | `POST /shows/{show_id}/holds` `Queue-Token`, `{"user_id", "seats"}` | 201 the hold |
//! | `DELETE /holds/{hold_id}` `{"user_id"}` | 200 `{"hold_id", "status"}` |
//! | `POST /wallets/{user_id}/charges` `{"amount"}` | 200 `{"user_id", "balance"}` |
//! | `GET /wallets/{user_id}` | 200 `{"user_id", "balance"}` |
//! | `POST /holds/{hold_id}/payments` `Queue-Token`, `{"user_id"}` | 201 the payment; the token then expires |
//! | `GET /users/{user_id}/reservations` | 200 `{"reservations": [...]}` |
//! | `GET /metrics` | 200 Prometheus text: holds created and refused, the pool |
//!
//! With `--queue on` (the default) a hold or a payment first shows an
//! admitted `Queue-Token` of its user for its show ([`admitted`]).
//!
//! Handlers parse everything first ([`crate::input`]), then call one domain
//! function; failures are [`BoxError`]s, turned into problem+json by `?`.

use std::future::Future;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::Value;
use ticket_core::api::listed::ListedRouter;
use ticket_core::UserId;

use crate::cache::reads;
use crate::error::{BoxError, Reply};
use crate::holds::HoldRequest;
use crate::keys::{self, KeyClaim, Start};
use crate::queue::{token::Token, Purpose};
pub use crate::state::{AppState, Body};
use crate::{input, reservations, settle, shows, wallet};

/// The largest request body accepted: a hold or a show fits in far less.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The box office's routes, each added through
/// [`ticket_core::api::listed::ListedRouter`], so that the OpenAPI test
/// reads the very list that is served.
pub fn listed() -> ListedRouter<AppState> {
    ListedRouter::new()
        .post("/admin/shows", create_show)
        .patch("/admin/shows/{show_id}", change_show)
        .get("/shows", list_shows)
        .get("/shows/{show_id}/seats", seat_map)
        .post("/shows/{show_id}/holds", hold)
        .delete("/holds/{hold_id}", release)
        .post("/holds/{hold_id}/payments", pay)
        .post("/wallets/{user_id}/charges", charge)
        .get("/wallets/{user_id}", balance)
        .get("/users/{user_id}/reservations", user_reservations)
        .get("/health", health)
        .get("/livez", || async { "ok" })
        .get("/metrics", metrics)
        .merge(crate::queue_routes::routes())
}

/// Builds the router; kept apart from start-up so tests can serve it.
pub fn app(state: AppState) -> Router {
    let router = listed()
        .into_router()
        .fallback(|| async { BoxError::NotFound("resource") })
        .method_not_allowed_fallback(|| async {
            BoxError::Invalid {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: "method_not_allowed",
                detail: "this resource does not answer that method".to_owned(),
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    // Every answer carries an x-request-id and a trace span, as on the
    // other levels.
    ticket_core::api::observed(router).with_state(state)
}

/// With the waiting room on, checks the request's `Queue-Token` for `user`
/// on `show_id` ([`Queue::admit`]); with it off, lets everyone through.
async fn admitted(
    state: &AppState,
    headers: &HeaderMap,
    show_id: i64,
    user: UserId,
    purpose: Purpose,
) -> Result<Option<Token>, BoxError> {
    let Some(queue) = &state.queue else {
        return Ok(None);
    };
    let raw = headers.get("queue-token").map(HeaderValue::as_bytes);
    Ok(Some(queue.admit(raw, show_id, user.get(), purpose).await?))
}

async fn create_show(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let created = async {
        let token = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        shows::authorize(state.admin_token.as_deref(), token)?;
        let show = shows::NewShow::parse(&input::json_object(&headers, body)?)?;
        let created = shows::create(&state.pool, &show).await?;
        state.cache.invalidate(&[reads::SHOWS.to_owned()]).await;
        Ok::<_, BoxError>(created)
    };
    match created.await {
        Ok(created) => (StatusCode::CREATED, Json(created)).into_response(),
        Err(err) => err.into_response(),
    }
}

/// `PATCH /admin/shows/{id}` `{"title"?, "prices"?: {"vip": 160000}}`:
/// changes a show and drops its cached entries, on every server at once
/// (the cache is in Redis, not in any server).
async fn change_show(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, BoxError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    shows::authorize(state.admin_token.as_deref(), token)?;
    let show_id = input::path_id(&raw, "show_id")?;
    let change = shows::ShowChange::parse(&input::json_object(&headers, body)?)?;
    shows::change(&state.pool, show_id, &change).await?;
    let entries = [reads::SHOWS.to_owned(), reads::seat_map_entry(show_id)];
    state.cache.invalidate(&entries).await;
    Ok(Json(serde_json::json!({ "show_id": show_id })))
}

fn reader(state: &AppState) -> reads::Reader<'_> {
    reads::Reader {
        cache: &state.cache,
        pool: &state.pool,
        metrics: &state.metrics,
        settings: &state.settings,
    }
}

/// `GET /metrics`: this server's counters, as Prometheus text.
async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.response(&state.pool)
}

async fn list_shows(State(state): State<AppState>) -> Result<Json<Value>, BoxError> {
    Ok(Json(reader(&state).shows().await?))
}

async fn seat_map(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, BoxError> {
    let show_id = input::path_id(&raw, "show_id")?;
    Ok(Json(reader(&state).seat_map(show_id).await?))
}

async fn hold(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, BoxError> {
    let show_id = input::path_id(&raw, "show_id")?;
    let object = input::json_object(&headers, body)?;
    let request = HoldRequest {
        show_id,
        user: input::user(&object)?,
        seats: input::seat_list(&object, state.settings.max_seats)?,
    };
    admitted(&state, &headers, show_id, request.user, Purpose::Hold).await?;
    let hold = state.holds.hold(&request).await;
    state.metrics.event(match hold {
        Ok(_) => "hold_created",
        Err(_) => "hold_refused",
    });
    Ok((StatusCode::CREATED, Json(hold?)).into_response())
}

async fn release(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<settle::Released>, BoxError> {
    let hold_id = input::path_id(&raw, "hold_id")?;
    let user = input::user(&input::json_object(&headers, body)?)?;
    Ok(Json(
        settle::release(&state.pool, state.holds.as_ref(), hold_id, user).await?,
    ))
}

async fn charge(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, BoxError> {
    let user = input::path_user(&raw)?;
    let object = input::json_object(&headers, body)?;
    let amount = input::integer(&object, "amount", 1, state.settings.max_charge)?;
    let key = input::idempotency_key(&headers)?;
    let pool = state.pool.clone();
    let work = |claim: Option<KeyClaim>| async move {
        let wallet = wallet::charge(&pool, user, amount, claim.as_ref()).await?;
        Ok((StatusCode::OK, wallet.body()))
    };
    Ok(with_key(&state, key, "wallet-charge", amount, user, work).await)
}

async fn balance(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<wallet::Wallet>, BoxError> {
    let user = input::path_user(&raw)?;
    Ok(Json(wallet::balance(&state.pool, user).await?))
}

async fn pay(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, BoxError> {
    let hold_id = input::path_id(&raw, "hold_id")?;
    let user = input::user(&input::json_object(&headers, body)?)?;
    let key = input::idempotency_key(&headers)?;
    let token = match &state.queue {
        None => None,
        Some(_) => {
            let show_id = settle::show_of(&state.pool, hold_id).await?;
            admitted(&state, &headers, show_id, user, Purpose::Pay).await?
        }
    };
    let (pool, settings, holds) = (
        state.pool.clone(),
        state.settings.clone(),
        state.holds.clone(),
    );
    let work = |claim: Option<KeyClaim>| async move {
        let payment = settle::pay(
            &pool,
            holds.as_ref(),
            &settings,
            hold_id,
            user,
            claim.as_ref(),
        )
        .await?;
        Ok((StatusCode::CREATED, payment.body()))
    };
    let answer = with_key(&state, key, "payment", hold_id, user, work).await;
    if let (Some(queue), Some(token)) = (&state.queue, &token) {
        if answer.status() == StatusCode::CREATED {
            // Paid (or a replay of the payment): this user is done.
            queue.finish(token).await;
        }
    }
    Ok(answer)
}

async fn user_reservations(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, BoxError> {
    let user = input::path_user(&raw)?;
    Ok(Json(reservations::of_user(&state.pool, user).await?))
}

/// Runs `work` under an `Idempotency-Key`, if the request has one.
///
/// `work` gets the claim as a parameter and records its success in its own
/// transaction ([`keys::record_in`]). A final failure is recorded after
/// (so a retry replays it); a retryable one gives the key back.
async fn with_key<W, F>(
    state: &AppState,
    key: Option<String>,
    scope: &str,
    bound_to: i64,
    user: UserId,
    work: W,
) -> Response
where
    W: FnOnce(Option<KeyClaim>) -> F,
    F: Future<Output = Result<(StatusCode, String), BoxError>>,
{
    let Some(key) = key else {
        return json_answer(work(None).await, false);
    };
    let claim = match keys::start(&state.pool, &state.idempotency, scope, &key, bound_to, user)
        .await
    {
        Ok(Start::Owner(claim)) => claim,
        Ok(Start::Replay { status, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return json_answer(replayed(status, body), true);
        }
        Err(err) => return err.into_response(),
    };
    let outcome = work(Some(claim.clone())).await;
    match &outcome {
        Ok(_) => {}
        Err(err) if err.is_retryable() => keys::release(&state.pool, &claim).await,
        Err(_) => {}
    }
    match outcome {
        Ok(answer) => json_answer(Ok(answer), false),
        Err(err) if err.is_retryable() => err.into_response(),
        Err(err) => {
            let reply = Reply::from(err);
            keys::finish(&state.pool, &claim, reply.status().as_u16(), reply.body()).await;
            reply.into_response()
        }
    }
}

fn replayed(status: StatusCode, body: String) -> Result<(StatusCode, String), BoxError> {
    Ok((status, body))
}

/// A JSON (or, for a replayed failure, problem+json) answer, byte for byte.
fn json_answer(outcome: Result<(StatusCode, String), BoxError>, replay: bool) -> Response {
    let (status, body) = match outcome {
        Ok(answer) => answer,
        Err(err) => return err.into_response(),
    };
    let content_type = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if replay {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// How long `/health` waits for the database.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

async fn health(State(state): State<AppState>) -> Result<Json<Value>, BoxError> {
    let ping = sqlx::query("SELECT 1").execute(&state.pool);
    match tokio::time::timeout(HEALTH_TIMEOUT, ping).await {
        Ok(Ok(_)) => Ok(Json(serde_json::json!({
            "status": "ok",
            "strategy": state.holds.name(),
        }))),
        Ok(Err(err)) => Err(BoxError::Unavailable(err.into())),
        Err(_) => Err(BoxError::Unavailable(anyhow::anyhow!(
            "the database did not answer within 2 s"
        ))),
    }
}

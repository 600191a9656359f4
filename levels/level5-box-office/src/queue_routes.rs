//! The waiting room's HTTP API (beside [`crate::queue`], which it calls,
//! so that the queue itself knows nothing of HTTP):
//!
//! | request | success |
//! | --- | --- |
//! | `POST /queue` `{"user_id", "show_id"}` | 201 (new) or 200 (already in line) `{"token", "number", "status", "position", "retry_after_ms"}` |
//! | `GET /queue/{token}` | 200 `{"number", "status", "position", "retry_after_ms"}` |
//! | `GET /shows/{show_id}/queue` | 200 the line's counts ([`QueueStats`]) |
//!
//! With `--queue off` all three are 404 `queue_off`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ticket_core::api::listed::ListedRouter;

use crate::error::BoxError;
use crate::input;
use crate::queue::stats::QueueStats;
use crate::queue::{Polled, Queue};
use crate::state::{AppState, Body};

/// The waiting room's routes, merged into [`crate::api::app`].
pub fn routes() -> ListedRouter<AppState> {
    ListedRouter::new()
        .post("/queue", join)
        .get("/queue/{token}", poll)
        .get("/shows/{show_id}/queue", stats)
}

fn queue(state: &AppState) -> Result<&Arc<Queue>, BoxError> {
    state.queue.as_ref().ok_or(BoxError::QueueOff)
}

async fn join(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, BoxError> {
    let queue = queue(&state)?;
    let object = input::json_object(&headers, body)?;
    let user = input::user(&object)?;
    let show_id = input::integer(&object, "show_id", 1, i64::MAX)?;
    crate::shows::require(&state.pool, show_id).await?;
    let joined = queue.join(show_id, user.get()).await?;
    let status = if joined.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(joined)).into_response())
}

async fn poll(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Json<Polled>, BoxError> {
    Ok(Json(queue(&state)?.poll(&token).await?))
}

async fn stats(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<QueueStats>, BoxError> {
    let queue = queue(&state)?;
    let show_id = input::path_id(&raw, "show_id")?;
    Ok(Json(queue.stats(show_id).await?))
}

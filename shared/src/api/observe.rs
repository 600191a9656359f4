//! Request tracing: every request gets an `x-request-id` (the caller's, or
//! a new one), every answer carries it back, and every log line written
//! while serving it sits in a span that names it. A buyer who got a 500 can
//! quote the id, and the server's log shows that request's story. Every
//! answer is timed too ([`super::timing`]).

use axum::http::{HeaderValue, Request};
use axum::Router;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

/// The header that carries a request's id, both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// Makes ids: 16 random hex digits, enough to find one request in a day of
/// logs, with no id service to ask.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let id = format!("{:016x}", rand::random::<u64>());
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// Wraps `router` with request ids and tracing (see the module's doc).
/// Requests are logged at DEBUG (`RUST_LOG=tower_http=debug` shows each
/// one); failures (5xx) at ERROR, always.
pub fn observed<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    let header = axum::http::HeaderName::from_static(REQUEST_ID);
    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &Request<_>| {
            let id = request
                .headers()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!(
                "request",
                method = %request.method(),
                uri = %request.uri().path(),
                request_id = %id,
            )
        })
        .on_response(DefaultOnResponse::new().level(Level::DEBUG))
        .on_failure(DefaultOnFailure::new().level(Level::ERROR));
    // The last layer added runs first: the clock starts (Server-Timing
    // covers everything below it), the id is set, then the span opens with
    // it, then the answer gets it back.
    let router = router
        .layer(PropagateRequestIdLayer::new(header.clone()))
        .layer(trace)
        .layer(SetRequestIdLayer::new(header, RandomRequestId))
        .layer(axum::middleware::from_fn(super::timing::server_timing));
    // Outermost: a request waits for its turn before anything is done or
    // timed (the wait is queueing, not the server's work).
    match super::limit::max_in_flight() {
        Some(limit) => {
            let turns = std::sync::Arc::new(tokio::sync::Semaphore::new(limit));
            router.layer(axum::middleware::from_fn_with_state(
                turns,
                super::limit::one_turn,
            ))
        }
        None => router,
    }
}

//! With `TICKET_RUSH_MAX_IN_FLIGHT=N`, at most N requests are worked on at
//! a time (by default there is no limit: [`MAX_IN_FLIGHT`]); the others
//! wait their turn, first come first served, holding nothing but their
//! parsed head.
//!
//! Why: at a rush, every buyer's request arrives at the same instant. With
//! two cores, working on 5,000 of them at once is no faster than working on
//! a few hundred (the cores are the limit), but each one in progress holds
//! its body, its JSON, its strategy's futures and buffers, its database or
//! Redis command: memory that grows with the crowd, not with the work. A
//! request waiting here holds only what hyper parsed.
//!
//! A request in progress never waits for a request that has not started
//! (a lock holder, a key's first request: each is already in progress), so
//! the limit cannot deadlock the strategies.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::Semaphore;

/// Requests worked on at once, per server, by default: 0, no limit. The
/// limit is there to be measured (`TICKET_RUSH_MAX_IN_FLIGHT=256` against
/// the default, interleaved); it is not on until it has been.
pub const MAX_IN_FLIGHT: usize = 0;

/// The environment variable that overrides [`MAX_IN_FLIGHT`] (`0`: no
/// limit), for measuring with and without it.
pub const MAX_IN_FLIGHT_ENV: &str = "TICKET_RUSH_MAX_IN_FLIGHT";

/// The limit this process uses: [`MAX_IN_FLIGHT_ENV`] if set to a number,
/// else [`MAX_IN_FLIGHT`]; `None` for no limit.
pub fn max_in_flight() -> Option<usize> {
    limit_from(std::env::var(MAX_IN_FLIGHT_ENV).ok().as_deref())
}

/// The limit a value of [`MAX_IN_FLIGHT_ENV`] asks for.
fn limit_from(value: Option<&str>) -> Option<usize> {
    let limit = value
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(MAX_IN_FLIGHT);
    (limit > 0).then_some(limit)
}

/// Middleware: waits for a turn, then runs the rest of the stack.
pub async fn one_turn(
    State(turns): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    // The semaphore is never closed, so acquiring cannot fail; if it ever
    // did, serving without a turn beats refusing.
    let _turn = turns.acquire().await.ok();
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_is_no_limit_unless_a_number_asks_for_one() {
        assert_eq!(limit_from(None), None, "off by default");
        assert_eq!(limit_from(Some("lots")), None);
        assert_eq!(limit_from(Some(" 64 ")), Some(64));
        assert_eq!(limit_from(Some("0")), None, "0 turns it off");
    }
}

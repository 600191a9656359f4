//! The booking row of `load tour`: a short `load booking` (1,000 users,
//! 200 seats, two servers, pessimistic holds, through the waiting room),
//! on the tour's own PostgreSQL and Redis, kept short so that the whole
//! tour stays under three minutes in release.

use std::path::Path;
use std::time::Duration;

use super::model::BookingReport;
use super::run::{booking, BookingOptions};

/// Users in the tour's booking row.
pub const TOUR_USERS: usize = 1_000;
/// Seats in the tour's booking row.
pub const TOUR_SEATS: i64 = 200;

/// The tour's booking options, on the given services.
pub fn tour_options(exe: &Path, database_url: &str, redis_url: Option<&str>) -> BookingOptions {
    BookingOptions {
        users: TOUR_USERS,
        seats: TOUR_SEATS,
        servers: 2,
        strategy: "pessimistic".to_owned(),
        pay_ratio: 0.8,
        queue: true,
        active_limit: Some(200),
        hold_ttl_ms: 5_000,
        admitted_ttl_ms: 3_000,
        think_time_ms: 0,
        server_args: Vec::new(),
        targets: Vec::new(),
        admin_token: None,
        database_url: Some(database_url.to_owned()),
        redis_url: redis_url.map(str::to_owned),
        connections: 256,
        hold_attempts: 5,
        seed: 42,
        timeout: Duration::from_secs(300),
        progress: false,
        kill_at: None,
        exe: exe.to_owned(),
    }
}

/// Runs the tour's booking row.
pub async fn tour_booking(
    exe: &Path,
    database_url: &str,
    redis_url: Option<&str>,
) -> anyhow::Result<BookingReport> {
    Ok(booking(&tour_options(exe, database_url, redis_url))
        .await?
        .report)
}

/// The row as the tour table prints it, under the same columns where they
/// mean the same (orders: paid holds; stock: seats left; 201s: seats sold).
pub fn tour_line(r: &BookingReport) -> String {
    let latency = |step: &str| r.latency_ms.get(step).map_or(0.0, |p| p.p99);
    format!(
        "{:<5} {:<13} {:>7} {:>6} {:<12} {:<12} {:>6} {:>5} {:>5} {:>6}  booking: {} users, {} seats; p99 ms queue {:.1}, hold {:.1}, pay {:.1}  {}",
        5,
        format!("booking/{}", r.strategy),
        r.servers,
        0,
        "correct",
        r.verdict,
        r.payments,
        r.seats - r.seats_sold,
        r.seats_sold,
        r.busy,
        r.users,
        r.seats,
        latency("queue"),
        latency("hold"),
        latency("pay"),
        if r.is_correct() { "as expected" } else { "UNEXPECTED" }
    )
}

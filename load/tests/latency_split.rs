//! Where a buyer's wait goes: every answer says how long the server spent
//! on it (`Server-Timing`), and a rush's report splits each buyer's latency
//! into connecting, queueing and the server's own time. Nothing here
//! asserts a speed: only that the parts are there, parse and add up.

mod common;

use common::{servers, stop};
use load::output::render_report;
use load::rush::{rush, RushPlan};
use load::servers::{urls, ServerSpec};
use ticket_core::api::timing::{parse_duration_ms, HANDLER_METRIC, SERVER_TIMING};

/// The handler's duration in an answer's `Server-Timing` (the header may
/// come several times: a purchase adds its own entries).
fn server_time(response: &reqwest::Response) -> Option<f64> {
    let values = response.headers().get_all(SERVER_TIMING);
    values
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| parse_duration_ms(value, HANDLER_METRIC))
}

/// A sale, a refusal, a read, a 404 and the health check all carry a
/// `Server-Timing: app;dur=<ms>` that parses (Level 4: the Lua sale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_server_timing_that_parses() {
    let spec = ServerSpec::new(4, "redis-lua").think_time_ms(0);
    let (started, database) = servers(&spec, 1).await;
    let base = started[0].url();
    let pool = load::rush::open_database(&database).await.unwrap();
    let ticket = ticket_core::TicketId::parse(1).unwrap();
    ticket_core::db::reset_ticket(&pool, ticket, "Timed", 10)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let buy = |user: i64| {
        client
            .post(format!("{base}/tickets/1/orders"))
            .json(&serde_json::json!({ "user_id": user }))
            .send()
    };

    let sold = buy(7).await.unwrap();
    let again = buy(7).await.unwrap();
    let read = client
        .get(format!("{base}/tickets/1"))
        .send()
        .await
        .unwrap();
    let missing = client.get(format!("{base}/nowhere")).send().await.unwrap();
    let health = client.get(format!("{base}/health")).send().await.unwrap();

    assert_eq!(sold.status(), 201);
    assert_eq!(again.status(), 409);
    for (what, answer) in [
        ("sale", &sold),
        ("refusal", &again),
        ("read", &read),
        ("404", &missing),
        ("health", &health),
    ] {
        let ms = server_time(answer);
        assert!(
            ms.is_some_and(|ms| ms >= 0.0),
            "{what}: {:?}",
            answer.headers()
        );
    }
    stop(started).await;
}

/// A rush's report carries each buyer's latency split: every answer was
/// timed by its server, the warm-up connections were kept (no buyer opened
/// one after the start), and the text report prints the split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rush_report_splits_the_latency_into_connect_queue_and_server() {
    let spec = ServerSpec::new(1, "mutex").think_time_ms(1);
    let (started, database) = servers(&spec, 2).await;

    let report = rush(&RushPlan {
        buyers: 40,
        tickets: 10,
        ..RushPlan::new(urls(&started), &database)
    })
    .await
    .unwrap();

    let split = report.latency_split_ms.expect("a rush splits its latency");
    assert_eq!(split.timed_answers, report.attempts, "{split:?}");
    assert_eq!(split.connections_opened, 0, "{split:?}");
    assert_eq!(split.slowest[0], 0.0, "no connect time: {split:?}");
    assert!(split.server.p50 > 0.0, "{split:?}");
    assert!(
        split.server.max <= report.latency_ms.max + 0.01,
        "{split:?}"
    );
    let text = render_report(&report, None);
    assert!(text.contains("latency split   connect p50"), "{text}");
    assert!(text.contains("slowest 1%"), "{text}");
    stop(started).await;
}

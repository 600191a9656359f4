//! The HTTP contract, through HTTP, against real servers of every level:
//! bad input is a 4xx problem+json that changes nothing; unknown tickets are
//! 404; a sold-out ticket is 409 sold_out.

mod common;

use common::{servers, stop};
use load::servers::ServerSpec;
use reqwest::StatusCode;
use serde_json::Value;
use ticket_core::{db, TicketId};

struct Case {
    what: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: StatusCode,
    code: &'static str,
}

fn case(
    what: &'static str,
    path: &str,
    body: &str,
    status: StatusCode,
    code: &'static str,
) -> Case {
    Case {
        what,
        path: path.to_owned(),
        content_type: Some("application/json"),
        body: body.as_bytes().to_vec(),
        status,
        code,
    }
}

/// Every bad input of the table: the bodies, then the paths.
fn bad_inputs() -> Vec<Case> {
    bad_bodies().into_iter().chain(bad_paths()).collect()
}

/// Bad purchase bodies (a cancel's body is read by the same extractor).
fn bad_bodies() -> Vec<Case> {
    bad_json().into_iter().chain(bad_envelopes()).collect()
}

/// Bodies that are not a JSON object with a valid `user_id`.
fn bad_json() -> Vec<Case> {
    use StatusCode as S;
    vec![
        case(
            "malformed JSON",
            "/tickets/1/orders",
            "{\"user_id\": ",
            S::BAD_REQUEST,
            "malformed_request",
        ),
        case(
            "not an object",
            "/tickets/1/orders",
            "[42]",
            S::BAD_REQUEST,
            "malformed_request",
        ),
        case(
            "missing user_id",
            "/tickets/1/orders",
            "{}",
            S::UNPROCESSABLE_ENTITY,
            "invalid_user_id",
        ),
        case(
            "string user_id",
            "/tickets/1/orders",
            r#"{"user_id": "42"}"#,
            S::UNPROCESSABLE_ENTITY,
            "invalid_user_id",
        ),
        case(
            "null user_id",
            "/tickets/1/orders",
            r#"{"user_id": null}"#,
            S::UNPROCESSABLE_ENTITY,
            "invalid_user_id",
        ),
        case(
            "user_id 0",
            "/tickets/1/orders",
            r#"{"user_id": 0}"#,
            S::UNPROCESSABLE_ENTITY,
            "invalid_user_id",
        ),
        case(
            "negative user_id",
            "/tickets/1/orders",
            r#"{"user_id": -7}"#,
            S::UNPROCESSABLE_ENTITY,
            "invalid_user_id",
        ),
        case(
            "fractional user_id",
            "/tickets/1/orders",
            r#"{"user_id": 1.5}"#,
            S::UNPROCESSABLE_ENTITY,
            "invalid_user_id",
        ),
        case(
            "user_id above i64",
            "/tickets/1/orders",
            r#"{"user_id": 9223372036854775808}"#,
            S::UNPROCESSABLE_ENTITY,
            "invalid_user_id",
        ),
    ]
}

/// Bodies refused before they are parsed: the wrong media type, too large.
fn bad_envelopes() -> Vec<Case> {
    use StatusCode as S;
    vec![
        Case {
            content_type: Some("text/plain"),
            ..case(
                "wrong content type",
                "/tickets/1/orders",
                r#"{"user_id": 1}"#,
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
            )
        },
        Case {
            content_type: None,
            ..case(
                "no content type",
                "/tickets/1/orders",
                r#"{"user_id": 1}"#,
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
            )
        },
        Case {
            body: format!("{{\"user_id\": 1, \"pad\": \"{}\"}}", "x".repeat(1 << 20)).into_bytes(),
            ..case(
                "1 MB body",
                "/tickets/1/orders",
                "",
                S::PAYLOAD_TOO_LARGE,
                "payload_too_large",
            )
        },
    ]
}

/// Bad ids in a purchase's path.
fn bad_paths() -> Vec<Case> {
    use StatusCode as S;
    vec![
        case(
            "non-numeric ticket id",
            "/tickets/abc/orders",
            r#"{"user_id": 1}"#,
            S::BAD_REQUEST,
            "malformed_request",
        ),
        case(
            "huge ticket id",
            "/tickets/99999999999999999999999999/orders",
            r#"{"user_id": 1}"#,
            S::UNPROCESSABLE_ENTITY,
            "invalid_ticket_id",
        ),
        case(
            "ticket id 0",
            "/tickets/0/orders",
            r#"{"user_id": 1}"#,
            S::UNPROCESSABLE_ENTITY,
            "invalid_ticket_id",
        ),
    ]
}

async fn expect_problem(
    response: reqwest::Response,
    status: StatusCode,
    code: &str,
    what: &str,
) -> Value {
    assert_eq!(response.status(), status, "{what}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{what}"
    );
    let body: Value = response.json().await.expect("a JSON problem");
    assert_eq!(body["code"], code, "{what}: {body}");
    assert_eq!(body["status"], status.as_u16(), "{what}");
    assert!(body["title"].is_string() && body["detail"].is_string() && body["type"].is_string());
    body
}

/// Every bad input in the table is a 4xx problem+json with the right code,
/// on every level, and no row changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_4xx_and_changes_nothing() {
    for info in load::levels::levels() {
        let strategy = info.strategies[0].name;
        let (servers, database) = servers(&ServerSpec::new(info.number, strategy), 1).await;
        let base = servers[0].url();
        let pool = load::rush::open_database(&database).await.unwrap();
        let ticket = TicketId::parse(1).unwrap();
        db::reset_ticket(&pool, ticket, "Rush concert", 100)
            .await
            .unwrap();
        let client = reqwest::Client::new();

        for case in bad_inputs() {
            let mut request = client
                .post(format!("{base}{}", case.path))
                .body(case.body.clone());
            if let Some(content_type) = case.content_type {
                request = request.header("content-type", content_type);
            }
            let response = request.send().await.expect("an answer");
            let what = format!("level {} {strategy}: {}", info.number, case.what);
            expect_problem(response, case.status, case.code, &what).await;
        }

        let truth = db::truth(&pool, ticket).await.unwrap();
        assert_eq!(
            (truth.orders, truth.stock),
            (0, 100),
            "level {}: nothing written",
            info.number
        );
        stop(servers).await;
    }
}

/// A cancel's body is read by the same extractor as a purchase's, with the
/// same limits: every bad purchase body of the table (too large: 413, not
/// JSON: 415, malformed: 400, invalid user: 422) is the same problem on a
/// cancel, and nothing changes. (An oversized cancel used to be 400.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_body_gets_the_same_checks_and_limits_as_a_purchase_body() {
    let (servers, database) = servers(&ServerSpec::new(2, "atomic"), 1).await;
    let base = servers[0].url();
    let pool = load::rush::open_database(&database).await.unwrap();
    let ticket = TicketId::parse(1).unwrap();
    db::reset_ticket(&pool, ticket, "Rush concert", 100)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let bought = client
        .post(format!("{base}/tickets/1/orders"))
        .json(&serde_json::json!({ "user_id": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(bought.status(), StatusCode::CREATED);
    let order: Value = bought.json().await.unwrap();
    let cancel_path = format!("/tickets/1/orders/{}", order["order_id"]);

    for case in bad_bodies() {
        let mut request = client
            .delete(format!("{base}{cancel_path}"))
            .body(case.body.clone());
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("an answer");
        let what = format!("cancel: {}", case.what);
        expect_problem(response, case.status, case.code, &what).await;
    }

    let truth = db::truth(&pool, ticket).await.unwrap();
    assert_eq!((truth.orders, truth.stock), (1, 99), "nothing cancelled");
    stop(servers).await;
}

/// A ticket that does not exist is 404 not_found, for reads and purchases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ticket_is_404() {
    let (servers, _database) = servers(&ServerSpec::new(1, "mutex"), 1).await;
    let base = servers[0].url();
    let client = reqwest::Client::new();

    let response = client
        .post(format!("{base}/tickets/424242/orders"))
        .json(&serde_json::json!({"user_id": 1}))
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::NOT_FOUND, "not_found", "purchase").await;
    let response = client
        .get(format!("{base}/tickets/424242"))
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::NOT_FOUND, "not_found", "read").await;
    let response = client
        .get(format!("{base}/no/such/route"))
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::NOT_FOUND, "not_found", "route").await;
    stop(servers).await;
}

/// The last unit sells with 201, the next buyer gets 409 sold_out, and the
/// ticket reads back with both counts of what sold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sold_out_is_409_and_the_ticket_reads_back() {
    let (servers, database) = servers(&ServerSpec::new(1, "mutex"), 1).await;
    let base = servers[0].url();
    let pool = load::rush::open_database(&database).await.unwrap();
    db::reset_ticket(&pool, TicketId::parse(5).unwrap(), "Tiny gig", 1)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let buy = |user: i64| {
        client
            .post(format!("{base}/tickets/5/orders"))
            .json(&serde_json::json!({ "user_id": user }))
            .send()
    };

    let first = buy(1).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(
        first.headers()["location"]
            .to_str()
            .unwrap()
            .split('/')
            .count(),
        5
    );
    let order: Value = first.json().await.unwrap();
    assert_eq!(
        (order["ticket_id"].as_i64(), order["user_id"].as_i64()),
        (Some(5), Some(1))
    );
    assert!(order["order_id"].as_i64().unwrap() > 0);

    let second = buy(2).await.unwrap();
    expect_problem(second, StatusCode::CONFLICT, "sold_out", "second buyer").await;

    let ticket: Value = client
        .get(format!("{base}/tickets/5"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ticket,
        serde_json::json!({"id": 5, "name": "Tiny gig", "total": 1, "stock": 0, "sold": 1})
    );
    stop(servers).await;
}

/// `/health` answers 200 while the database does, and `/metrics` counts
/// purchases by outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_answer() {
    let (servers, _database) = servers(&ServerSpec::new(1, "mutex"), 1).await;
    let base = servers[0].url();
    let client = reqwest::Client::new();

    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    client
        .post(format!("{base}/tickets/1/orders"))
        .json(&serde_json::json!({"user_id": 9}))
        .send()
        .await
        .unwrap();
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        ticket_core::metrics::sum_samples(
            &metrics,
            "ticket_rush_purchases_total",
            Some("outcome=\"created\"")
        ),
        1.0,
        "{metrics}"
    );
    stop(servers).await;
}

/// Two servers started at the same moment on an empty database both come
/// up: migrations take an advisory lock, so one applies them and the other
/// waits and finds them applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_starting_together_share_one_schema() {
    let database = common::fresh_database().await;
    let spec = ServerSpec::new(1, "mutex");
    let start = || load::servers::start_in_process(&spec, &database, None, 1);

    let (a, b) = tokio::join!(start(), start());

    let (a, b) = (a.expect("first server"), b.expect("second server"));
    let client = reqwest::Client::new();
    for server in a.iter().chain(b.iter()) {
        let ticket = client
            .get(format!("{}/tickets/1", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(ticket.status(), StatusCode::OK);
    }
    stop(a).await;
    stop(b).await;
}

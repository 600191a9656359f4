//! Bad input of every kind on every endpoint: a 4xx problem+json with a
//! code, and not one row changed.

mod common;

use common::{Office, ADMIN_TOKEN};
use reqwest::Method;

/// One bad request and the answer it must get.
struct Case {
    method: Method,
    path: String,
    body: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    status: u16,
    code: &'static str,
}

fn case(
    method: Method,
    path: impl Into<String>,
    body: Option<&'static str>,
    status: u16,
    code: &'static str,
) -> Case {
    let headers = if body.is_some() {
        vec![("content-type", "application/json".to_owned())]
    } else {
        vec![]
    };
    Case {
        method,
        path: path.into(),
        body,
        headers,
        status,
        code,
    }
}

fn admin(body: &'static str, status: u16, code: &'static str) -> Case {
    let mut case = case(Method::POST, "/admin/shows", Some(body), status, code);
    case.headers
        .push(("authorization", format!("Bearer {ADMIN_TOKEN}")));
    case
}

// One line per case: a table reads better than what rustfmt would make of it.
#[rustfmt::skip]
fn admin_cases() -> Vec<Case> {
    let good = r#"{"title":"x","starts_at":"2026-12-24T19:00:00Z","grades":[{"grade":"vip","price":10,"seats":2}]}"#;
    let mut cases = vec![
        case(Method::POST, "/admin/shows", Some(good), 401, "unauthorized"),
        admin(r#"{"title":"","starts_at":"2026-12-24T19:00:00Z","grades":[{"grade":"a","price":1,"seats":1}]}"#, 422, "invalid_title"),
        admin(r#"{"starts_at":"2026-12-24T19:00:00Z","grades":[{"grade":"a","price":1,"seats":1}]}"#, 422, "invalid_title"),
        admin(r#"{"title":"x","starts_at":"tomorrow","grades":[{"grade":"a","price":1,"seats":1}]}"#, 422, "invalid_starts_at"),
        admin(r#"{"title":"x","starts_at":"2026-12-24","grades":[{"grade":"a","price":1,"seats":1}]}"#, 422, "invalid_starts_at"),
        admin(r#"{"title":"x","starts_at":"2026-12-24T19:00:00Z","grades":[]}"#, 422, "invalid_grades"),
        admin(r#"{"title":"x","starts_at":"2026-12-24T19:00:00Z","grades":[1]}"#, 422, "invalid_grades"),
        admin(r#"{"title":"x","starts_at":"2026-12-24T19:00:00Z","grades":[{"grade":"a","price":0,"seats":1}]}"#, 422, "invalid_price"),
        admin(r#"{"title":"x","starts_at":"2026-12-24T19:00:00Z","grades":[{"grade":"a","price":-1,"seats":1}]}"#, 422, "invalid_price"),
        admin(r#"{"title":"x","starts_at":"2026-12-24T19:00:00Z","grades":[{"grade":"a","price":1,"seats":0}]}"#, 422, "invalid_seats"),
        admin(r#"{"title":"x","starts_at":"2026-12-24T19:00:00Z","grades":[{"grade":"a","price":1,"seats":100001}]}"#, 422, "invalid_seats"),
        admin(r#"{"title":"x","starts_at":"2026-12-24T19:00:00Z","grades":[{"price":1,"seats":1}]}"#, 422, "invalid_grade"),
        admin(r#"{"title":"x","starts_at":"2026-12-24T19:00:00Z","grades":[{"grade":"a","price":1,"seats":60000},{"grade":"b","price":1,"seats":60000}]}"#, 422, "invalid_grades"),
        admin("{not json", 400, "malformed_request"),
        admin("[1]", 400, "malformed_request"),
    ];
    let mut wrong = case(Method::POST, "/admin/shows", Some(good), 401, "unauthorized");
    wrong.headers.push(("authorization", format!("Bearer {ADMIN_TOKEN}x")));
    cases.push(wrong);
    let mut bare = case(Method::POST, "/admin/shows", Some(good), 401, "unauthorized");
    bare.headers.push(("authorization", ADMIN_TOKEN.to_owned()));
    cases.push(bare);
    let mut text = admin(good, 415, "unsupported_media_type");
    text.headers[0].1 = "text/plain".to_owned();
    cases.push(text);
    cases
}

#[rustfmt::skip]
fn hold_cases(show: i64) -> Vec<Case> {
    let holds = format!("/shows/{show}/holds");
    let mut cases = vec![
        case(Method::POST, "/shows/x/holds", Some(r#"{"user_id":1,"seats":[1]}"#), 400, "malformed_request"),
        case(Method::POST, "/shows/0/holds", Some(r#"{"user_id":1,"seats":[1]}"#), 422, "invalid_show_id"),
        case(Method::POST, "/shows/99999/holds", Some(r#"{"user_id":1,"seats":[1]}"#), 404, "not_found"),
        case(Method::POST, &holds, Some(r#"{"seats":[1]}"#), 422, "invalid_user_id"),
        case(Method::POST, &holds, Some(r#"{"user_id":0,"seats":[1]}"#), 422, "invalid_user_id"),
        case(Method::POST, &holds, Some(r#"{"user_id":"1","seats":[1]}"#), 422, "invalid_user_id"),
        case(Method::POST, &holds, Some(r#"{"user_id":1}"#), 422, "invalid_seats"),
        case(Method::POST, &holds, Some(r#"{"user_id":1,"seats":[]}"#), 422, "invalid_seats"),
        case(Method::POST, &holds, Some(r#"{"user_id":1,"seats":[1,1]}"#), 422, "invalid_seats"),
        case(Method::POST, &holds, Some(r#"{"user_id":1,"seats":[1,2,3,4,5]}"#), 422, "invalid_seats"),
        case(Method::POST, &holds, Some(r#"{"user_id":1,"seats":[0]}"#), 422, "invalid_seats"),
        case(Method::POST, &holds, Some(r#"{"user_id":1,"seats":["a"]}"#), 422, "invalid_seats"),
        case(Method::POST, &holds, Some(r#"{"user_id":1,"seats":[3,999]}"#), 422, "unknown_seat"),
        case(Method::POST, &holds, Some("{"), 400, "malformed_request"),
        case(Method::POST, &holds, None, 415, "unsupported_media_type"),
        case(Method::GET, "/shows/x/seats", None, 400, "malformed_request"),
        case(Method::GET, "/shows/0/seats", None, 422, "invalid_show_id"),
        case(Method::GET, "/shows/99999/seats", None, 404, "not_found"),
    ];
    let mut huge = case(Method::POST, &holds, Some(""), 413, "payload_too_large");
    huge.body = Some(Box::leak(format!(r#"{{"user_id":1,"seats":[1],"x":"{}"}}"#, "a".repeat(70_000)).into_boxed_str()));
    cases.push(huge);
    cases
}

#[rustfmt::skip]
fn money_cases(hold: i64) -> Vec<Case> {
    let pay = format!("/holds/{hold}/payments");
    let release = format!("/holds/{hold}");
    let mut cases = vec![
        case(Method::POST, "/wallets/x/charges", Some(r#"{"amount":1}"#), 400, "malformed_request"),
        case(Method::POST, "/wallets/0/charges", Some(r#"{"amount":1}"#), 422, "invalid_user_id"),
        case(Method::POST, "/wallets/1/charges", Some(r#"{"amount":0}"#), 422, "invalid_amount"),
        case(Method::POST, "/wallets/1/charges", Some(r#"{"amount":-5}"#), 422, "invalid_amount"),
        case(Method::POST, "/wallets/1/charges", Some(r#"{"amount":1.5}"#), 422, "invalid_amount"),
        case(Method::POST, "/wallets/1/charges", Some(r#"{"amount":"10"}"#), 422, "invalid_amount"),
        case(Method::POST, "/wallets/1/charges", Some(r#"{"amount":10000001}"#), 422, "invalid_amount"),
        case(Method::POST, "/wallets/1/charges", Some(r#"{}"#), 422, "invalid_amount"),
        case(Method::GET, "/wallets/x", None, 400, "malformed_request"),
        case(Method::GET, "/wallets/-1", None, 422, "invalid_user_id"),
        case(Method::POST, "/holds/x/payments", Some(r#"{"user_id":1}"#), 400, "malformed_request"),
        case(Method::POST, "/holds/0/payments", Some(r#"{"user_id":1}"#), 422, "invalid_hold_id"),
        case(Method::POST, "/holds/99999/payments", Some(r#"{"user_id":1}"#), 404, "not_found"),
        case(Method::POST, &pay, Some(r#"{}"#), 422, "invalid_user_id"),
        case(Method::POST, &pay, Some(r#"{"user_id":2}"#), 403, "forbidden"),
        case(Method::DELETE, "/holds/x", Some(r#"{"user_id":1}"#), 400, "malformed_request"),
        case(Method::DELETE, "/holds/99999", Some(r#"{"user_id":1}"#), 404, "not_found"),
        case(Method::DELETE, &release, Some(r#"{"user_id":2}"#), 403, "forbidden"),
        case(Method::DELETE, &release, Some(r#"{"user_id":-2}"#), 422, "invalid_user_id"),
        case(Method::GET, "/users/x/reservations", None, 400, "malformed_request"),
        case(Method::GET, "/no/such/thing", None, 404, "not_found"),
        case(Method::PUT, "/shows", None, 405, "method_not_allowed"),
    ];
    let mut key = case(Method::POST, "/wallets/1/charges", Some(r#"{"amount":1}"#), 400, "invalid_idempotency_key");
    key.headers.push(("idempotency-key", "has space".to_owned()));
    cases.push(key);
    cases
}

/// Every case on every endpoint: its status and code, problem+json, never
/// a 5xx, and the database exactly as it was.
#[tokio::test]
async fn bad_input_on_every_endpoint_is_a_4xx_problem_and_changes_no_row() -> anyhow::Result<()> {
    let office = Office::start(1, &[]).await?;
    let show = office.create_show(&[("vip", 100, 10)]).await?;
    office.charge(0, 1, 50, None).await?;
    let hold = office.hold(0, show, 1, &[1, 2]).await?.body["hold_id"]
        .as_i64()
        .unwrap();
    let before = office.fingerprint().await?;

    let cases: Vec<Case> = admin_cases()
        .into_iter()
        .chain(hold_cases(show))
        .chain(money_cases(hold))
        .collect();
    for case in &cases {
        let url = format!("{}{}", office.urls[0], case.path);
        let mut request = office.http.request(case.method.clone(), url);
        for (name, value) in &case.headers {
            request = request.header(*name, value);
        }
        if let Some(body) = case.body {
            request = request.body(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let content_type = response.headers().get("content-type").cloned();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let what = format!(
            "{} {} {:?}",
            case.method,
            case.path,
            case.body.map(|b| &b[..b.len().min(120)])
        );
        assert_eq!(
            (status, body["code"].as_str().unwrap_or("")),
            (case.status, case.code),
            "{what}"
        );
        assert_eq!(content_type.unwrap(), "application/problem+json", "{what}");
    }
    assert_eq!(
        office.fingerprint().await?,
        before,
        "bad input changed a row"
    );
    office.stop().await
}

/// Without `--admin-token` there is no admin API, whatever is sent.
#[tokio::test]
async fn without_an_admin_token_the_admin_api_is_off() -> anyhow::Result<()> {
    let office = Office::start_with(1, &[], false).await?;
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    for headers in [
        vec![],
        vec![("authorization", bearer.as_str())],
        vec![("authorization", "Bearer ")],
    ] {
        let answer = office
            .send(
                0,
                Method::POST,
                "/admin/shows",
                Some(serde_json::json!({"title": "x"})),
                &headers,
            )
            .await?;
        assert_eq!((answer.status, answer.code()), (403, "admin_disabled"));
    }
    let shows: i64 = sqlx::query_scalar("SELECT count(*) FROM shows")
        .fetch_one(&office.pool)
        .await?;
    assert_eq!(shows, 0);
    office.stop().await
}

//! `docs/openapi.yaml` names exactly the routes the servers serve.
//!
//! The routers build their routes through
//! [`ticket_core::api::listed::ListedRouter`], which records each one, so
//! the lists read here are the routes served, by construction. Each
//! operation in the document says which servers serve it (`x-served-by`).
//! A route without an entry, or an entry without a route, fails the first
//! test; the second sends every documented method and path to the real
//! servers and fails if one is answered by the router's fallback (404 "no
//! such resource", or 405).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use clap::Parser as _;
use load::servers::ServerSpec;
use ticket_core::api::listed::Route;

/// A method and a path, as the document and the routers both write them.
type Operation = (String, String);

/// The kinds of server the document describes, as `x-served-by` names them.
const LEVELS_0_TO_4: &str = "levels-0-4";
const LEVEL_6: &str = "level-6";
const LEVEL_5: &str = "level-5";

/// The document's operations, by the servers that serve them.
fn documented() -> BTreeMap<String, BTreeSet<Operation>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
    let text = std::fs::read_to_string(path).expect("docs/openapi.yaml is readable");
    let document: serde_json::Value =
        serde_yaml_ng::from_str(&text).expect("docs/openapi.yaml parses as YAML");
    assert_eq!(document["openapi"], "3.1.0");
    let mut by_server: BTreeMap<String, BTreeSet<Operation>> = BTreeMap::new();
    let paths = document["paths"].as_object().expect("a paths object");
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("a path item") {
            let servers = operation["x-served-by"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path} has no x-served-by"));
            for server in servers {
                by_server
                    .entry(server.as_str().expect("a server name").to_owned())
                    .or_default()
                    .insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    by_server
}

fn operations(routes: &[Route]) -> BTreeSet<Operation> {
    routes
        .iter()
        .map(|r| (r.method.clone(), r.path.to_owned()))
        .collect()
}

/// The routes each kind of server serves, read from the routers' own lists.
fn served() -> BTreeMap<String, BTreeSet<Operation>> {
    let shared = operations(ticket_core::api::listed().routes());
    // Level 6 answers its own routes and hands everything else to the
    // shared API.
    let mut level6 = operations(level6::http::listed().routes());
    level6.extend(shared.iter().cloned());
    let level5 = operations(level5::api::listed().routes());
    BTreeMap::from([
        (LEVELS_0_TO_4.to_owned(), shared),
        (LEVEL_6.to_owned(), level6),
        (LEVEL_5.to_owned(), level5),
    ])
}

/// Every route a server serves has an entry in docs/openapi.yaml, and every
/// entry has a route.
#[test]
fn the_document_names_exactly_the_routes_each_server_serves() {
    let documented = documented();
    let served = served();
    assert_eq!(
        documented.keys().collect::<Vec<_>>(),
        served.keys().collect::<Vec<_>>(),
        "x-served-by names an unknown server, or a server is missing"
    );
    for (server, routes) in &served {
        let entries = &documented[server];
        let undocumented: Vec<_> = routes.difference(entries).collect();
        let unserved: Vec<_> = entries.difference(routes).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "{server}: routes without an entry in docs/openapi.yaml: {undocumented:?}; \
             entries without a route: {unserved:?}"
        );
    }
}

/// A documented path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|part| {
            if part == "{token}" || part == "{request_id}" {
                "no-such-id"
            } else if part.starts_with('{') {
                "1"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Sends `method path` (with a small JSON body) to `base` and fails if the
/// router's fallback answered it.
async fn assert_routed(
    http: &reqwest::Client,
    base: &str,
    server: &str,
    (method, path): &Operation,
) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
    let answer = http
        .request(method.clone(), format!("{base}{}", concrete(path)))
        .header("content-type", "application/json")
        .body(r#"{"user_id": 1}"#)
        .send()
        .await
        .unwrap_or_else(|err| panic!("{server}: {method} {path}: {err}"));
    let status = answer.status().as_u16();
    let body = answer.text().await.unwrap_or_default();
    let fallback = status == 405 || (status == 404 && body.contains("no such resource"));
    assert!(
        !fallback,
        "{server}: {method} {path} reached the router's fallback ({status} {body})"
    );
}

/// Every documented method and path reaches a handler of the real server
/// (Level 0 for the shared API, Level 6, Level 5 with its waiting room on),
/// not the 404/405 fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_reaches_a_handler_of_the_real_servers() {
    let documented = documented();
    let http = reqwest::Client::new();

    let (shared, _) = common::servers(&ServerSpec::new(0, "naive"), 1).await;
    for operation in &documented[LEVELS_0_TO_4] {
        assert_routed(&http, &shared[0].url(), LEVELS_0_TO_4, operation).await;
    }
    common::stop(shared).await;

    let (level6, _) = common::servers(&ServerSpec::new(6, "partitioned"), 1).await;
    for operation in &documented[LEVEL_6] {
        assert_routed(&http, &level6[0].url(), LEVEL_6, operation).await;
    }
    common::stop(level6).await;

    let database = common::fresh_database().await;
    let redis = common::shared_redis_url().await;
    let argv = [
        "level5",
        "--port",
        "0",
        "--database-url",
        &database,
        "--redis-url",
        &redis,
        "--queue",
        "on",
        "--admin-token",
        "openapi-test-token",
    ];
    let office = level5::Cli::try_parse_from(argv)
        .expect("Level 5's flags")
        .start()
        .await
        .expect("Level 5 starts");
    for operation in &documented[LEVEL_5] {
        assert_routed(&http, &office.url(), LEVEL_5, operation).await;
    }
    office.stop().await.expect("Level 5 stops");
}

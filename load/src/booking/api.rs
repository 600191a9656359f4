//! The box-office API as a user's browser calls it: one shared HTTP client,
//! a cap on requests in flight, and failover to the next server when one
//! does not answer at all.
//!
//! 10,000 users are 10,000 tasks, but not 10,000 sockets: a user spends
//! most of its time waiting in the queue or thinking, and a request only
//! takes a place ([`Api::in_flight`]) while it is on the wire. The cap
//! keeps the load tool from exhausting its own file descriptors and the
//! servers' accept queues, which would measure the machine, not the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Semaphore;

use super::record::Step;

/// An HTTP answer: status and JSON body (problem+json on failures).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The parsed body (`Null` when it was not JSON).
    pub body: Value,
    /// How long the request took, queueing for a place excluded.
    pub took: Duration,
}

impl Answer {
    /// The problem's `code`, or "" for a success.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// The server's hint for when to come back: `retry_after_ms` in the
    /// body, else `fallback`.
    pub fn retry_after(&self, fallback: Duration) -> Duration {
        self.body["retry_after_ms"]
            .as_u64()
            .map_or(fallback, Duration::from_millis)
    }
}

/// One request, described once so it can be sent again to another server.
#[derive(Debug, Clone)]
pub struct Call {
    /// Which step of the journey (for latency).
    pub step: Step,
    /// `GET`, `POST` or `DELETE`.
    pub method: reqwest::Method,
    /// The path, from `/`.
    pub path: String,
    /// The JSON body, if any.
    pub body: Option<Value>,
    /// Extra headers (`Queue-Token`, `Idempotency-Key`, `Authorization`).
    pub headers: Vec<(&'static str, String)>,
}

impl Call {
    /// Whether sending it twice does no harm: a GET, or a call whose
    /// `Idempotency-Key` makes the server answer a repeat with the first
    /// answer.
    pub fn is_repeatable(&self) -> bool {
        self.method == reqwest::Method::GET
            || self
                .headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("idempotency-key"))
    }

    /// A GET of `path`.
    pub fn get(step: Step, path: impl Into<String>) -> Self {
        Self {
            step,
            method: reqwest::Method::GET,
            path: path.into(),
            body: None,
            headers: Vec::new(),
        }
    }

    /// A POST of `body` to `path`.
    pub fn post(step: Step, path: impl Into<String>, body: Value) -> Self {
        Self {
            step,
            method: reqwest::Method::POST,
            path: path.into(),
            body: Some(body),
            headers: Vec::new(),
        }
    }

    /// The same call with one more header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// The servers and the shared client every user calls through.
#[derive(Clone)]
pub struct Api {
    targets: Arc<Vec<String>>,
    client: reqwest::Client,
    in_flight: Arc<Semaphore>,
}

/// How long one request may take before it counts as a transport failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times a repeatable call goes round every server before the
/// journey ends in a transport error.
pub const ROUNDS: u32 = 3;

/// The pause before each further round.
const ROUND_BACKOFF: ticket_core::backoff::Backoff = ticket_core::backoff::Backoff::equal_jitter(
    Duration::from_millis(100),
    Duration::from_millis(1000),
);

impl Api {
    /// An API over `targets` with at most `connections` requests in flight.
    pub fn new(targets: Vec<String>, connections: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(!targets.is_empty(), "no servers to send users to");
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(connections.max(1))
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()?;
        Ok(Self {
            targets: Arc::new(targets),
            client,
            in_flight: Arc::new(Semaphore::new(connections.max(1))),
        })
    }

    /// How many servers there are.
    pub fn servers(&self) -> usize {
        self.targets.len()
    }

    /// The base URLs.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// Sends `call` to server `home`; when that server does not answer at
    /// all (refused, reset, timed out), to the next one, and so on once
    /// round. A call that is safe to send again (a GET, or one carrying an
    /// `Idempotency-Key`) goes round again after a short backoff, up to
    /// [`ROUNDS`] times: with a server killed and the machine loaded, the
    /// survivor may also drop one connection. Returns the answer and the
    /// server that gave it, or every server's last error.
    pub async fn send(&self, home: usize, call: &Call) -> Result<(Answer, usize), String> {
        let rounds = if call.is_repeatable() { ROUNDS } else { 1 };
        let mut errors = vec![String::new(); self.targets.len()];
        for round in 0..rounds {
            if round > 0 {
                tokio::time::sleep(ROUND_BACKOFF.delay(round - 1)).await;
            }
            for offset in 0..self.targets.len() {
                let server = (home + offset) % self.targets.len();
                match self.send_to(server, call).await {
                    Ok(answer) => return Ok((answer, server)),
                    Err(err) => errors[server] = err,
                }
            }
        }
        Err(errors.join("; "))
    }

    async fn send_to(&self, server: usize, call: &Call) -> Result<Answer, String> {
        let url = format!("{}{}", self.targets[server], call.path);
        let mut request = self.client.request(call.method.clone(), &url);
        for (name, value) in &call.headers {
            request = request.header(*name, value);
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        // The place is held for the request and its body, not longer.
        let _place = self.in_flight.acquire().await.map_err(|e| e.to_string())?;
        let started = Instant::now();
        let response = request
            .send()
            .await
            .map_err(|e| format!("{} {url}: {}", call.method, crate::failures::chain(&e)))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| format!("{} {url}: {}", call.method, crate::failures::chain(&e)))?;
        Ok(Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            took: started.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::booking::record::Step;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A server that drops its first connection unanswered (as a loaded
    /// survivor or a dying server may) and answers `{}` on every later one.
    async fn drops_the_first_connection() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (first, _) = listener.accept().await.unwrap();
            drop(first);
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0_u8; 4096];
                let _ = socket.read(&mut request).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                    )
                    .await;
            }
        });
        url
    }

    #[test]
    fn gets_and_keyed_calls_are_repeatable_other_posts_are_not() {
        assert!(Call::get(Step::Charge, "/wallets/1").is_repeatable());
        let charge = Call::post(Step::Charge, "/wallets/1/charges", json_body());
        assert!(!charge.is_repeatable());
        assert!(charge.header("Idempotency-Key", "k").is_repeatable());
    }

    fn json_body() -> Value {
        serde_json::json!({ "amount": 1 })
    }

    #[tokio::test]
    async fn a_keyed_call_whose_connection_dropped_goes_round_again() {
        let api = Api::new(vec![drops_the_first_connection().await], 4).unwrap();
        let call = Call::post(Step::Charge, "/wallets/1/charges", json_body())
            .header("idempotency-key", "k");
        let (answer, server) = api.send(0, &call).await.expect("answered on round two");
        assert_eq!((answer.status, server), (200, 0));
    }

    #[tokio::test]
    async fn an_unkeyed_post_is_sent_once() {
        let api = Api::new(vec![drops_the_first_connection().await], 4).unwrap();
        let call = Call::post(Step::Hold, "/shows/1/holds", json_body());
        assert!(api.send(0, &call).await.is_err());
    }
}

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
    /// round. Returns the answer and the server that gave it.
    pub async fn send(&self, home: usize, call: &Call) -> Result<(Answer, usize), String> {
        let mut last = String::new();
        for offset in 0..self.targets.len() {
            let server = (home + offset) % self.targets.len();
            match self.send_to(server, call).await {
                Ok(answer) => return Ok((answer, server)),
                Err(err) => last = err,
            }
        }
        Err(last)
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

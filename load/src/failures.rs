//! Failed answers, by kind, each with one sample message.
//!
//! "errors: 1000" says nothing a person can act on. A typo in `--target`,
//! a server that is down, one that is too slow and one that answers 500
//! all look alike as a count. So every failure is filed under a kind
//! (`refused`, `timeout`, `4xx`, `5xx`, `transport`) and the first message
//! of each kind is kept, to be printed beside the count.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One kind of failure: how many, and what the first one said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureKind {
    /// Failed answers of this kind.
    pub count: u64,
    /// The first one's message.
    pub sample: String,
}

/// Failures by kind, shared by every buyer of a run.
#[derive(Debug, Default)]
pub struct Failures {
    kinds: Mutex<BTreeMap<&'static str, FailureKind>>,
}

/// The kinds, as they appear in JSON (`error_kinds`).
pub mod kind {
    /// The connection was refused or could not be made (wrong port, server
    /// down, bad host name).
    pub const REFUSED: &str = "refused";
    /// No answer within the request timeout.
    pub const TIMEOUT: &str = "timeout";
    /// An answer in the 4xx range the API does not give to this request.
    pub const CLIENT_ERROR: &str = "4xx";
    /// A 5xx answer other than 503 `busy`: always a server bug.
    pub const SERVER_ERROR: &str = "5xx";
    /// Any other transport failure (the connection dropped, a bad body).
    pub const TRANSPORT: &str = "transport";
    /// A load balancer's 502 or 504 (the server it chose failed after the
    /// purchase reached it) that the buyer retried with its
    /// Idempotency-Key: counted, but not a final error.
    pub const GATEWAY: &str = "gateway";
    /// A 409 `request_in_progress` the buyer asked again about: its key's
    /// first request is still at work, or died with its server and holds
    /// the key until its lease runs out. Counted, not a final error.
    pub const IN_PROGRESS: &str = "in_progress";
}

impl Failures {
    /// Files a transport error under its kind.
    pub fn transport(&self, url: &str, err: &reqwest::Error) {
        let kind = if err.is_timeout() {
            kind::TIMEOUT
        } else if err.is_connect() {
            kind::REFUSED
        } else {
            kind::TRANSPORT
        };
        self.record(kind, || format!("{url}: {}", chain(err)));
    }

    /// Files an unexpected HTTP answer (`status` with `body`), naming the
    /// server's `x-request-id` when it sent one, so the server's log line
    /// for that request can be found.
    pub fn answer(&self, url: &str, status: u16, request_id: Option<&str>, body: &str) {
        let kind = if status >= 500 {
            kind::SERVER_ERROR
        } else if status >= 400 {
            kind::CLIENT_ERROR
        } else {
            kind::TRANSPORT
        };
        let body: String = body.chars().take(200).collect();
        let id = request_id.map_or_else(String::new, |id| format!(" (x-request-id {id})"));
        self.record(kind, || format!("{url}: HTTP {status}{id} {}", body.trim()));
    }

    /// Files one failure of `kind`; `sample` is only built for the first.
    pub fn record(&self, kind: &'static str, sample: impl FnOnce() -> String) {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        kinds
            .entry(kind)
            .and_modify(|k| k.count += 1)
            .or_insert_with(|| FailureKind {
                count: 1,
                sample: sample(),
            });
    }

    /// Every kind seen, by name.
    pub fn snapshot(&self) -> BTreeMap<String, FailureKind> {
        let kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        kinds
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }
}

/// An error with its causes, on one line: reqwest's own message is often
/// only "error sending request", and the cause ("Connection refused") is
/// what a person needs.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_keeps_its_count_and_first_sample() {
        let failures = Failures::default();
        failures.answer("http://a", 500, Some("4f2a"), "boom");
        failures.answer("http://a", 502, None, "later");
        failures.answer("http://a", 404, None, "{\"code\":\"not_found\"}");
        let kinds = failures.snapshot();
        assert_eq!(kinds["5xx"].count, 2);
        assert_eq!(
            kinds["5xx"].sample,
            "http://a: HTTP 500 (x-request-id 4f2a) boom"
        );
        assert_eq!(kinds["4xx"].count, 1);
        assert!(!kinds.contains_key("refused"));
    }
}

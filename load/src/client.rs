//! The connections the load tool opens: one HTTP client per buyer (and the
//! open-file limit they need), and a small pool to the database it judges
//! from.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use ticket_core::db;

/// One buyer's own HTTP client: one connection, kept, no proxy. Sustained
/// runs and ceilings use the same.
pub(crate) fn buyer_client() -> reqwest::Result<reqwest::Client> {
    buyer_client_waiting(REQUEST_TIMEOUT)
}

/// A buyer's client whose requests give up after `timeout`.
pub(crate) fn buyer_client_waiting(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(timeout)
        .no_proxy()
        .build()
}

/// [`buyer_client_waiting`] whose connection set-ups are timed by `clock`:
/// a rush's buyer, whose latency is split into connecting, queueing and the
/// server's own time.
pub(crate) fn timed_buyer_client(
    timeout: Duration,
    clock: ConnectClock,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(timeout)
        .no_proxy()
        .connector_layer(clock)
        .build()
}

/// Counts the connections a client opens and the time it spent opening
/// them (TCP connect, as reqwest's connector does it). A buyer whose
/// warm-up connection was kept opens none after the start.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectClock {
    micros: Arc<AtomicU64>,
    opened: Arc<AtomicU64>,
}

impl ConnectClock {
    /// Connections opened so far, and the microseconds they took.
    pub(crate) fn read(&self) -> (u64, u64) {
        (
            self.opened.load(Ordering::Relaxed),
            self.micros.load(Ordering::Relaxed),
        )
    }
}

impl<S> tower::Layer<S> for ConnectClock {
    type Service = TimedConnect<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimedConnect {
            inner,
            clock: self.clone(),
        }
    }
}

/// The connector wrapped by [`ConnectClock`].
#[derive(Debug, Clone)]
pub(crate) struct TimedConnect<S> {
    inner: S,
    clock: ConnectClock,
}

impl<S, R> tower::Service<R> for TimedConnect<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, target: R) -> Self::Future {
        let started = Instant::now();
        let connecting = self.inner.call(target);
        let clock = self.clock.clone();
        Box::pin(async move {
            let connected = connecting.await;
            let micros = started.elapsed().as_micros() as u64;
            clock.micros.fetch_add(micros, Ordering::Relaxed);
            clock.opened.fetch_add(1, Ordering::Relaxed);
            connected
        })
    }
}

/// A client that keeps up to `connections` connections per server, for
/// the open model's in-flight requests.
pub(crate) fn pooled_client(connections: usize) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(REQUEST_TIMEOUT)
        .no_proxy()
        .build()
}

/// How long one request of a sustained run may take before it counts as an
/// error. A sell-out's buyers wait as long as the rush may last (its
/// `timeout`): a slow answer there is the server's latency, which the report
/// shows, not a failure; a server that never answers ends the rush.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens a small pool to the rush's database, for callers that need to look
/// at it themselves.
pub async fn open_database(url: &str) -> anyhow::Result<PgPool> {
    db::connect(url, 2, Duration::from_secs(10)).await
}

/// Raises this process's open-file limit to its hard limit: every buyer
/// holds a socket, and in-process servers hold the other end.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// The server's `x-request-id` for this answer, if it sent one.
pub(crate) fn request_id_of(response: &reqwest::Response) -> Option<String> {
    let id = response.headers().get(ticket_core::api::REQUEST_ID)?;
    id.to_str().ok().map(str::to_owned)
}

/// The `Idempotency-Key` of buyer `index` of the run numbered `run`.
pub(crate) fn idempotency_key(run: u64, index: u64) -> String {
    format!("load-{run:016x}-{index}")
}

/// The `Retry-After` header's seconds, if any.
pub(crate) fn retry_after_of(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// How long a 503 asks the buyer to wait: the body's `retry_after_ms`, else
/// the `Retry-After` header, else 20 ms.
pub(crate) fn busy_hint(body: &serde_json::Value, retry_after: Option<Duration>) -> Duration {
    body.get("retry_after_ms")
        .and_then(|v| v.as_u64())
        .map(Duration::from_millis)
        .or(retry_after)
        .unwrap_or(Duration::from_millis(20))
}

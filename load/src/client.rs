//! The connections the load tool opens: one HTTP client per buyer (and the
//! open-file limit they need), and a small pool to the database it judges
//! from.

use std::time::Duration;

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

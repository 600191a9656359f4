//! The pause between two tries: the workspace's one [`Backoff`] (each
//! caller keeps its own try counter beside the call), and a sleep that a
//! shutdown cuts short.

use std::time::Duration;

pub use ticket_core::backoff::Backoff;
use tokio::sync::watch;

/// Sleeps for `pause` unless `shutdown` turns true first; returns whether to
/// go on.
pub async fn sleep_unless(pause: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(pause) => !*shutdown.borrow(),
        _ = shutdown.changed() => false,
    }
}

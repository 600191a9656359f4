//! Every server's ticker: moves the lines even when no request comes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Queue;

/// Runs [`Queue::tick`] every `every` until `stop` changes. Idle admitted
/// users expire and the next are admitted even if every client went quiet;
/// every server ticks, so this too survives any one of them dying.
pub fn spawn_ticker(
    queue: Arc<Queue>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(every) => {}
            }
            if let Err(err) = queue.tick().await {
                tracing::debug!(error = %err, "a queue tick failed; the next one retries");
            }
        }
    })
}

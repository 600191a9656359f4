//! Request/reply over the log: how the HTTP handler that appended a
//! request hears its answer.
//!
//! Every server subscribes to one pub/sub channel of its own
//! ([`Keys::replies`]); a request names it (`reply_to`), and the decider
//! PUBLISHes the answer there after COMMIT. A decider in the same process
//! hands the answer over directly. Pub/sub loses messages while a
//! connection is down; that costs nothing but time: the handler answers
//! 202 with `Location: /requests/{id}`, and the answer is in PostgreSQL
//! for the poll. The answer is never guessed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

use crate::log::{Answer, Keys};

/// The handlers waiting in this server, by request id.
#[derive(Clone, Default)]
pub struct Replies {
    // A parking_lot mutex: held for one map operation, never across an await.
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Answer>>>>,
}

impl Replies {
    /// Registers a handler waiting for `id`'s answer.
    pub fn wait_for(&self, id: &str) -> oneshot::Receiver<Answer> {
        let (send, receive) = oneshot::channel();
        self.waiting.lock().insert(id.to_owned(), send);
        receive
    }

    /// Stops waiting for `id` (the handler gave up and answered 202).
    pub fn forget(&self, id: &str) {
        self.waiting.lock().remove(id);
    }

    /// Delivers an answer to its handler, if one still waits here.
    pub fn deliver(&self, answer: Answer) {
        let waiter = self.waiting.lock().remove(&answer.id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(answer);
        }
    }
}

/// Listens on this server's channel and delivers what arrives, until
/// `shutdown`; reconnects after Redis comes back.
pub async fn listen(
    client: redis::Client,
    keys: Keys,
    instance: String,
    replies: Replies,
    mut shutdown: watch::Receiver<bool>,
) {
    let channel = keys.replies(&instance);
    while !*shutdown.borrow() {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let mut pubsub = match tokio::time::timeout(Duration::from_secs(2), subscribed).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(err)) => {
                tracing::debug!(%err, "cannot subscribe to replies yet");
                if sleep_or_stop(&mut shutdown, Duration::from_millis(200)).await {
                    return;
                }
                continue;
            }
            Err(_) => continue,
        };
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let payload: Vec<u8> = message.get_payload_bytes().to_vec();
                    match serde_json::from_slice::<Answer>(&payload) {
                        Ok(answer) => replies.deliver(answer),
                        Err(err) => tracing::warn!(%err, "an unreadable reply"),
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
        tracing::debug!("the reply subscription ended; subscribing again");
    }
}

/// Sleeps `pause` unless `shutdown` turns true first; says whether it did.
pub async fn sleep_or_stop(shutdown: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(pause) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

//! The decider: one task per partition per server, of which at most one
//! at a time (across every server) holds the partition's lease and decides.
//!
//! The lease is Level 3's lock ([`level3::lock`]) on the name `p<N>`, with
//! a watchdog: the holder's process renews it every third of the lease
//! while it lives, so a decider that dies (its process killed) loses it
//! within one lease, and the others, waiting on the lock, take over. A
//! process that *stalls* (stopped, swapped out, a long pause) stops
//! renewing too, and its lease is handed on while it still believes it
//! decides: that is the zombie the fencing token stops ([`crate::batch`]).
//!
//! Kafka calls the same pieces the group coordinator (who owns which
//! partition), the generation / producer epoch (our fencing token), and
//! the consumer's committed offset (our XACK after COMMIT).

use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::AsyncCommands as _;

use crate::batch::{self, BatchError, Writer};
use crate::context::Shared;
use crate::log::{Answer, Keys, Request, GROUP};
use crate::replies::sleep_or_stop;
use crate::state::PartitionState;

/// How long a blocking read waits for new requests before looking again at
/// the lease and the shutdown flag.
const READ_BLOCK: Duration = Duration::from_millis(100);

/// Why a decider stopped deciding.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// The server is shutting down.
    Shutdown,
    /// The lease is gone (it ran out, Redis lost it) or the fence refused
    /// a batch: someone else owns the partition now.
    LostPartition,
    /// This server owns more than its share since another one joined: it
    /// gives this partition back ([`crate::members`]).
    Rebalanced,
}

/// Contends for partition `p` until the server shuts down: whenever this
/// task holds the lease, it decides.
pub async fn contend(shared: std::sync::Arc<Shared>, p: u32) {
    let lock = shared.locks.lock(&Keys::lease_name(p));
    let mut shutdown = shared.shutdown.clone();
    while !*shutdown.borrow() {
        let guard = tokio::select! {
            guard = lock.try_lock(Duration::from_secs(1), level3::lock::Lease::Watchdog) => guard,
            _ = shutdown.changed() => return,
        };
        let guard = match guard {
            Ok(guard) => guard,
            Err(level3::lock::LockError::Timeout { .. }) => continue,
            Err(err) => {
                tracing::debug!(partition = p, %err, "cannot contend for the lease yet");
                if sleep_or_stop(&mut shutdown, Duration::from_millis(200)).await {
                    return;
                }
                continue;
            }
        };
        let token = guard.fencing_token();
        match batch::take_fence(&shared.pool, p, token).await {
            Ok(Ok(())) => {
                tracing::info!(partition = p, token, instance = %shared.instance, "took the partition");
                shared.members.took(p);
                let stop = decide_while_owner(&shared, p, token, &guard).await;
                shared.members.gave_up(p);
                tracing::info!(partition = p, token, ?stop, "stopped deciding");
            }
            Ok(Err(theirs)) => {
                // Redis handed out a token below the fence (it lost its
                // counter): raise the counter and take the lease again.
                tracing::warn!(partition = p, token, theirs, "stale fencing token");
                let _ = lock
                    .raise_token_floor(u64::try_from(theirs).unwrap_or(0))
                    .await;
            }
            Err(err) => tracing::warn!(partition = p, %err, "cannot write the fence"),
        }
        let _ = guard.release().await;
    }
}

/// Decides partition `p` under `token` until the lease is lost, the fence
/// refuses us, or the server stops.
async fn decide_while_owner(
    shared: &Shared,
    p: u32,
    token: u64,
    guard: &level3::lock::LockGuard,
) -> Stop {
    let writer = Writer {
        partition: p,
        token,
        think: shared.think,
    };
    let (mut state, mut log) = match shared.rebuild(p).await {
        Ok(rebuilt) => rebuilt,
        Err(err) => {
            tracing::warn!(partition = p, %err, "cannot rebuild the partition's state");
            return Stop::LostPartition;
        }
    };
    let stream = shared.keys.stream(p);
    let Ok(mut conn) = shared.redis.get_multiplexed_async_connection().await else {
        return Stop::LostPartition;
    };
    let mut shutdown = shared.shutdown.clone();
    // First what a previous owner read and never acknowledged (it died or
    // was fenced off mid-batch): XAUTOCLAIM hands it to us, in order.
    let mut claiming = true;
    loop {
        if *shutdown.borrow() {
            return Stop::Shutdown;
        }
        if guard.is_lost() {
            return Stop::LostPartition;
        }
        // Between two batches, nothing read and not decided: the place to
        // hand the partition over if this server has more than its share.
        if !claiming && shared.members.should_step_down(p) {
            return Stop::Rebalanced;
        }
        let entries = if claiming {
            claim(&mut conn, &stream, &shared.instance, shared.batch_size).await
        } else {
            read(&mut conn, &stream, &shared.instance, shared.batch_size).await
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(err) => {
                tracing::debug!(partition = p, %err, "cannot read the partition");
                let _ = ensure_group(&mut conn, &stream).await;
                if sleep_or_stop(&mut shutdown, Duration::from_millis(100)).await {
                    return Stop::Shutdown;
                }
                continue;
            }
        };
        if claiming && entries.len() < shared.batch_size {
            claiming = false;
        }
        if entries.is_empty() {
            continue;
        }
        let owner = Owner {
            writer,
            state: &mut state,
            log: &mut log,
        };
        if let Err(stop) = handle(shared, &mut conn, &stream, owner, &entries).await {
            return stop;
        }
    }
}

/// What the owner of a partition holds while it decides.
struct Owner<'a> {
    writer: Writer,
    state: &'a mut PartitionState,
    log: &'a mut crate::changelog::Changelog,
}

/// Decides and writes one batch of entries, then acknowledges and answers.
async fn handle(
    shared: &Shared,
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    owner: Owner<'_>,
    entries: &[StreamId],
) -> Result<(), Stop> {
    let Owner { writer, state, log } = owner;
    let requests: Vec<Request> = entries
        .iter()
        .filter_map(|entry| match Request::from_fields(&entry.map) {
            Ok(request) => Some(request),
            Err(err) => {
                tracing::warn!(id = %entry.id, %err, "an unreadable request, dropped");
                None
            }
        })
        .collect();
    let mut shutdown = shared.shutdown.clone();
    let answers = loop {
        match batch::run_batch(&shared.pool, state, writer, &requests).await {
            Ok(answers) => break answers,
            Err(BatchError::Fenced { .. }) => {
                shared.count_fenced();
                tracing::warn!(
                    partition = writer.partition,
                    token = writer.token,
                    "fenced off: a newer owner has the partition"
                );
                return Err(Stop::LostPartition);
            }
            Err(BatchError::Database(err)) => {
                tracing::warn!(partition = writer.partition, %err, "the batch was not written; retrying");
                if sleep_or_stop(&mut shutdown, Duration::from_millis(200)).await {
                    return Err(Stop::Shutdown);
                }
            }
        }
    };
    // COMMIT is done: now (and only now) the entries are acknowledged and
    // the buyers answered. A crash here redelivers them, and the batch
    // finds their answers recorded.
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    let acked: redis::RedisResult<i64> = conn.xack(stream, GROUP, &ids).await;
    if let Err(err) = acked {
        tracing::debug!(%err, "XACK failed; the entries will be redelivered and replayed");
    }
    shared
        .after_commit(writer.partition, log, state, &requests, &answers)
        .await;
    for (request, answer) in requests.iter().zip(answers) {
        send_answer(shared, conn, request, answer).await;
    }
    Ok(())
}

/// How long a decider keeps publishing an answer nobody heard (PUBLISH
/// reached no subscriber: the waiting server is resubscribing after a
/// Redis restart) before leaving it to the poll.
const REPUBLISH_FOR: Duration = Duration::from_secs(3);

/// Sends `answer` to the server waiting for it.
async fn send_answer(
    shared: &Shared,
    conn: &mut redis::aio::MultiplexedConnection,
    request: &Request,
    answer: Answer,
) {
    if request.reply_to == shared.instance {
        shared.replies.deliver(answer);
        return;
    }
    let channel = shared.keys.replies(&request.reply_to);
    let payload = serde_json::to_string(&answer).expect("an answer serializes");
    let heard: redis::RedisResult<i64> = conn.publish(&channel, &payload).await;
    if matches!(heard, Ok(0) | Err(_)) {
        // Nobody heard it. Try again for a while, off the decider's path.
        let mut conn = conn.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + REPUBLISH_FOR;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let heard: redis::RedisResult<i64> = conn.publish(&channel, &payload).await;
                if matches!(heard, Ok(n) if n > 0) {
                    return;
                }
            }
            tracing::debug!(%channel, "a reply nobody heard; the buyer will poll");
        });
    }
}

/// Creates the consumer group (and the stream) if missing.
pub async fn ensure_group(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Takes over every entry another consumer read and did not acknowledge.
async fn claim(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    consumer: &str,
    count: usize,
) -> redis::RedisResult<Vec<StreamId>> {
    ensure_group(conn, stream).await?;
    let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
        .arg(stream)
        .arg(GROUP)
        .arg(consumer)
        .arg(0)
        .arg("0-0")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(reply.claimed)
}

/// Reads new entries, waiting up to [`READ_BLOCK`].
async fn read(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    consumer: &str,
    count: usize,
) -> redis::RedisResult<Vec<StreamId>> {
    let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(READ_BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(conn)
        .await?;
    Ok(reply
        .map(|reply| reply.keys.into_iter().flat_map(|key| key.ids).collect())
        .unwrap_or_default())
}

//! The worker: reading the stream, taking over from the dead, and handing
//! batches to the batch write.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use ticket_core::metrics::Metrics;
use tokio::sync::watch;

use super::event::{DeadLetter, OrderEvent, Outcome};
use super::handle::{AbortOnDrop, WorkerHandle, WorkerStats};
use super::{sleep_unless, Backoff, PersistOptions};
use crate::keys::GROUP;
use crate::store::{RedisConn, SaleStore, RESPONSE_TIMEOUT};

/// How long one read waits for new entries before looking for dead
/// workers' entries and doing housekeeping.
pub(super) const BLOCK: Duration = Duration::from_millis(500);

/// How often the stream is trimmed and dead consumers forgotten.
pub(super) const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);

/// How entries came to this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    /// Read new (`XREADGROUP ... >`): delivered once, to this worker.
    First,
    /// Delivered before: this consumer's own pending entries after a
    /// restart, or entries claimed from a worker that stopped. Their
    /// delivery counts are read.
    Again,
}

/// A persistence worker. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    pub(super) store: SaleStore,
    /// A connection of its own for the blocking reads: `XREADGROUP BLOCK`
    /// holds the connection until entries arrive, and on a shared
    /// (multiplexed) connection every purchase behind it would wait too.
    pub(super) reader: RedisConn,
    pub(super) options: Arc<PersistOptions>,
    pub(super) stats: Arc<WorkerStats>,
    pub(super) metrics: Metrics,
}

impl Worker {
    /// A worker for `store`'s database.
    pub fn new(
        store: SaleStore,
        options: PersistOptions,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let reader = RedisConn::new(store.redis().url(), BLOCK + RESPONSE_TIMEOUT)?;
        Ok(Self {
            store,
            reader,
            options: Arc::new(options),
            stats: Arc::new(WorkerStats::default()),
            metrics,
        })
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Runs it in a task of its own; the handle stops it.
    pub fn spawn(self) -> WorkerHandle {
        let (shutdown, stopped) = watch::channel(false);
        let stats = self.stats.clone();
        let task = tokio::spawn(self.run(stopped));
        WorkerHandle {
            shutdown,
            task: Some(task),
            stats,
        }
    }

    /// Works until `shutdown` turns true (or its sender is dropped). A panic
    /// inside (a bug) restarts the work after a pause instead of silently
    /// ending persistence for this server.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let backoff = Backoff::equal_jitter(self.options.backoff_base, self.options.backoff_max);
        let mut retry = 0;
        loop {
            let work = AbortOnDrop(tokio::spawn(self.clone().work(shutdown.clone())));
            match work.join().await {
                Ok(()) => return,
                Err(err) if err.is_panic() => {
                    tracing::error!(consumer = %self.options.consumer, "the persistence worker panicked; restarting it");
                    retry += 1;
                    if !sleep_unless(backoff.delay(retry), &mut shutdown).await {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }

    pub(super) async fn work(self, mut shutdown: watch::Receiver<bool>) {
        let backoff = Backoff::equal_jitter(self.options.backoff_base, self.options.backoff_max);
        let mut retry = 0;
        let mut state = ReadState::new();
        tracing::info!(consumer = %self.options.consumer, "persistence worker started");
        while !*shutdown.borrow() {
            match self.step(&mut state, &mut shutdown).await {
                Ok(()) => retry = 0,
                Err(err) => {
                    if err.code() == Some("NOGROUP") {
                        // The group is gone (first start, or Redis lost its
                        // data): make it and read from the beginning.
                        state.group_ready = false;
                    } else {
                        tracing::warn!(consumer = %self.options.consumer, %err, "the persistence worker cannot reach Redis");
                    }
                    self.metrics.event("persist_redis_error");
                    retry += 1;
                    if !sleep_unless(backoff.delay(retry), &mut shutdown).await {
                        break;
                    }
                }
            }
        }
        tracing::info!(consumer = %self.options.consumer, "persistence worker stopped");
    }

    /// One round: make the group if needed, finish what this consumer held
    /// before a restart, take over dead workers' entries when due, read new
    /// ones, tidy up when due.
    pub(super) async fn step(
        &self,
        state: &mut ReadState,
        shutdown: &mut watch::Receiver<bool>,
    ) -> redis::RedisResult<()> {
        // Peak shaving: with a rate cap, the next batch waits its turn.
        if Instant::now() < state.paced_until {
            tokio::select! {
                () = tokio::time::sleep_until(state.paced_until.into()) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
        if !state.group_ready {
            self.create_group().await?;
            state.group_ready = true;
            state.own_cursor = Some("0".into());
        }
        if let Some(cursor) = state.own_cursor.clone() {
            let entries = self.read(&cursor, None, self.options.batch_size).await?;
            match entries.last() {
                None => state.own_cursor = None,
                Some(last) => {
                    state.own_cursor = Some(last.id.clone());
                    self.pace(state, entries.len());
                    self.process(entries, Delivery::Again, shutdown).await?;
                }
            }
            return Ok(());
        }
        if Instant::now() >= state.next_claim {
            let claimed = self.claim(&mut state.claim_cursor).await?;
            if state.claim_cursor == "0-0" {
                state.next_claim = Instant::now() + self.options.claim_idle / 2;
            }
            if !claimed.is_empty() {
                self.pace(state, claimed.len());
                self.process(claimed, Delivery::Again, shutdown).await?;
                return Ok(());
            }
        }
        if Instant::now() >= state.next_maintenance {
            self.maintain().await?;
            state.next_maintenance = Instant::now() + MAINTENANCE_EVERY;
        }
        let mut entries = tokio::select! {
            read = self.read(">", Some(BLOCK), self.options.batch_size) => read?,
            _ = shutdown.changed() => return Ok(()),
        };
        // Linger: a batch that is not full waits a moment for more. Fewer,
        // bigger transactions cost PostgreSQL less per order, for a few
        // milliseconds more of persistence lag.
        if !entries.is_empty()
            && entries.len() < self.options.batch_size
            && !self.options.linger.is_zero()
        {
            tokio::time::sleep(self.options.linger).await;
            let more = self
                .read(">", None, self.options.batch_size - entries.len())
                .await?;
            entries.extend(more);
        }
        if !entries.is_empty() {
            self.pace(state, entries.len());
            self.process(entries, Delivery::First, shutdown).await?;
        }
        Ok(())
    }

    /// Books `count` orders against the rate cap: the next batch may start
    /// once they have "cost" their time at `max_rate` per second.
    pub(super) fn pace(&self, state: &mut ReadState, count: usize) {
        if self.options.max_rate == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(count as f64 / f64::from(self.options.max_rate));
        state.paced_until = state.paced_until.max(Instant::now()) + cost;
    }

    pub(super) async fn create_group(&self) -> redis::RedisResult<()> {
        let created: redis::RedisResult<()> = self
            .store
            .redis()
            .query(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(self.store.keys().orders())
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM"),
            )
            .await;
        match created {
            Err(err) if err.code() != Some("BUSYGROUP") => Err(err),
            _ => Ok(()),
        }
    }

    /// `XREADGROUP`: new entries (`>`), or this consumer's own pending ones
    /// after `from`.
    pub(super) async fn read(
        &self,
        from: &str,
        block: Option<Duration>,
        count: usize,
    ) -> redis::RedisResult<Vec<StreamId>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.options.consumer)
            .arg("COUNT")
            .arg(count.max(1));
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(self.store.keys().orders()).arg(from);
        let reply: Option<StreamReadReply> = self.reader.query(&cmd).await?;
        Ok(reply
            .and_then(|r| r.keys.into_iter().next())
            .map(|k| k.ids)
            .unwrap_or_default())
    }

    /// `XAUTOCLAIM`: takes over entries idle in other workers' hands for
    /// longer than `claim_idle`, walking the PEL from `cursor`.
    pub(super) async fn claim(&self, cursor: &mut String) -> redis::RedisResult<Vec<StreamId>> {
        let reply: StreamAutoClaimReply = self
            .store
            .redis()
            .query(
                redis::cmd("XAUTOCLAIM")
                    .arg(self.store.keys().orders())
                    .arg(GROUP)
                    .arg(&self.options.consumer)
                    .arg(self.options.claim_idle.as_millis() as u64)
                    .arg(cursor.as_str())
                    .arg("COUNT")
                    .arg(self.options.batch_size),
            )
            .await?;
        *cursor = reply.next_stream_id;
        if !reply.deleted_ids.is_empty() {
            tracing::warn!(
                count = reply.deleted_ids.len(),
                "pending entries had been deleted from the stream; dropped from the group"
            );
        }
        let claimed = reply.claimed;
        if !claimed.is_empty() {
            self.stats
                .claimed
                .fetch_add(claimed.len() as u64, Ordering::Relaxed);
            self.metrics.event("persist_claimed");
            tracing::info!(
                consumer = %self.options.consumer,
                count = claimed.len(),
                "took over entries a stopped worker had left unacknowledged"
            );
        }
        Ok(claimed)
    }

    /// How many times each of `entries` has been delivered (the group counts
    /// each read and each claim).
    pub(super) async fn deliveries(
        &self,
        entries: &[StreamId],
    ) -> redis::RedisResult<HashMap<String, u64>> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(HashMap::new());
        };
        let reply: StreamPendingCountReply = self
            .store
            .redis()
            .query(
                redis::cmd("XPENDING")
                    .arg(self.store.keys().orders())
                    .arg(GROUP)
                    .arg(&first.id)
                    .arg(&last.id)
                    .arg(entries.len())
                    .arg(&self.options.consumer),
            )
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|p| (p.id, p.times_delivered as u64))
            .collect())
    }

    /// Persists entries read from the stream. Entries delivered more than
    /// `max_deliveries` times (their holders kept stopping: perhaps one of
    /// them stops whoever holds it) are not dead-lettered for that alone:
    /// the good ones only shared a batch with the bad one. Each is tried
    /// alone, marked in `…:isolated` while it is; an entry found marked
    /// again stopped the worker that held it alone, and only that one goes
    /// to the dead letters.
    pub(super) async fn process(
        &self,
        entries: Vec<StreamId>,
        delivery: Delivery,
        shutdown: &mut watch::Receiver<bool>,
    ) -> redis::RedisResult<()> {
        let deliveries = match delivery {
            Delivery::First => HashMap::new(),
            Delivery::Again => self.deliveries(&entries).await?,
        };
        let delivered = |entry: &StreamId| deliveries.get(&entry.id).copied().unwrap_or(1);
        let (suspects, healthy): (Vec<StreamId>, Vec<StreamId>) = entries
            .into_iter()
            .partition(|entry| delivered(entry) > self.options.max_deliveries);
        if suspects.is_empty() {
            return self.process_batch(healthy, shutdown).await.map(|_| ());
        }
        let isolated = self.store.keys().isolated();
        let ids: Vec<&str> = suspects.iter().map(|e| e.id.as_str()).collect();
        let marked: Vec<Option<String>> = self
            .store
            .redis()
            .query(redis::cmd("HMGET").arg(&isolated).arg(&ids))
            .await?;
        let mut dead = Outcome::default();
        let mut alone = Vec::new();
        for (entry, mark) in suspects.into_iter().zip(marked) {
            if mark.is_some() {
                let times = delivered(&entry);
                dead.refused.push(DeadLetter::of_entry(
                    &entry,
                    format!(
                        "delivered {times} times and never acknowledged: the worker that \
                         held it alone stopped too"
                    ),
                    0,
                ));
            } else {
                alone.push(entry);
            }
        }
        self.acknowledge(dead, shutdown).await?;
        self.process_batch(healthy, shutdown).await?;
        for entry in alone {
            let id = entry.id.clone();
            let _: () = self
                .store
                .redis()
                .query(
                    redis::cmd("HSET")
                        .arg(&isolated)
                        .arg(&id)
                        .arg(&self.options.consumer),
                )
                .await?;
            // Acknowledged or stopped on request: either way it did not stop
            // this worker, so the mark goes (a crash leaves it).
            self.process_batch(vec![entry], shutdown).await?;
            let _: () = self
                .store
                .redis()
                .query(redis::cmd("HDEL").arg(&isolated).arg(&id))
                .await?;
        }
        Ok(())
    }

    /// Persists one batch of entries, then dead-letters and acknowledges
    /// them. While it works, it renews its claim on them. Returns whether
    /// it got as far as acknowledging (not stopped before COMMIT).
    pub(super) async fn process_batch(
        &self,
        entries: Vec<StreamId>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> redis::RedisResult<bool> {
        if entries.is_empty() {
            return Ok(true);
        }
        let mut events = Vec::with_capacity(entries.len());
        let mut dead = Vec::new();
        for entry in &entries {
            match OrderEvent::parse(entry) {
                Ok(event) => events.push(event),
                Err(reason) => dead.push(DeadLetter::of_entry(entry, reason, 0)),
            }
        }

        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let outcome = {
            let work = self.persist(&events, shutdown.clone());
            tokio::pin!(work);
            let mut renew = tokio::time::interval(self.options.claim_idle / 4);
            renew.tick().await;
            loop {
                tokio::select! {
                    outcome = &mut work => break outcome,
                    _ = renew.tick() => self.renew_claim(&ids).await,
                }
            }
        };
        let Some(mut outcome) = outcome else {
            // Stopped before COMMIT: the entries stay pending, and this
            // consumer (after a restart) or another one will have them.
            return Ok(false);
        };
        outcome.refused.extend(dead);
        self.acknowledge(outcome, shutdown).await?;
        Ok(true)
    }

    /// Keeps other workers' hands off entries this one is still working on:
    /// re-claims them for itself once they have been idle for half the
    /// claim time (JUSTID: without counting a delivery). Entries another
    /// worker took meanwhile are fresher than that and stay where they are.
    pub(super) async fn renew_claim(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(self.store.keys().orders())
            .arg(GROUP)
            .arg(&self.options.consumer)
            .arg((self.options.claim_idle / 2).as_millis() as u64)
            .arg(ids)
            .arg("JUSTID");
        let renewed: redis::RedisResult<Vec<String>> = self.store.redis().query(&cmd).await;
        if let Err(err) = renewed {
            tracing::debug!(%err, "cannot renew the claim on entries in progress");
        }
    }
}

/// Where a worker is in its reading.
pub(super) struct ReadState {
    pub(super) group_ready: bool,
    /// Reading back this consumer's own pending entries (after a restart
    /// under the same name), from this id; `None` once done.
    pub(super) own_cursor: Option<String>,
    pub(super) claim_cursor: String,
    pub(super) next_claim: Instant,
    pub(super) next_maintenance: Instant,
    /// With a rate cap: when the worker may take its next batch.
    pub(super) paced_until: Instant,
}

impl ReadState {
    pub(super) fn new() -> Self {
        Self {
            group_ready: false,
            own_cursor: None,
            claim_cursor: "0-0".into(),
            next_claim: Instant::now(),
            next_maintenance: Instant::now(),
            paced_until: Instant::now(),
        }
    }
}

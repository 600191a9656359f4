//! The persistence worker: from the Redis stream to PostgreSQL, late but
//! exactly once.
//!
//! Every 201 the purchase script answers leaves one entry on the stream
//! `…:orders`. The worker turns entries into rows of `ticket_orders` (and
//! the matching decrement of `tickets.stock`). It runs inside every server by
//! default, and on its own as `level4 persist`; any number of them share the
//! work through one Redis **consumer group**, `persist`:
//!
//! - **Read.** `XREADGROUP ... >` hands each new entry to exactly one worker
//!   and records it in the group's *pending entries list* (PEL) under that
//!   worker's name until the worker acknowledges it.
//! - **Write, in batches, idempotently.** Up to `--persist-batch` entries go
//!   into one transaction: lock the tickets concerned (`FOR UPDATE`, in id
//!   order, so two workers never deadlock), insert the orders with the id the
//!   script handed out and `ON CONFLICT DO NOTHING`, then decrement each
//!   ticket's stock by the rows *actually inserted*. An entry delivered twice
//!   (a worker died after COMMIT and before XACK) inserts nothing the second
//!   time and decrements nothing: redelivery is harmless, which is what makes
//!   "at least once" delivery add up to "exactly once" in the database.
//! - **Acknowledge after COMMIT, never before.** `XACK` removes the entry from
//!   the PEL. Acknowledge first and a crash before COMMIT loses a sale that
//!   was answered 201.
//! - **Take over from the dead.** `XAUTOCLAIM` moves entries that have sat in
//!   another worker's PEL for longer than `--claim-idle-ms` to this one. A
//!   live worker that is slow (PostgreSQL is down, it keeps retrying) renews
//!   its claim on what it holds every quarter of that time (`XCLAIM ...
//!   JUSTID` on its own entries), so only a worker that really stopped is
//!   robbed. Every worker of a database must use the same `--claim-idle-ms`.
//! - **Retry with exponential backoff.** A failure that is about PostgreSQL
//!   (no connection, shutting down, a lost race) is retried, with a growing,
//!   jittered pause, for as long as it lasts: the entries are fine, they wait.
//!   A failure that is about the data (a constraint) is retried entry by
//!   entry, to find the one at fault, and an entry that still fails after
//!   `--persist-max-attempts` goes to the dead letters.
//! - **Dead letters, with the reason.** An entry that cannot be persisted is
//!   copied to the stream `…:dead-letters` with a `reason` field and
//!   acknowledged, in one MULTI/EXEC: a poison entry must not stop everything
//!   behind it, and it must not vanish either. Entries for a ticket that no
//!   longer exists go there too, and so do entries of a ticket reset in
//!   PostgreSQL alone (without [`crate::reset`]'s fence), which may have
//!   been sold after that reset.
//! - **Voided, not dead.** An entry of an older epoch than the ticket's
//!   belongs to a sale a reset has closed; [`crate::reset`] fences Redis
//!   before it commits, so the sale was made before the reset, which voids
//!   it like the orders it deletes. It is acknowledged and counted as
//!   voided.
//! - **Holders that keep dying.** An entry delivered more than
//!   `--persist-max-deliveries` times (counted for claimed entries and for
//!   a restarted worker's own) may be the one that stops whoever holds it,
//!   or may only have shared a batch with it. Each such entry is tried
//!   alone, marked in `…:isolated` meanwhile; only an entry found still
//!   marked (its worker died holding it alone) goes to the dead letters.
//!
//! - **Peak shaving, if asked.** `--persist-max-rate` caps how many orders
//!   per second a worker writes. The original projects put a queue between
//!   the sale and the database for exactly this: during a rush Redis takes
//!   the burst, PostgreSQL sees a steady write rate, and the backlog (the
//!   persistence lag) drains after the rush. Off by default.
//!
//! The stream is trimmed behind the slowest pending entry, so it holds what
//! is not yet persisted and little else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng as _;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use ticket_core::metrics::Metrics;
use ticket_core::{TicketId, UserId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::keys::GROUP;
use crate::store::{is_unavailable, pg_is_transient, RedisConn, SaleStore, RESPONSE_TIMEOUT};

/// Default for `--persist-batch`.
pub const DEFAULT_BATCH: usize = 500;
/// Default for `--persist-linger-ms`.
pub const DEFAULT_LINGER_MS: u64 = 0;
/// Default for `--claim-idle-ms`.
pub const DEFAULT_CLAIM_IDLE_MS: u64 = 5_000;
/// Default for `--persist-max-attempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default for `--persist-max-deliveries`.
pub const DEFAULT_MAX_DELIVERIES: u64 = 10;
/// Default for `--persist-backoff-base-ms`.
pub const DEFAULT_BACKOFF_BASE_MS: u64 = 50;
/// Default for `--persist-backoff-max-ms`.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 2_000;

/// How long one read waits for new entries before looking for dead
/// workers' entries and doing housekeeping.
const BLOCK: Duration = Duration::from_millis(500);

/// How often the stream is trimmed and dead consumers forgotten.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);

/// How the worker works.
#[derive(Debug, Clone)]
pub struct PersistOptions {
    /// This worker's name in the consumer group. Unique per worker: the
    /// group tells workers apart by it, and a restarted worker with the same
    /// name picks up what it held.
    pub consumer: String,
    /// Most entries per transaction.
    pub batch_size: usize,
    /// How long a batch that is not full waits for more entries.
    pub linger: Duration,
    /// Most orders per second this worker writes (0: as fast as it can).
    pub max_rate: u32,
    /// How long another worker's entries must have sat unacknowledged before
    /// this one takes them over.
    pub claim_idle: Duration,
    /// Attempts at an entry PostgreSQL refuses before it is dead-lettered.
    pub max_attempts: u32,
    /// Deliveries (to workers that then died) before an entry is
    /// dead-lettered.
    pub max_deliveries: u64,
    /// The first retry's pause; each further retry may wait twice as long.
    pub backoff_base: Duration,
    /// The longest pause between two retries.
    pub backoff_max: Duration,
    /// A pause inside each batch's transaction, before COMMIT: a stalled
    /// worker, to watch what its death leaves behind. Zero in production.
    pub pause_before_commit: Duration,
}

impl PersistOptions {
    /// The defaults, under the name `consumer`.
    pub fn new(consumer: impl Into<String>) -> Self {
        Self {
            consumer: consumer.into(),
            batch_size: DEFAULT_BATCH,
            linger: Duration::from_millis(DEFAULT_LINGER_MS),
            max_rate: 0,
            claim_idle: Duration::from_millis(DEFAULT_CLAIM_IDLE_MS),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            backoff_base: Duration::from_millis(DEFAULT_BACKOFF_BASE_MS),
            backoff_max: Duration::from_millis(DEFAULT_BACKOFF_MAX_MS),
            pause_before_commit: Duration::ZERO,
        }
    }
}

/// The worker's flags, shared by the server and `level4 persist`.
#[derive(clap::Args, Debug, Clone)]
pub struct PersistArgs {
    /// Most orders written to PostgreSQL in one transaction. Bigger batches
    /// cost fewer round trips per order; a batch waits for nothing, it takes
    /// whatever is on the stream, up to this many.
    #[arg(long, default_value_t = DEFAULT_BATCH, value_name = "N")]
    pub persist_batch: usize,

    /// How long a batch that is not full waits for more orders before it is
    /// written. 0 writes whatever is there at once; a few milliseconds make
    /// fewer, bigger transactions under load, for that much more lag.
    #[arg(long, default_value_t = DEFAULT_LINGER_MS, value_name = "MS")]
    pub persist_linger_ms: u64,

    /// Peak shaving: at most this many orders per second from this worker
    /// (0: as fast as PostgreSQL takes them). During a rush Redis absorbs the
    /// burst and PostgreSQL sees a steady write rate; the backlog, and the
    /// persistence lag, grow until the rush is over.
    #[arg(long, default_value_t = 0, value_name = "PER_SEC")]
    pub persist_max_rate: u32,

    /// How long entries must sit unacknowledged in another worker's hands
    /// before this worker takes them over (that worker is presumed dead).
    /// Every worker of one database must use the same value.
    #[arg(long, default_value_t = DEFAULT_CLAIM_IDLE_MS, value_name = "MS")]
    pub claim_idle_ms: u64,

    /// How many times an order PostgreSQL refuses (a constraint, not an
    /// outage) is tried before it is moved to the dead letters.
    #[arg(long, default_value_t = DEFAULT_MAX_ATTEMPTS, value_name = "N")]
    pub persist_max_attempts: u32,

    /// How many workers may take an entry and die before it is moved to the
    /// dead letters (an entry that crashes whoever reads it).
    #[arg(long, default_value_t = DEFAULT_MAX_DELIVERIES, value_name = "N")]
    pub persist_max_deliveries: u64,

    /// The pause before the first retry of a failed batch; it doubles with
    /// each further retry, with jitter.
    #[arg(long, default_value_t = DEFAULT_BACKOFF_BASE_MS, value_name = "MS")]
    pub persist_backoff_base_ms: u64,

    /// The longest pause between two retries, however many there were.
    #[arg(long, default_value_t = DEFAULT_BACKOFF_MAX_MS, value_name = "MS")]
    pub persist_backoff_max_ms: u64,

    /// Simulates a stalled worker: pause this long inside every batch's
    /// transaction, before COMMIT. Kill the process meanwhile and watch
    /// another worker take over its entries.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub persist_pause_ms: u64,
}

impl PersistArgs {
    /// The options these flags describe, for the worker named `consumer`.
    pub fn options(&self, consumer: impl Into<String>) -> PersistOptions {
        PersistOptions {
            consumer: consumer.into(),
            batch_size: self.persist_batch.max(1),
            linger: Duration::from_millis(self.persist_linger_ms),
            max_rate: self.persist_max_rate,
            claim_idle: Duration::from_millis(self.claim_idle_ms.max(4)),
            max_attempts: self.persist_max_attempts.max(1),
            max_deliveries: self.persist_max_deliveries.max(1),
            backoff_base: Duration::from_millis(self.persist_backoff_base_ms.max(1)),
            backoff_max: Duration::from_millis(self.persist_backoff_max_ms.max(1)),
            pause_before_commit: Duration::from_millis(self.persist_pause_ms),
        }
    }
}

/// Exponential backoff with jitter: each pause is drawn between half and all
/// of `base * 2^n`, capped at `max`, so that workers retrying together drift
/// apart.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, never waits longer than `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The next pause (and counts it).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// Back to the first pause, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Sleeps for the next pause.
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Sleeps for the next pause unless `shutdown` turns true first; returns
    /// whether to go on.
    pub async fn sleep_unless(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        if *shutdown.borrow() {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep(self.next_delay()) => !*shutdown.borrow(),
            _ = shutdown.changed() => false,
        }
    }
}

/// What a worker has done so far.
#[derive(Debug, Default)]
pub struct WorkerStats {
    persisted: AtomicU64,
    redelivered: AtomicU64,
    claimed: AtomicU64,
    dead_lettered: AtomicU64,
    voided: AtomicU64,
    retries: AtomicU64,
    batches: AtomicU64,
}

/// A copy of [`WorkerStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Orders this worker inserted.
    pub persisted: u64,
    /// Entries that were already in PostgreSQL (delivered twice).
    pub redelivered: u64,
    /// Entries taken over from other workers.
    pub claimed: u64,
    /// Entries moved to the dead letters.
    pub dead_lettered: u64,
    /// Entries of a sale a reset had closed (acknowledged, not inserted).
    pub voided: u64,
    /// Retries after a failed transaction.
    pub retries: u64,
    /// Committed transactions.
    pub batches: u64,
}

impl WorkerStats {
    /// The counts as of now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            persisted: get(&self.persisted),
            redelivered: get(&self.redelivered),
            claimed: get(&self.claimed),
            dead_lettered: get(&self.dead_lettered),
            voided: get(&self.voided),
            retries: get(&self.retries),
            batches: get(&self.batches),
        }
    }
}

/// One sale, as the purchase script queued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderEvent {
    /// The stream entry's id.
    pub entry_id: String,
    /// The order id the buyer was answered with.
    pub order_id: i64,
    /// The ticket sold.
    pub ticket: i64,
    /// The buyer.
    pub user: i64,
    /// The sale (epoch) it was sold in.
    pub epoch: i64,
    /// When Redis decided it, in microseconds since 1970.
    pub sold_us: i64,
}

impl OrderEvent {
    /// Reads an entry's fields, or says what is wrong with them.
    pub fn parse(entry: &StreamId) -> Result<Self, String> {
        let number = |field: &str| -> Result<i64, String> {
            let raw: String = entry
                .get(field)
                .ok_or_else(|| format!("malformed entry: no {field:?} field"))?;
            raw.parse::<i64>()
                .map_err(|_| format!("malformed entry: {field} = {raw:?} is not a whole number"))
        };
        let event = Self {
            entry_id: entry.id.clone(),
            order_id: number("order")?,
            ticket: number("ticket")?,
            user: number("user")?,
            epoch: number("epoch")?,
            sold_us: number("sold_us")?,
        };
        TicketId::parse(i128::from(event.ticket)).map_err(|e| format!("malformed entry: {e}"))?;
        UserId::parse(i128::from(event.user)).map_err(|e| format!("malformed entry: {e}"))?;
        if event.order_id <= 0 {
            return Err(format!(
                "malformed entry: order id {} is not positive",
                event.order_id
            ));
        }
        Ok(event)
    }
}

/// An entry on its way to the dead letters.
#[derive(Debug, Clone)]
struct DeadLetter {
    entry_id: String,
    fields: Vec<(String, String)>,
    reason: String,
    attempts: u32,
}

impl DeadLetter {
    fn of_entry(entry: &StreamId, reason: String, attempts: u32) -> Self {
        let mut fields: Vec<(String, String)> = entry
            .map
            .keys()
            .map(|k| (k.clone(), entry.get::<String>(k).unwrap_or_default()))
            .collect();
        fields.sort();
        Self {
            entry_id: entry.id.clone(),
            fields,
            reason,
            attempts,
        }
    }

    fn of_event(event: &OrderEvent, reason: String, attempts: u32) -> Self {
        Self {
            entry_id: event.entry_id.clone(),
            fields: vec![
                ("order".into(), event.order_id.to_string()),
                ("ticket".into(), event.ticket.to_string()),
                ("user".into(), event.user.to_string()),
                ("epoch".into(), event.epoch.to_string()),
                ("sold_us".into(), event.sold_us.to_string()),
            ],
            reason,
            attempts,
        }
    }
}

/// What one committed batch did, entry by entry.
#[derive(Debug, Default)]
struct Outcome {
    /// Inserted now.
    persisted: Vec<String>,
    /// Already there: delivered before.
    redelivered: Vec<String>,
    /// Sold in a sale a reset has since closed: void, like its orders.
    voided: Vec<String>,
    /// Refused for good, with the reason.
    refused: Vec<DeadLetter>,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.persisted.extend(other.persisted);
        self.redelivered.extend(other.redelivered);
        self.voided.extend(other.voided);
        self.refused.extend(other.refused);
    }
}

/// How entries came to this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Read new (`XREADGROUP ... >`): delivered once, to this worker.
    First,
    /// Delivered before: this consumer's own pending entries after a
    /// restart, or entries claimed from a worker that stopped. Their
    /// delivery counts are read.
    Again,
}

/// Why a batch failed.
enum BatchError {
    /// PostgreSQL is the problem (down, restarting, a lost race): try again.
    Transient(sqlx::Error),
    /// The data is the problem: some entry in the batch is refused.
    Refused(sqlx::Error),
    /// The worker was asked to stop in the middle; nothing was committed.
    Stopped,
}

impl From<sqlx::Error> for BatchError {
    fn from(err: sqlx::Error) -> Self {
        if pg_is_transient(&err) {
            Self::Transient(err)
        } else {
            Self::Refused(err)
        }
    }
}

/// A persistence worker. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    store: SaleStore,
    /// A connection of its own for the blocking reads: `XREADGROUP BLOCK`
    /// holds the connection until entries arrive, and on a shared
    /// (multiplexed) connection every purchase behind it would wait too.
    reader: RedisConn,
    options: Arc<PersistOptions>,
    stats: Arc<WorkerStats>,
    metrics: Metrics,
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
        let mut backoff = Backoff::new(self.options.backoff_base, self.options.backoff_max);
        loop {
            let work = AbortOnDrop(tokio::spawn(self.clone().work(shutdown.clone())));
            match work.join().await {
                Ok(()) => return,
                Err(err) if err.is_panic() => {
                    tracing::error!(consumer = %self.options.consumer, "the persistence worker panicked; restarting it");
                    if !backoff.sleep_unless(&mut shutdown).await {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }

    async fn work(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.options.backoff_base, self.options.backoff_max);
        let mut state = ReadState::new();
        tracing::info!(consumer = %self.options.consumer, "persistence worker started");
        while !*shutdown.borrow() {
            match self.step(&mut state, &mut shutdown).await {
                Ok(()) => backoff.reset(),
                Err(err) => {
                    if err.code() == Some("NOGROUP") {
                        // The group is gone (first start, or Redis lost its
                        // data): make it and read from the beginning.
                        state.group_ready = false;
                    } else {
                        tracing::warn!(consumer = %self.options.consumer, %err, "the persistence worker cannot reach Redis");
                    }
                    self.metrics.event("persist_redis_error");
                    if !backoff.sleep_unless(&mut shutdown).await {
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
    async fn step(
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
    fn pace(&self, state: &mut ReadState, count: usize) {
        if self.options.max_rate == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(count as f64 / f64::from(self.options.max_rate));
        state.paced_until = state.paced_until.max(Instant::now()) + cost;
    }

    async fn create_group(&self) -> redis::RedisResult<()> {
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
    async fn read(
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
    async fn claim(&self, cursor: &mut String) -> redis::RedisResult<Vec<StreamId>> {
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
    async fn deliveries(&self, entries: &[StreamId]) -> redis::RedisResult<HashMap<String, u64>> {
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
    async fn process(
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
    async fn process_batch(
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
    async fn renew_claim(&self, ids: &[String]) {
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

    /// Writes `events` to PostgreSQL, retrying as long as PostgreSQL is the
    /// problem, and isolating the entries it refuses. `None` when asked to
    /// stop before it could commit.
    async fn persist(
        &self,
        events: &[OrderEvent],
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<Outcome> {
        if events.is_empty() {
            return Some(Outcome::default());
        }
        let mut backoff = Backoff::new(self.options.backoff_base, self.options.backoff_max);
        loop {
            match self.write_batch(events, &mut shutdown).await {
                Ok(outcome) => return Some(outcome),
                Err(BatchError::Stopped) => return None,
                Err(BatchError::Transient(err)) => {
                    self.retrying(&err, events.len());
                    if !backoff.sleep_unless(&mut shutdown).await {
                        return None;
                    }
                }
                Err(BatchError::Refused(err)) if events.len() == 1 => {
                    return self.persist_alone(&events[0], err, shutdown).await;
                }
                Err(BatchError::Refused(err)) => {
                    // Some entry is refused, and one refused row fails the
                    // whole transaction: find it by writing one at a time.
                    tracing::warn!(%err, size = events.len(), "a batch was refused; writing its entries one by one");
                    let mut outcome = Outcome::default();
                    for event in events {
                        let alone = match self
                            .write_batch(std::slice::from_ref(event), &mut shutdown)
                            .await
                        {
                            Ok(done) => Some(done),
                            Err(BatchError::Stopped) => None,
                            Err(BatchError::Transient(err) | BatchError::Refused(err)) => {
                                self.persist_alone(event, err, shutdown.clone()).await
                            }
                        };
                        outcome.merge(alone?);
                    }
                    return Some(outcome);
                }
            }
        }
    }

    /// One entry that failed: retried with backoff, up to `max_attempts`
    /// times when PostgreSQL refuses it (forever while PostgreSQL is merely
    /// away), then dead-lettered with PostgreSQL's reason.
    async fn persist_alone(
        &self,
        event: &OrderEvent,
        first_error: sqlx::Error,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<Outcome> {
        let mut backoff = Backoff::new(self.options.backoff_base, self.options.backoff_max);
        let mut refusals = u32::from(!pg_is_transient(&first_error));
        let mut last_error = first_error;
        loop {
            if refusals >= self.options.max_attempts {
                let reason = format!("PostgreSQL refused it {refusals} times: {last_error}");
                return Some(Outcome {
                    refused: vec![DeadLetter::of_event(event, reason, refusals)],
                    ..Outcome::default()
                });
            }
            self.retrying(&last_error, 1);
            if !backoff.sleep_unless(&mut shutdown).await {
                return None;
            }
            match self
                .write_batch(std::slice::from_ref(event), &mut shutdown)
                .await
            {
                Ok(outcome) => return Some(outcome),
                Err(BatchError::Stopped) => return None,
                Err(BatchError::Transient(err)) => last_error = err,
                Err(BatchError::Refused(err)) => {
                    refusals += 1;
                    last_error = err;
                }
            }
        }
    }

    fn retrying(&self, err: &sqlx::Error, size: usize) {
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        self.metrics.event("persist_retry");
        tracing::warn!(consumer = %self.options.consumer, %err, size, "persisting failed; retrying after a pause");
    }

    /// One transaction: lock the tickets, insert what belongs to their
    /// current sale, decrement their stock by what was inserted, COMMIT.
    async fn write_batch(
        &self,
        events: &[OrderEvent],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Outcome, BatchError> {
        let mut outcome = Outcome::default();
        let mut tx = self.store.pool().begin().await?;

        // The tickets' row locks, in id order. They line this batch up
        // behind the loader (which reads stock and orders under the same
        // lock) and behind other workers' batches of the same tickets.
        let tickets: BTreeSet<i64> = events.iter().map(|e| e.ticket).collect();
        let tickets: Vec<i64> = tickets.into_iter().collect();
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT id, sale_epoch, version FROM tickets WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&tickets)
        .fetch_all(&mut *tx)
        .await?;
        let current: HashMap<i64, (i64, i64)> = rows
            .into_iter()
            .map(|(id, epoch, version)| (id, (epoch, version)))
            .collect();

        // Only orders of the ticket's current sale go in. An order of an
        // older epoch belongs to a sale a reset has closed: `reset.rs`
        // fences Redis before it commits, so that sale was made before the
        // reset, which voids it as it voids the orders it deletes. It is
        // acknowledged as voided, not counted against the new sale. An
        // order of the current epoch on a ticket reset in PostgreSQL alone
        // (`version = 0`, no fence) may have been sold after that reset: a
        // 201 nobody can keep, so it goes to the dead letters, for a person.
        let mut insert = Vec::with_capacity(events.len());
        for event in events {
            match current.get(&event.ticket) {
                None => outcome.refused.push(DeadLetter::of_event(
                    event,
                    format!("ticket {} no longer exists", event.ticket),
                    1,
                )),
                Some(&(epoch, _)) if event.epoch < epoch => {
                    outcome.voided.push(event.entry_id.clone());
                }
                Some(&(epoch, version)) if epoch != event.epoch || version == 0 => {
                    outcome.refused.push(DeadLetter::of_event(
                        event,
                        format!(
                            "sold in sale {} of ticket {}, which was put on sale again in \
                             PostgreSQL without fencing Redis (now sale {}{})",
                            event.epoch,
                            event.ticket,
                            epoch,
                            if version == 0 { ", not loaded yet" } else { "" }
                        ),
                        1,
                    ))
                }
                Some(_) => insert.push(event),
            }
        }

        let inserted: Vec<(i64, i64)> = if insert.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(
                "INSERT INTO ticket_orders (id, ticket_id, user_id, created_at, sold_at) \
                 SELECT e.id, e.ticket, e.buyer, clock_timestamp(), \
                        'epoch'::timestamptz + e.sold_us * interval '1 microsecond' \
                 FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[]) \
                      AS e(id, ticket, buyer, sold_us) \
                 WHERE NOT EXISTS (SELECT 1 FROM cancelled_orders c WHERE c.id = e.id) \
                 ON CONFLICT DO NOTHING \
                 RETURNING id, ticket_id",
            )
            .bind(insert.iter().map(|e| e.order_id).collect::<Vec<_>>())
            .bind(insert.iter().map(|e| e.ticket).collect::<Vec<_>>())
            .bind(insert.iter().map(|e| e.user).collect::<Vec<_>>())
            .bind(insert.iter().map(|e| e.sold_us).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?
        };
        let inserted_ids: BTreeSet<i64> = inserted.iter().map(|&(id, _)| id).collect();

        // Not inserted: this very order is already there (delivered before),
        // or it was cancelled (see `cancel.rs`: a cancellation takes the
        // ticket's row lock first too, so it is committed by now, and the
        // order must not come back); both are done. Otherwise something else
        // holds its place.
        let skipped: Vec<&OrderEvent> = insert
            .iter()
            .copied()
            .filter(|e| !inserted_ids.contains(&e.order_id))
            .collect();
        if !skipped.is_empty() {
            let existing: Vec<(i64, i64, i64)> = sqlx::query_as(
                "SELECT id, ticket_id, user_id FROM ticket_orders WHERE id = ANY($1)",
            )
            .bind(skipped.iter().map(|e| e.order_id).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
            let existing: HashMap<i64, (i64, i64)> = existing
                .into_iter()
                .map(|(id, ticket, user)| (id, (ticket, user)))
                .collect();
            let cancelled: BTreeSet<i64> =
                sqlx::query_scalar("SELECT id FROM cancelled_orders WHERE id = ANY($1)")
                    .bind(skipped.iter().map(|e| e.order_id).collect::<Vec<_>>())
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .collect();
            for event in skipped {
                if cancelled.contains(&event.order_id) {
                    outcome.redelivered.push(event.entry_id.clone());
                    continue;
                }
                match existing.get(&event.order_id) {
                    Some(&(ticket, user)) if ticket == event.ticket && user == event.user => {
                        outcome.redelivered.push(event.entry_id.clone());
                    }
                    Some(&(ticket, user)) => outcome.refused.push(DeadLetter::of_event(
                        event,
                        format!(
                            "order id {} already belongs to another order (ticket {ticket}, user {user})",
                            event.order_id
                        ),
                        1,
                    )),
                    None => outcome.refused.push(DeadLetter::of_event(
                        event,
                        format!(
                            "user {} already holds another order for ticket {}",
                            event.user, event.ticket
                        ),
                        1,
                    )),
                }
            }
        }

        // Stock goes down by what was inserted, not by what was delivered:
        // a redelivered entry inserted nothing and takes nothing.
        let mut per_ticket: BTreeMap<i64, i32> = BTreeMap::new();
        for &(_, ticket) in &inserted {
            *per_ticket.entry(ticket).or_default() += 1;
        }
        if !per_ticket.is_empty() {
            sqlx::query(
                "UPDATE tickets AS t SET stock = t.stock - c.sold, version = t.version + 1 \
                 FROM unnest($1::int8[], $2::int4[]) AS c(id, sold) WHERE t.id = c.id",
            )
            .bind(per_ticket.keys().copied().collect::<Vec<_>>())
            .bind(per_ticket.values().copied().collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }

        if !self.options.pause_before_commit.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(self.options.pause_before_commit) => {}
                _ = shutdown.changed() => return Err(BatchError::Stopped),
            }
        }
        tx.commit().await?;

        let by_order: HashMap<i64, &OrderEvent> = insert.iter().map(|e| (e.order_id, *e)).collect();
        outcome.persisted = inserted
            .iter()
            .filter_map(|(id, _)| by_order.get(id).map(|e| e.entry_id.clone()))
            .collect();
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.metrics.event("persist_batch");
        Ok(outcome)
    }

    /// After COMMIT: dead letters (each copied and acknowledged in one
    /// MULTI/EXEC), then the acknowledgement of everything persisted or
    /// already there. Retried while Redis is away; if this worker stops
    /// first, the entries are delivered again and change nothing.
    async fn acknowledge(
        &self,
        outcome: Outcome,
        shutdown: &mut watch::Receiver<bool>,
    ) -> redis::RedisResult<()> {
        if outcome.persisted.is_empty()
            && outcome.redelivered.is_empty()
            && outcome.voided.is_empty()
            && outcome.refused.is_empty()
        {
            return Ok(());
        }
        let orders = self.store.keys().orders();
        let dead_letters = self.store.keys().dead_letters();
        let mut backoff = Backoff::new(self.options.backoff_base, self.options.backoff_max);
        let failed_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for dead in &outcome.refused {
            let mut add = redis::cmd("XADD");
            add.arg(&dead_letters).arg("*");
            for (field, value) in &dead.fields {
                add.arg(field).arg(value);
            }
            add.arg("source_id")
                .arg(&dead.entry_id)
                .arg("reason")
                .arg(&dead.reason)
                .arg("attempts")
                .arg(dead.attempts)
                .arg("consumer")
                .arg(&self.options.consumer)
                .arg("failed_at_ms")
                .arg(failed_at);
            pipe.add_command(add).ignore();
            pipe.cmd("XACK")
                .arg(&orders)
                .arg(GROUP)
                .arg(&dead.entry_id)
                .ignore();
        }
        let acked: Vec<&String> = outcome
            .persisted
            .iter()
            .chain(&outcome.redelivered)
            .chain(&outcome.voided)
            .collect();
        for chunk in acked.chunks(1000) {
            pipe.cmd("XACK").arg(&orders).arg(GROUP).arg(chunk).ignore();
        }
        loop {
            match self.store.redis().pipe::<()>(&pipe).await {
                Ok(()) => break,
                Err(err) if is_unavailable(&err) => {
                    tracing::warn!(%err, "cannot acknowledge persisted entries yet");
                    if !backoff.sleep_unless(shutdown).await {
                        return Ok(());
                    }
                }
                Err(err) => return Err(err),
            }
        }

        let count = |n: usize| n as u64;
        self.stats
            .persisted
            .fetch_add(count(outcome.persisted.len()), Ordering::Relaxed);
        self.stats
            .redelivered
            .fetch_add(count(outcome.redelivered.len()), Ordering::Relaxed);
        self.stats
            .dead_lettered
            .fetch_add(count(outcome.refused.len()), Ordering::Relaxed);
        self.stats
            .voided
            .fetch_add(count(outcome.voided.len()), Ordering::Relaxed);
        for _ in 0..outcome.voided.len() {
            self.metrics.event("persist_voided");
        }
        for _ in 0..outcome.persisted.len() {
            self.metrics.event("persisted");
        }
        for _ in 0..outcome.redelivered.len() {
            self.metrics.event("persist_redelivered");
        }
        for dead in &outcome.refused {
            self.metrics.event("dead_lettered");
            tracing::error!(entry = %dead.entry_id, reason = %dead.reason, "moved an order to the dead letters");
        }
        Ok(())
    }

    /// Trims persisted entries off the stream and forgets long-gone
    /// consumers that hold nothing (`maintain.lua`).
    async fn maintain(&self) -> redis::RedisResult<()> {
        let forget_after = (self.options.claim_idle * 20).max(Duration::from_secs(60));
        let (trimmed, forgotten): (u64, u64) = self
            .store
            .redis()
            .invoke(
                self.store
                    .scripts()
                    .maintain
                    .key(self.store.keys().orders())
                    .arg(GROUP)
                    .arg(forget_after.as_millis() as u64),
            )
            .await?;
        if trimmed > 0 || forgotten > 0 {
            tracing::debug!(trimmed, forgotten, "stream maintenance");
        }
        Ok(())
    }
}

/// Where a worker is in its reading.
struct ReadState {
    group_ready: bool,
    /// Reading back this consumer's own pending entries (after a restart
    /// under the same name), from this id; `None` once done.
    own_cursor: Option<String>,
    claim_cursor: String,
    next_claim: Instant,
    next_maintenance: Instant,
    /// With a rate cap: when the worker may take its next batch.
    paced_until: Instant,
}

impl ReadState {
    fn new() -> Self {
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

/// A running worker. Dropping it asks the worker to stop after its current
/// batch; [`WorkerHandle::stop`] also waits for that, and
/// [`WorkerHandle::kill`] stops it at once, mid-transaction, as a crash
/// would.
pub struct WorkerHandle {
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    stats: Arc<WorkerStats>,
}

impl WorkerHandle {
    /// What it has done so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Stops it after its current batch and waits until it has.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops it at once, wherever it is: an uncommitted transaction is
    /// rolled back and its entries stay pending, as when a process dies.
    pub async fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// A task handle that aborts its task when dropped, so that aborting the
/// supervisor also stops the work it supervises.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &str)]) -> StreamId {
        StreamId {
            id: "1-0".into(),
            map: fields
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        redis::Value::BulkString(v.as_bytes().to_vec()),
                    )
                })
                .collect(),
            ..StreamId::default()
        }
    }

    #[test]
    fn an_entry_is_read_back_as_the_script_wrote_it() {
        let event = OrderEvent::parse(&entry(&[
            ("order", "1700000000000001"),
            ("ticket", "7"),
            ("user", "42"),
            ("epoch", "3"),
            ("sold_us", "1700000000000001"),
        ]))
        .unwrap();
        assert_eq!(event.order_id, 1_700_000_000_000_001);
        assert_eq!((event.ticket, event.user, event.epoch), (7, 42, 3));
    }

    #[test]
    fn a_malformed_entry_says_what_is_wrong() {
        let missing = OrderEvent::parse(&entry(&[("order", "1")])).unwrap_err();
        assert!(missing.contains("ticket"), "{missing}");
        let garbage = OrderEvent::parse(&entry(&[
            ("order", "1"),
            ("ticket", "7"),
            ("user", "bob"),
            ("epoch", "1"),
            ("sold_us", "1"),
        ]))
        .unwrap_err();
        assert!(garbage.contains("user"), "{garbage}");
        let negative = OrderEvent::parse(&entry(&[
            ("order", "1"),
            ("ticket", "7"),
            ("user", "-3"),
            ("epoch", "1"),
            ("sold_us", "1"),
        ]))
        .unwrap_err();
        assert!(negative.contains("user_id"), "{negative}");
    }

    #[test]
    fn backoff_grows_and_stays_under_its_ceiling() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(10));
        assert!(delays[0] >= Duration::from_millis(5));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(100)));
        assert!(delays[9] >= Duration::from_millis(50));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(10));
    }
}

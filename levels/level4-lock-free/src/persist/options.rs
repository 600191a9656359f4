//! How a worker works: its options, and the flags that set them.

use std::time::Duration;

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

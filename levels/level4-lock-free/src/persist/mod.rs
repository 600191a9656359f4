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
//! The stream is trimmed behind both the oldest pending entry and the
//! group's last-delivered id (`maintain.lua`), so it holds what is not yet
//! persisted and little else.

mod ack;
mod backoff;
mod batch;
mod event;
mod handle;
mod options;
mod worker;

pub use backoff::{sleep_unless, Backoff};
pub use event::OrderEvent;
pub use handle::{StatsSnapshot, WorkerHandle, WorkerStats};
pub use options::{
    PersistArgs, PersistOptions, DEFAULT_BACKOFF_BASE_MS, DEFAULT_BACKOFF_MAX_MS, DEFAULT_BATCH,
    DEFAULT_CLAIM_IDLE_MS, DEFAULT_LINGER_MS, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_DELIVERIES,
};
pub use worker::Worker;

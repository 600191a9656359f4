//! After COMMIT: acknowledging, dead-lettering, trimming the stream.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ticket_core::redis_checks::is_unavailable;
use tokio::sync::watch;

use super::event::Outcome;
use super::{sleep_unless, Backoff, Worker};
use crate::keys::GROUP;

impl Worker {
    /// After COMMIT: dead letters (each copied and acknowledged in one
    /// MULTI/EXEC), then the acknowledgement of everything persisted or
    /// already there. Retried while Redis is away; if this worker stops
    /// first, the entries are delivered again and change nothing.
    pub(super) async fn acknowledge(
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
        let backoff = Backoff::equal_jitter(self.options.backoff_base, self.options.backoff_max);
        let mut retry = 0;
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
                    retry += 1;
                    if !sleep_unless(backoff.delay(retry), shutdown).await {
                        return Ok(());
                    }
                }
                Err(err) => return Err(err),
            }
        }

        self.count_acknowledged(&outcome);
        Ok(())
    }

    /// Counts what was acknowledged, in the stats and the metrics, and
    /// logs every dead letter.
    fn count_acknowledged(&self, outcome: &Outcome) {
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
    }

    /// Trims persisted entries off the stream and forgets long-gone
    /// consumers that hold nothing (`maintain.lua`).
    pub(super) async fn maintain(&self) -> redis::RedisResult<()> {
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

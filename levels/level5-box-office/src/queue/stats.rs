//! What the waiting room of a show looks like now: for the load tool's
//! progress lines and for checks (`GET /shows/{show_id}/queue`).

use std::collections::HashMap;

use serde::Serialize;

use super::Queue;
use crate::error::{redis_error, BoxError};

/// A show's line, counted in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// The show.
    pub show_id: i64,
    /// Numbers handed out so far (the last arrival's number).
    pub joined: i64,
    /// In line now.
    pub waiting: u64,
    /// Admitted and not finished now.
    pub active: u64,
    /// The most admitted-and-unfinished ever seen at once, recorded by the
    /// admitting script itself: never above `active_limit` if the limit held.
    pub max_active: u64,
    /// `--active-limit`.
    pub active_limit: u32,
    /// Admissions so far.
    pub admitted: u64,
    /// Users finished by a payment.
    pub finished: u64,
    /// Admitted users who idled out.
    pub expired: u64,
}

impl Queue {
    /// The counts of `show_id`'s line (all zero for a show nobody joined).
    pub async fn stats(&self, show_id: i64) -> Result<QueueStats, BoxError> {
        let base = self.base(show_id);
        let (joined, waiting, active, stats): (Option<i64>, u64, u64, HashMap<String, u64>) =
            redis::pipe()
                .get(format!("{base}:seq"))
                .zcard(format!("{base}:waiting"))
                .zcard(format!("{base}:active"))
                .hgetall(format!("{base}:stats"))
                .query_async(&mut self.conn().await?)
                .await
                .map_err(redis_error)?;
        let count = |field: &str| stats.get(field).copied().unwrap_or(0);
        Ok(QueueStats {
            show_id,
            joined: joined.unwrap_or(0),
            waiting,
            active,
            max_active: count("max_active"),
            active_limit: self.settings.active_limit,
            admitted: count("admitted"),
            finished: count("finished"),
            expired: count("expired"),
        })
    }

    /// The numbers admitted so far, in the order they were admitted.
    pub async fn admission_log(&self, show_id: i64) -> Result<Vec<i64>, BoxError> {
        redis::cmd("LRANGE")
            .arg(format!("{}:log", self.base(show_id)))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn().await?)
            .await
            .map_err(redis_error)
    }
}

//! The two cached reads: the show list and the seat map.
//!
//! The seat map is split by how often its parts change. Seat numbers,
//! grades and prices change only when an admin changes the show: they are
//! cached. Each seat's status (available, held, sold) changes with every
//! hold: it is read live, and only for the seats that are taken.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::PgPool;
use ticket_core::metrics::Metrics;
use ticket_core::strategy::think;

use super::Cache;
use crate::error::BoxError;
use crate::{shows, Settings};

/// What the cached reads need besides the cache.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    /// The cache.
    pub cache: &'a Cache,
    /// The database, for misses and the live statuses.
    pub pool: &'a PgPool,
    /// Counts each database load (`cache_load_shows`, `cache_load_seat_map`).
    pub metrics: &'a Metrics,
    /// `--think-time-ms` widens each load, so a stampede reproduces.
    pub settings: &'a Settings,
}

/// The cache entry of the show list.
pub const SHOWS: &str = "shows";

/// The cache entry of `show_id`'s seat map's static part.
pub fn seat_map_entry(show_id: i64) -> String {
    format!("seats:{show_id}")
}

fn unparsable(err: serde_json::Error) -> BoxError {
    BoxError::Unexpected(anyhow::anyhow!("a cached entry is not JSON: {err}"))
}

impl Reader<'_> {
    /// `GET /shows`, at most `--cache-ttl-ms` old.
    pub async fn shows(&self) -> Result<Value, BoxError> {
        let ttl = self.cache.settings().shows_ttl;
        let text = self
            .cache
            .get_or_load(SHOWS, ttl, || async {
                self.metrics.event("cache_load_shows");
                think(self.settings.think_time).await;
                Ok(shows::list(self.pool).await?.to_string())
            })
            .await?;
        serde_json::from_str(&text).map_err(unparsable)
    }

    /// `GET /shows/{id}/seats`: the cached static part with the live
    /// statuses of the taken seats.
    pub async fn seat_map(&self, show_id: i64) -> Result<Value, BoxError> {
        let ttl = self.cache.settings().seat_map_ttl;
        let text = self
            .cache
            .get_or_load(&seat_map_entry(show_id), ttl, || async {
                self.metrics.event("cache_load_seat_map");
                think(self.settings.think_time).await;
                let layout = shows::seat_layout(self.pool, show_id).await?;
                serde_json::to_string(&layout).map_err(|e| BoxError::Unexpected(e.into()))
            })
            .await?;
        let layout: Vec<(i32, String, i64)> = serde_json::from_str(&text).map_err(unparsable)?;
        let taken: HashMap<i32, &'static str> = shows::taken_seats(self.pool, show_id)
            .await?
            .into_iter()
            .collect();
        let seats: Vec<Value> = layout
            .into_iter()
            .map(|(seat, grade, price)| {
                serde_json::json!({
                    "seat": seat,
                    "grade": grade,
                    "price": price,
                    "status": taken.get(&seat).copied().unwrap_or("available"),
                })
            })
            .collect();
        Ok(serde_json::json!({ "show_id": show_id, "seats": seats }))
    }
}

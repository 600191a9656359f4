//! The servers' own record of the waiting room, read while the users run.
//!
//! Whether the active limit held cannot be judged from the users' side:
//! a user who saw `admitted` at 10:00:01 and paid at 10:00:02 was active,
//! for the server, from a moment the user never saw to a moment the user
//! never saw. Only the waiting room knows, so its admitting script records
//! the most users admitted and unfinished at once (`max_active`), in the
//! same atomic step that admits, and every server shows it, with the line's
//! other counts, at `GET /shows/{show_id}/queue`. The probe reads that
//! every [`INTERVAL`] (for the report's timeline) and once more at the end.
//!
//! FIFO is judged the same way: the admitting script appends every number
//! it admits to a list in Redis (`level5:<database>:q:{show:<show>}:log`), in
//! admission order. A number admitted after a larger one was admitted
//! while it waited (numbers are handed out, and put in line, in one
//! script), so every descent in that list is a violation.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use ticket_core::redis_conn::{RedisConnection, RedisOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the probe samples.
pub const INTERVAL: Duration = Duration::from_millis(250);

/// The line's counts drawn over time.
const SERIES: &[&str] = &["waiting", "active", "admitted", "finished", "expired"];

/// What the probe saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    /// The line's counts over time: name, then `(ms since start, value)`.
    pub series: BTreeMap<String, Vec<(f64, f64)>>,
    /// The waiting room's high-water mark of active users.
    pub max_active: Option<i64>,
    /// The servers' `--active-limit`, as the waiting room reports it.
    pub active_limit: Option<u32>,
    /// Where `max_active` was read.
    pub source: String,
}

/// A running probe.
pub struct Probe {
    stop: watch::Sender<bool>,
    task: JoinHandle<Samples>,
}

impl Probe {
    /// Starts sampling the line of `show_id` on `targets`.
    pub fn start(targets: Vec<String>, show_id: i64) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .no_proxy()
                .build()
                .unwrap_or_default();
            let started = Instant::now();
            let mut samples = Samples::default();
            loop {
                let at = started.elapsed().as_secs_f64() * 1000.0;
                sample(&client, &targets, show_id, at, &mut samples).await;
                tokio::select! {
                    _ = stopped.changed() => break,
                    () = tokio::time::sleep(INTERVAL) => {}
                }
            }
            // One last read, after the last user: the high-water mark is final.
            let at = started.elapsed().as_secs_f64() * 1000.0;
            sample(&client, &targets, show_id, at, &mut samples).await;
            samples
        });
        Self { stop, task }
    }

    /// Stops sampling and returns what was seen.
    pub async fn stop(self) -> Samples {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// Reads the line's counts from the first server that answers (they all
/// read the same Redis); a server that does not (killed, on purpose) is
/// skipped.
async fn sample(
    client: &reqwest::Client,
    targets: &[String],
    show_id: i64,
    at: f64,
    samples: &mut Samples,
) {
    for target in targets {
        let url = format!("{target}/shows/{show_id}/queue");
        let Ok(response) = client.get(&url).send().await else {
            continue;
        };
        if !response.status().is_success() {
            continue;
        }
        let Ok(stats) = response.json::<Value>().await else {
            continue;
        };
        for name in SERIES {
            if let Some(value) = stats[name].as_f64() {
                samples
                    .series
                    .entry((*name).to_owned())
                    .or_default()
                    .push((at, value));
            }
        }
        if let Some(max) = stats["max_active"].as_i64() {
            samples.max_active = Some(samples.max_active.map_or(max, |m| m.max(max)));
            samples.source = "max_active of GET /shows/{id}/queue".to_owned();
        }
        samples.active_limit = stats["active_limit"].as_u64().map(|l| l as u32);
        return;
    }
}

/// The numbers the waiting room admitted, in admission order, read from
/// its log in Redis; `None` when there is no Redis to read.
pub async fn admission_log(
    redis_url: Option<&str>,
    database: &str,
    show_id: i64,
) -> anyhow::Result<Option<Vec<i64>>> {
    let Some(url) = redis_url else {
        return Ok(None);
    };
    // A single Redis or a cluster (the log lives in the show's slot).
    let options = RedisOptions::new(Duration::from_secs(2), Duration::from_secs(5));
    let mut conn = RedisConnection::connect(url, options).await?;
    let log: Vec<i64> = redis::cmd("LRANGE")
        .arg(format!("level5:{database}:q:{{show:{show_id}}}:log"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    Ok(Some(log))
}

/// Admissions out of order: each number admitted after a larger one.
pub fn log_inversions(log: &[i64]) -> u64 {
    let mut highest = i64::MIN;
    let mut inversions = 0;
    for &n in log {
        if n < highest {
            inversions += 1;
        }
        highest = highest.max(n);
    }
    inversions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_admitted_after_a_larger_one_is_an_inversion() {
        assert_eq!(log_inversions(&[1, 2, 3, 4]), 0);
        assert_eq!(log_inversions(&[1, 3, 2, 4]), 1);
        assert_eq!(log_inversions(&[5, 1, 2, 6]), 2);
        assert_eq!(log_inversions(&[]), 0);
    }
}

//! The servers' own record of the waiting room, read while the users run.
//!
//! Whether the active limit held cannot be judged from the users' side:
//! a user who saw `admitted` at 10:00:01 and paid at 10:00:02 was active,
//! for the server, from a moment the user never saw to a moment the user
//! never saw. Only the servers know, so they keep a high-water mark (the
//! most users admitted and unfinished at once, updated in the same atomic
//! step that admits) and expose it on `GET /metrics`. The probe reads it,
//! and samples the queue's gauges every [`INTERVAL`] for the report's
//! timeline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the probe samples.
pub const INTERVAL: Duration = Duration::from_millis(250);

/// Metric names (without the `ticket_rush_` prefix) that hold the most
/// users active at once: a high-water mark kept by the servers.
const MAX_ACTIVE: &[&str] = &["queue_max_active", "queue_active_max"];

/// What the probe saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    /// Every queue gauge over time: name, then `(ms since start, value)`,
    /// the value the largest any server reported at that moment (the queue
    /// is shared, so servers report the same figures).
    pub series: BTreeMap<String, Vec<(f64, f64)>>,
    /// The servers' high-water mark of active users, when they keep one.
    pub max_active: Option<i64>,
    /// Which metric `max_active` came from.
    pub source: String,
}

/// A running probe.
pub struct Probe {
    stop: watch::Sender<bool>,
    task: JoinHandle<Samples>,
}

impl Probe {
    /// Starts sampling `targets`.
    pub fn start(targets: Vec<String>) -> Self {
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
                sample(&client, &targets, at, &mut samples).await;
                tokio::select! {
                    _ = stopped.changed() => break,
                    () = tokio::time::sleep(INTERVAL) => {}
                }
            }
            // One last read, after the last user: the high-water mark is final.
            let at = started.elapsed().as_secs_f64() * 1000.0;
            sample(&client, &targets, at, &mut samples).await;
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

/// Reads every server's `/metrics` once; a server that does not answer
/// (killed, on purpose) adds nothing.
async fn sample(client: &reqwest::Client, targets: &[String], at: f64, samples: &mut Samples) {
    let mut now: BTreeMap<String, f64> = BTreeMap::new();
    for target in targets {
        let Ok(response) = client.get(format!("{target}/metrics")).send().await else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        for s in ticket_core::metrics::samples(&text) {
            let name = s.name.trim_start_matches("ticket_rush_");
            if !name.starts_with("queue") {
                continue;
            }
            let value = now.entry(name.to_owned()).or_insert(f64::MIN);
            *value = value.max(s.value);
            if MAX_ACTIVE.contains(&name) {
                let max = s.value as i64;
                samples.max_active = Some(samples.max_active.map_or(max, |m| m.max(max)));
                samples.source = format!("ticket_rush_{name} on /metrics");
            }
        }
    }
    for (name, value) in now {
        samples.series.entry(name).or_default().push((at, value));
    }
}

//! Per-server counters, exposed at `GET /metrics` in Prometheus text format.
//!
//! Each server owns its own [`Metrics`] (no global registry), so two servers
//! in one test process keep separate books, just as two processes would. The
//! load tool scrapes every server after a run and adds their counters to its
//! report: retries, conflicts and lock timeouts explain *why* a strategy's
//! latency looks the way it does.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label for purchase outcomes (`created`, `sold_out`, `busy`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Label for things a strategy did along the way (`retry`, `conflict`,
/// `lock_timeout`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

/// The metrics of one server. Cheap to clone; clones share the counters.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    purchases: Family<OutcomeLabel, Counter>,
    events: Family<EventLabel, Counter>,
    purchase_seconds: Histogram,
    lock_wait_seconds: Histogram,
    pool_size: Gauge,
    pool_idle: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of zeroed metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ticket_rush");
        let purchases = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "purchases",
            "Purchase requests by outcome (created, sold_out, already_purchased, busy, ...)",
            purchases.clone(),
        );
        let events = Family::<EventLabel, Counter>::default();
        registry.register(
            "strategy_events",
            "What strategies did on the way: retries, version conflicts, lock timeouts",
            events.clone(),
        );
        // 0.25 ms .. ~8 s: a purchase under a contended lock can take seconds.
        let purchase_seconds = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        registry.register(
            "purchase_duration_seconds",
            "Time to answer a purchase request, lock waits included",
            purchase_seconds.clone(),
        );
        let lock_wait_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register(
            "lock_wait_seconds",
            "Time spent waiting to acquire a lock, for strategies that take one",
            lock_wait_seconds.clone(),
        );
        let pool_size = Gauge::default();
        registry.register(
            "db_pool_connections",
            "Open database connections in the server's pool",
            pool_size.clone(),
        );
        let pool_idle = Gauge::default();
        registry.register(
            "db_pool_idle_connections",
            "Idle database connections in the server's pool",
            pool_idle.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                purchases,
                events,
                purchase_seconds,
                lock_wait_seconds,
                pool_size,
                pool_idle,
            }),
        }
    }

    /// Counts one answered purchase and how long it took.
    pub fn purchase(&self, outcome: &'static str, took: Duration) {
        self.inner
            .purchases
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        self.inner.purchase_seconds.observe(took.as_secs_f64());
    }

    /// Counts something a strategy did: `retry`, `conflict`, `lock_timeout`...
    pub fn event(&self, event: &'static str) {
        self.inner.events.get_or_create(&EventLabel { event }).inc();
    }

    /// Records how long a lock took to acquire.
    pub fn lock_wait(&self, took: Duration) {
        self.inner.lock_wait_seconds.observe(took.as_secs_f64());
    }

    /// Renders every metric in Prometheus text format, with the pool gauges
    /// read as of now.
    pub fn render(&self, pool_size: u32, pool_idle: usize) -> String {
        self.inner.pool_size.set(i64::from(pool_size));
        self.inner
            .pool_idle
            .set(i64::try_from(pool_idle).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
            .expect("encoding metrics into a String");
        out
    }

    /// The answer to `GET /metrics`: [`Metrics::render`] with `pool`'s gauges,
    /// as OpenMetrics text. Every level's router serves this one.
    pub fn response(&self, pool: &sqlx::PgPool) -> axum::response::Response {
        use axum::response::IntoResponse as _;
        let text = self.render(pool.size(), pool.num_idle());
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    }
}

/// One sample line of Prometheus text: `name{labels} value`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// The metric's name (`ticket_rush_purchases_total`).
    pub name: &'a str,
    /// The labels as written between the braces (`outcome="created"`), or "".
    pub labels: &'a str,
    /// The value.
    pub value: f64,
}

impl<'a> Sample<'a> {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&'a str> {
        self.labels.split(',').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"'))
        })
    }
}

/// The one parser of Prometheus text in the workspace: every sample line
/// (comments and lines that do not parse are skipped). Label values with
/// commas or escaped quotes are not needed here and not supported.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.strip_suffix('}').unwrap_or(labels)),
                None => (series, ""),
            };
            Some(Sample {
                name,
                labels,
                value: value.parse().ok()?,
            })
        })
}

/// Reads one counter out of Prometheus text: the sum of every sample of
/// `name` whose labels contain `label` (for instance `event="retry"`).
/// The load tool uses this to add servers' counters to its report.
pub fn sum_samples(text: &str, name: &str, label: Option<&str>) -> f64 {
    samples(text)
        .filter(|sample| sample.name == name)
        .filter(|sample| label.is_none_or(|l| sample.labels.contains(l)))
        .map(|sample| sample.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_and_read_back() {
        let metrics = Metrics::new();
        metrics.purchase("created", Duration::from_millis(3));
        metrics.purchase("created", Duration::from_millis(4));
        metrics.purchase("sold_out", Duration::from_millis(1));
        metrics.event("retry");
        let text = metrics.render(10, 4);
        assert_eq!(
            sum_samples(
                &text,
                "ticket_rush_purchases_total",
                Some("outcome=\"created\"")
            ),
            2.0
        );
        assert_eq!(sum_samples(&text, "ticket_rush_purchases_total", None), 3.0);
        assert_eq!(
            sum_samples(
                &text,
                "ticket_rush_strategy_events_total",
                Some("event=\"retry\"")
            ),
            1.0
        );
        assert_eq!(
            sum_samples(&text, "ticket_rush_db_pool_connections", None),
            10.0
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn samples_are_read_with_their_labels() {
        let text = "# HELP x\n\
            ticket_rush_purchases_total{outcome=\"created\",level=\"2\"} 100\n\
            ticket_rush_pool_size 10\n\
            garbage\n";
        let all: Vec<Sample> = samples(text).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].name, "ticket_rush_purchases_total");
        assert_eq!(all[0].label("outcome"), Some("created"));
        assert_eq!(all[0].label("level"), Some("2"));
        assert_eq!(all[0].label("event"), None);
        assert_eq!(
            (all[1].name, all[1].labels, all[1].value),
            ("ticket_rush_pool_size", "", 10.0)
        );
    }
}

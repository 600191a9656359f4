//! The servers' own counters, read from their `/metrics` before and after a
//! run, for the report's `server_metrics`.

use std::collections::BTreeMap;
use std::time::Duration;

/// Reads every server's `/metrics` and sums the counters the report shows.
/// A server that does not answer adds nothing (the report still stands on
/// the database).
pub async fn scrape_metrics(targets: &[String]) -> BTreeMap<String, f64> {
    let client = reqwest::Client::new();
    let mut totals = BTreeMap::new();
    for target in targets {
        let Ok(response) = client
            .get(format!("{target}/metrics"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        for (key, value) in counters(&text) {
            *totals.entry(key).or_insert(0.0) += value;
        }
    }
    totals
}

/// What the counters did between two scrapes: `after - before`, per key.
pub fn metrics_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(key, value)| (key.clone(), value - before.get(key).copied().unwrap_or(0.0)))
        .collect()
}

/// Picks the purchase and strategy-event counters out of Prometheus text, as
/// `purchases:<outcome>` and `event:<event>`.
pub fn counters(text: &str) -> Vec<(String, f64)> {
    ticket_core::metrics::samples(text)
        .filter_map(|sample| {
            let (label, prefix) = match sample.name {
                "ticket_rush_purchases_total" => ("outcome", "purchases"),
                "ticket_rush_strategy_events_total" => ("event", "event"),
                _ => return None,
            };
            let name = sample.label(label)?;
            Some((format!("{prefix}:{name}"), sample.value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_counters_are_reported_per_round() {
        let before = BTreeMap::from([("event:retry".to_owned(), 7.0)]);
        let after = BTreeMap::from([
            ("event:retry".to_owned(), 10.0),
            ("purchases:created".to_owned(), 100.0),
        ]);
        let delta = metrics_delta(&before, &after);
        assert_eq!(delta["event:retry"], 3.0);
        assert_eq!(delta["purchases:created"], 100.0);
    }

    #[test]
    fn counters_are_read_from_prometheus_text() {
        let text = "# HELP x\n\
            ticket_rush_purchases_total{outcome=\"created\"} 100\n\
            ticket_rush_strategy_events_total{event=\"retry\"} 7\n\
            ticket_rush_purchase_duration_seconds_sum 1.5\n";
        assert_eq!(
            counters(text),
            vec![
                ("purchases:created".to_owned(), 100.0),
                ("event:retry".to_owned(), 7.0)
            ]
        );
    }
}

//! Where a rush's buyers waited: each buyer's latency (barrier to final
//! answer) split into the time its client spent opening connections, the
//! time the servers say they spent (`Server-Timing: app`, see
//! [`ticket_core::api::timing`]), and the rest, which is queueing: in the
//! load tool's runtime, in the kernel's accept and socket queues, and in
//! the server before its handler ran.

use std::time::Duration;

use hdrhistogram::Histogram;
use ticket_core::api::timing::{parse_duration_ms, HANDLER_METRIC, SERVER_TIMING};

use crate::model::{Latency, LatencySplit};

/// What one buyer measured.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BuyerTimes {
    /// Release to final answer.
    pub took: Duration,
    /// Opening connections after the release.
    pub connect: Duration,
    /// The servers' own time, summed over the buyer's answers.
    pub server: Duration,
    /// Of which the strategy's sale (`Server-Timing: sale`).
    pub sale: Duration,
    /// Of which the `Idempotency-Key` in PostgreSQL (`Server-Timing: idem`).
    pub idem: Duration,
    /// Connections opened after the release.
    pub connections: u64,
    /// Answers that carried a `Server-Timing` duration.
    pub timed_answers: u64,
}

impl BuyerTimes {
    /// What is neither connecting nor the server's own time.
    fn queue(&self) -> Duration {
        self.took.saturating_sub(self.connect + self.server)
    }

    /// Adds the server time an answer's headers report, if they do.
    pub fn add_server_time(&mut self, headers: &reqwest::header::HeaderMap) {
        let read = |name: &str| {
            headers
                .get_all(SERVER_TIMING)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .find_map(|value| parse_duration_ms(value, name))
                .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        };
        if let Some(took) = read(HANDLER_METRIC) {
            self.server += took;
            self.timed_answers += 1;
        }
        self.sale += read("sale").unwrap_or_default();
        self.idem += read("idem").unwrap_or_default();
    }
}

/// The split of every buyer's latency; `None` when no buyer was measured.
pub(crate) fn split(buyers: &[BuyerTimes], whole: &Histogram<u64>) -> Option<LatencySplit> {
    if buyers.is_empty() {
        return None;
    }
    let part = |of: fn(&BuyerTimes) -> Duration| {
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        for buyer in buyers {
            histogram.saturating_record(of(buyer).as_micros().max(1) as u64);
        }
        Latency::of(&histogram)
    };
    let p99 = Duration::from_micros(whole.value_at_quantile(0.99));
    let slowest: Vec<&BuyerTimes> = buyers.iter().filter(|b| b.took >= p99).collect();
    let mean = |of: fn(&BuyerTimes) -> Duration| {
        let sum: f64 = slowest.iter().map(|b| of(b).as_secs_f64() * 1000.0).sum();
        sum / slowest.len().max(1) as f64
    };
    Some(LatencySplit {
        connect: part(|b| b.connect),
        queue: part(BuyerTimes::queue),
        server: part(|b| b.server),
        sale: part(|b| b.sale),
        idem: part(|b| b.idem),
        slowest: [
            mean(|b| b.connect),
            mean(BuyerTimes::queue),
            mean(|b| b.server),
        ],
        connections_opened: buyers.iter().map(|b| b.connections).sum(),
        timed_answers: buyers.iter().map(|b| b.timed_answers).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn the_queue_is_what_connecting_and_the_server_do_not_explain() {
        let buyers: Vec<BuyerTimes> = (1..=100)
            .map(|i| BuyerTimes {
                took: ms(10 * i),
                connect: ms(i),
                server: ms(2),
                sale: ms(1),
                idem: Duration::ZERO,
                connections: 1,
                timed_answers: 1,
            })
            .collect();
        let mut whole = Histogram::<u64>::new(3).unwrap();
        for b in &buyers {
            whole.record(b.took.as_micros() as u64).unwrap();
        }
        let split = split(&buyers, &whole).unwrap();
        assert_eq!(split.connections_opened, 100);
        assert_eq!(split.timed_answers, 100);
        assert!((split.server.p99 - 2.0).abs() < 0.01);
        // The slowest buyer: 1000 ms, of which 100 connecting, 2 served.
        assert!((split.queue.max - 898.0).abs() < 1.0, "{:?}", split.queue);
        assert!(
            (split.slowest[0] - 100.0).abs() < 1.0,
            "{:?}",
            split.slowest
        );
        assert!((split.slowest[2] - 2.0).abs() < 0.01);
    }

    #[test]
    fn server_time_is_read_from_server_timing_and_summed_over_answers() {
        let mut times = BuyerTimes::default();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(SERVER_TIMING, "app;dur=1.500".parse().unwrap());
        headers.append(SERVER_TIMING, "sale;dur=1.000".parse().unwrap());
        times.add_server_time(&headers);
        times.add_server_time(&headers);
        times.add_server_time(&reqwest::header::HeaderMap::new());
        assert_eq!(times.timed_answers, 2);
        assert_eq!(times.server, ms(3));
        assert_eq!(times.sale, ms(2));
        assert_eq!(times.idem, Duration::ZERO);
    }
}

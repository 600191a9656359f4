//! The pause between two tries.

use std::time::Duration;

use rand::Rng as _;
use tokio::sync::watch;

/// Exponential backoff with jitter: each pause is drawn between half and all
/// of `base * 2^n`, capped at `max`, so that workers retrying together drift
/// apart.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, never waits longer than `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The next pause (and counts it).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// Back to the first pause, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Sleeps for the next pause.
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Sleeps for the next pause unless `shutdown` turns true first; returns
    /// whether to go on.
    pub async fn sleep_unless(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        if *shutdown.borrow() {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep(self.next_delay()) => !*shutdown.borrow(),
            _ = shutdown.changed() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_its_ceiling() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(10));
        assert!(delays[0] >= Duration::from_millis(5));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(100)));
        assert!(delays[9] >= Duration::from_millis(50));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(10));
    }
}

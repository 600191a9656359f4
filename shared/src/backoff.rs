//! Bounded exponential backoff with jitter: how long to pause before trying
//! again, for everything in the workspace that retries (Level 2's lost
//! races, Level 3's spinning lock, Level 4's persistence worker).
//!
//! Try `n` (counting from 1) pauses at most `min(max, base * 2^(n-1))`:
//! exponential, so that a crowd of losers backs off further each time it
//! collides; capped, so that nobody sleeps longer than `max` at once; and
//! random below that ceiling, so that the crowd spreads out instead of
//! colliding again in lockstep. How much is random is the [`Jitter`].

use std::time::Duration;

/// How much of a pause is random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `0..=ceiling`: spreads a crowd the most; a pause may be
    /// near zero.
    Full,
    /// Uniform in `ceiling/2..=ceiling`: half fixed, half random, so a pause
    /// is never near zero (a spinning lock must not hammer Redis).
    Equal,
}

/// Bounded exponential backoff with jitter (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first pause.
    pub base: Duration,
    /// The largest ceiling the pauses grow to.
    pub max: Duration,
    /// How much of each pause is random.
    pub jitter: Jitter,
}

impl Backoff {
    /// Pauses uniform in `0..=ceiling`.
    pub const fn full_jitter(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            jitter: Jitter::Full,
        }
    }

    /// Pauses uniform in `ceiling/2..=ceiling`.
    pub const fn equal_jitter(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            jitter: Jitter::Equal,
        }
    }

    /// The longest pause try number `retry` (1, 2, 3...) may take.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.base
            .saturating_mul(1 << doublings)
            .min(self.max.max(self.base))
    }

    /// A random pause for try number `retry`, below its ceiling.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        let floor = match self.jitter {
            Jitter::Full => Duration::ZERO,
            Jitter::Equal => ceiling / 2,
        };
        let spread = u64::try_from((ceiling - floor).as_micros()).unwrap_or(u64::MAX);
        floor + Duration::from_micros(rand::random_range(0..=spread))
    }

    /// Sleeps for try number `retry`'s pause.
    pub async fn sleep(&self, retry: u32) {
        tokio::time::sleep(self.delay(retry)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: Backoff = Backoff::full_jitter(Duration::from_millis(2), Duration::from_millis(50));

    #[test]
    fn ceilings_double_and_then_stay_at_the_cap() {
        let ceilings: Vec<u64> = (1..=7)
            .map(|retry| FULL.ceiling(retry).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [2, 4, 8, 16, 32, 50, 50]);
        assert_eq!(FULL.ceiling(u32::MAX), FULL.max);
        assert_eq!(FULL.ceiling(0), FULL.base, "try 0 counts as the first");
    }

    #[test]
    fn full_jitter_is_random_but_never_above_the_ceiling() {
        let delays: Vec<Duration> = (0..200).map(|_| FULL.delay(4)).collect();
        assert!(delays.iter().all(|d| *d <= FULL.ceiling(4)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 10, "jitter should spread the pauses");
    }

    #[test]
    fn equal_jitter_never_pauses_less_than_half_the_ceiling() {
        let equal = Backoff {
            jitter: Jitter::Equal,
            ..FULL
        };
        let ceiling = equal.ceiling(3);
        let delays: Vec<Duration> = (0..200).map(|_| equal.delay(3)).collect();
        assert!(delays.iter().all(|d| *d >= ceiling / 2 && *d <= ceiling));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 10, "jitter should spread the pauses");
    }

    #[test]
    fn a_max_below_the_base_caps_nothing_below_the_base() {
        let odd = Backoff::full_jitter(Duration::from_millis(10), Duration::from_millis(1));
        assert_eq!(odd.ceiling(5), Duration::from_millis(10));
    }

    #[test]
    fn zero_backoff_never_sleeps() {
        let zero = Backoff::equal_jitter(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.delay(9), Duration::ZERO);
    }
}

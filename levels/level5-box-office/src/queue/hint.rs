//! `retry_after_ms`: when a waiting client should ask again.
//!
//! Without a hint, 10,000 waiting clients poll at whatever rate their
//! authors chose (say every 100 ms): 100,000 requests a second, to tell
//! almost all of them "still waiting". With the hint, a client polls about
//! twice per halving of its expected wait:
//!
//! ```text
//! rate    = admissions in the last 10 s / 10 s        (measured in Redis)
//! floor   = active_limit / admitted_ttl               (every place frees by then)
//! eta     = position / max(rate, floor)
//! hint    = clamp(eta / 2, 250 ms, 30 s), then +-10 % jitter
//! ```
//!
//! Half the expected wait: the client arrives early rather than late and
//! the hints shrink as it nears the front. A user at position p then polls
//! about 2·rate/p times a second, and the whole queue about
//! 2·rate·ln(N) times (the harmonic sum), instead of N/interval: for N =
//! 10,000 and 100 admissions a second, ~1,900 polls a second against
//! 100,000. The jitter keeps clients who joined together from polling in
//! lockstep. The floor covers a queue that has not moved for 10 s (all
//! places taken by slow buyers): the wait is then bounded by the idle
//! timeout, not infinite.

use std::time::Duration;

/// Admissions are counted over this window (`WINDOW` in `advance.lua`).
pub const WINDOW: Duration = Duration::from_secs(10);
/// The shortest hint: nobody polls faster than 4 times a second.
pub const MIN_MS: u64 = 250;
/// The longest hint.
pub const MAX_MS: u64 = 30_000;

/// The hint for a client at `position` (1 = next), before jitter.
/// `recent_admits` is the count in the last [`WINDOW`]; an admitted client
/// (position 0) is told 0: go on.
pub fn retry_after_ms(
    position: u64,
    recent_admits: u64,
    active_limit: u32,
    admitted_ttl: Duration,
) -> u64 {
    if position == 0 {
        return 0;
    }
    let rate = recent_admits as f64 / WINDOW.as_secs_f64();
    let floor = f64::from(active_limit) / admitted_ttl.as_secs_f64().max(0.001);
    let eta_ms = position as f64 / rate.max(floor) * 1000.0;
    ((eta_ms / 2.0) as u64).clamp(MIN_MS, MAX_MS)
}

/// `ms` moved by up to +-10 %, at random, so clients spread out.
pub fn jitter(ms: u64) -> u64 {
    if ms == 0 {
        return 0;
    }
    let spread = ms / 10;
    ms - spread + rand::random_range(0..=2 * spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn the_hint_grows_with_the_position_and_shrinks_with_the_rate() {
        // 100 admissions a second: position 1,000 waits ~10 s, told 5 s.
        assert_eq!(retry_after_ms(1_000, 1_000, 100, TTL), 5_000);
        assert!(retry_after_ms(2_000, 1_000, 100, TTL) > retry_after_ms(1_000, 1_000, 100, TTL));
        assert!(retry_after_ms(1_000, 2_000, 100, TTL) < retry_after_ms(1_000, 1_000, 100, TTL));
    }

    #[test]
    fn the_hint_is_bounded_and_zero_once_admitted() {
        assert_eq!(retry_after_ms(0, 0, 100, TTL), 0);
        assert_eq!(retry_after_ms(1, 10_000, 100, TTL), MIN_MS);
        assert_eq!(retry_after_ms(1_000_000, 0, 100, TTL), MAX_MS);
        // No admissions lately: the floor (100 places / 60 s) still gives a wait.
        assert_eq!(retry_after_ms(10, 0, 100, TTL), 3_000);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1_000 {
            let j = jitter(1_000);
            assert!((900..=1_100).contains(&j), "{j}");
        }
        assert_eq!(jitter(0), 0);
    }
}

//! The one backoff formula: a delay that doubles with each failure in a row, up to a cap.
//!
//! Pure: the caller chooses the base, the cap and how the delay is jittered (the Bundle
//! lifecycle draws its jitter from the Bundle's uid, the reconcilers from a random number).

use std::time::Duration;

/// The delay after `doublings` doublings of `base` (0: `base` itself), at most `cap`.
pub fn doubling_delay(base: Duration, cap: Duration, doublings: u32) -> Duration {
    let factor = 2u32.saturating_pow(doublings.min(31));
    base.saturating_mul(factor).min(cap)
}

/// [`doubling_delay`] scaled by `factor` (e.g. a jitter of 0.5..=1.0, so that objects failing
/// together do not retry together).
pub fn scaled(delay: Duration, factor: f64) -> Duration {
    delay.mul_f64(factor.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let base = Duration::from_millis(500);
        let cap = Duration::from_secs(300);
        assert_eq!(doubling_delay(base, cap, 0), Duration::from_millis(500));
        assert_eq!(doubling_delay(base, cap, 1), Duration::from_secs(1));
        assert_eq!(doubling_delay(base, cap, 4), Duration::from_secs(8));
        assert_eq!(doubling_delay(base, cap, 20), cap);
        assert_eq!(doubling_delay(base, cap, u32::MAX), cap);
    }

    #[test]
    fn scaling_never_goes_negative() {
        let delay = Duration::from_secs(4);
        assert_eq!(scaled(delay, 0.5), Duration::from_secs(2));
        assert_eq!(scaled(delay, -1.0), Duration::ZERO);
    }
}

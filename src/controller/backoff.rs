//! Per-object exponential backoff with jitter, for transient reconcile failures.

use std::{collections::HashMap, hash::Hash, sync::Mutex, time::Duration};

use crate::core::backoff::{doubling_delay, scaled};

/// The delay before retry number `attempt` (0 for the first): `base * 2^attempt`, at most `max`,
/// scaled by `jitter` in [0.5, 1.0] so that objects failing together do not retry together.
/// (The formula is the core's [`doubling_delay`], shared with the Bundle lifecycle.)
pub fn delay(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    scaled(doubling_delay(base, max, attempt), jitter.clamp(0.5, 1.0))
}

/// Failure counts per object.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempts: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Delays from `base` doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Records one more failure of `key` and returns how long to wait before retrying it.
    pub fn next_delay<K: Hash + Eq + ToString>(&self, key: &K) -> Duration {
        let mut attempts = self
            .attempts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let attempt = attempts.entry(key.to_string()).or_insert(0);
        let wait = delay(*attempt, self.base, self.max, 0.5 + fastrand::f64() / 2.0);
        *attempt = attempt.saturating_add(1);
        wait
    }

    /// Forgets the failures of `key` (after a success).
    pub fn reset<K: ToString>(&self, key: &K) {
        let mut attempts = self
            .attempts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        attempts.remove(&key.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(300);
        assert_eq!(delay(0, base, max, 1.0), Duration::from_millis(500));
        assert_eq!(delay(1, base, max, 1.0), Duration::from_secs(1));
        assert_eq!(delay(4, base, max, 1.0), Duration::from_secs(8));
        assert_eq!(delay(20, base, max, 1.0), max);
        assert_eq!(delay(u32::MAX, base, max, 1.0), max);
    }

    #[test]
    fn jitter_scales_between_half_and_all() {
        let base = Duration::from_secs(4);
        let max = Duration::from_secs(300);
        assert_eq!(delay(0, base, max, 0.5), Duration::from_secs(2));
        assert_eq!(delay(0, base, max, 0.0), Duration::from_secs(2), "clamped");
        assert_eq!(delay(0, base, max, 7.0), Duration::from_secs(4), "clamped");
    }

    #[test]
    fn each_object_backs_off_on_its_own_and_resets() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let first = backoff.next_delay(&"ns/a");
        assert!((Duration::from_millis(500)..=Duration::from_secs(1)).contains(&first));
        let _ = backoff.next_delay(&"ns/a");
        let third = backoff.next_delay(&"ns/a");
        assert!(
            (Duration::from_secs(2)..=Duration::from_secs(4)).contains(&third),
            "{third:?}"
        );
        let other = backoff.next_delay(&"ns/b");
        assert!(other <= Duration::from_secs(1), "{other:?}");
        backoff.reset(&"ns/a");
        assert!(backoff.next_delay(&"ns/a") <= Duration::from_secs(1));
    }
}

//! Rollout cohorts: which devices get a rollout's candidate.
//!
//! A device's bucket is a salted SHA-256 of its device id, mapped to 0..10 000 (basis points).
//! It is in the cohort when its bucket is below the rollout's percent × 100. Stateless, so every
//! replica agrees; monotonic, so a device in the cohort at 5% stays in it at 25%; and a new salt
//! (a new Rollout) draws a fresh cohort.

use sha2::{Digest, Sha256};

/// Buckets per 100%: percents are whole numbers, so any multiple of 100 would do; 10 000 leaves
/// room for basis-point percents.
pub const BUCKETS: u32 = 10_000;

/// The bucket of a device under a salt, in `0..BUCKETS`.
pub fn bucket(salt: &str, device_id: &str) -> u32 {
    let digest = Sha256::new()
        .chain_update(salt.as_bytes())
        .chain_update(b":")
        .chain_update(device_id.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 2^64 is not a multiple of 10 000; the bias (< 1e-15) is far below anything measurable.
    (u64::from_be_bytes(first) % u64::from(BUCKETS)) as u32
}

/// Whether a device is in the cohort of a rollout at `percent` (0 to 100).
pub fn in_cohort(salt: &str, device_id: &str, percent: u32) -> bool {
    bucket(salt, device_id) < percent.min(100) * (BUCKETS / 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(i: u32) -> String {
        format!("{:08x}-0000-4000-8000-{:012x}", i, u64::from(i) * 7919)
    }

    #[test]
    fn the_share_in_the_cohort_matches_the_percent() {
        let n = 20_000;
        for percent in [1, 5, 25, 50, 99] {
            let inside = (0..n)
                .filter(|&i| in_cohort("rollout-a", &device(i), percent))
                .count();
            let share = inside as f64 * 100.0 / f64::from(n);
            assert!(
                (share - f64::from(percent)).abs() < 1.0,
                "{percent}%: {share:.2}%"
            );
        }
    }

    #[test]
    fn cohorts_only_grow_as_the_percent_rises() {
        for i in 0..5_000 {
            let id = device(i);
            let mut was_in = false;
            for percent in [0, 1, 5, 10, 25, 50, 75, 100] {
                let is_in = in_cohort("salt", &id, percent);
                assert!(!was_in || is_in, "device {id} left the cohort at {percent}%");
                was_in = is_in;
            }
            assert!(!in_cohort("salt", &id, 0) && in_cohort("salt", &id, 100));
        }
    }

    #[test]
    fn a_new_salt_draws_a_different_cohort() {
        let a: Vec<bool> = (0..2_000).map(|i| in_cohort("one", &device(i), 50)).collect();
        let b: Vec<bool> = (0..2_000).map(|i| in_cohort("two", &device(i), 50)).collect();
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        // Independent draws agree about half the time.
        assert!((800..1_200).contains(&same), "{same} of 2000 agree");
    }

    #[test]
    fn buckets_are_stable_across_calls_and_known() {
        assert_eq!(bucket("s", "d"), bucket("s", "d"));
        // Pinned (computed independently with Python's hashlib) so that a change of the hash,
        // which would reshuffle every live cohort, fails loudly.
        assert_eq!(bucket("salt", "6f0e2f2a-3b1c-4c55-9a7e-2d7f0c9b1a11"), 7241);
        assert_eq!(
            bucket("rollout-uid", "0c4f3f8e-5a0d-4d6e-8f7a-1b2c3d4e5f60"),
            6233
        );
    }
}

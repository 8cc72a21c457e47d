//! The one clock of every shell (the controller, the update server and standalone mode),
//! injected so that the pure core never reads one and tests can move time by hand.
//!
//! Besides reading the time, a clock sleeps: the drivers wait until a decision's deadline (a
//! pause's end, the next analysis), so a [`TestClock`] must wake those sleepers when a test
//! advances it; a test crosses a one-hour pause in milliseconds.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;

/// A sleep of a [`Clock`] (boxed: clocks are shared as `Arc<dyn Clock>`).
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The current time and sleeps until a time, injected into every shell.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> Timestamp;

    /// Resolves once [`Clock::now`] has reached `at` (at once when it has already).
    fn sleep_until(&self, at: Timestamp) -> Sleep;

    /// Now, in milliseconds since the Unix epoch (the device store's unit).
    fn now_ms(&self) -> i64 {
        self.now().as_millisecond()
    }

    /// Resolves once `wait` has passed on this clock.
    fn sleep(&self, wait: Duration) -> Sleep {
        self.sleep_until(later(self.now(), wait))
    }

    /// For a clock moved by hand, a receiver that sees each move (`None` for wall time, whose
    /// passing the runtime's timers already follow). A shell whose waits run on timers it does
    /// not own (kube-runtime's requeues) looks again when it sees one.
    fn moves(&self) -> Option<watch::Receiver<Timestamp>> {
        None
    }
}

/// `at` plus `wait`, saturating at the end of time.
pub fn later(at: Timestamp, wait: Duration) -> Timestamp {
    at.saturating_add(SignedDuration::try_from(wait).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

/// The system clock: wall time, and tokio's timers for sleeps.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep {
        Box::pin(async move {
            // Tokio's timers run on the monotonic clock and round to milliseconds: look at the
            // wall clock again after each wake, so the sleeper never wakes before `at`.
            loop {
                let left = at.duration_since(Timestamp::now());
                if left <= SignedDuration::ZERO {
                    return;
                }
                let left = Duration::try_from(left).unwrap_or(Duration::MAX);
                tokio::time::sleep(left.max(Duration::from_millis(1))).await;
            }
        })
    }
}

/// A clock that stands still until a test moves it ([`TestClock::advance`], [`TestClock::set`]);
/// moving it wakes every sleep whose time has come. Clones share one time, held by the watch
/// channel that wakes the sleepers.
#[derive(Clone, Debug)]
pub struct TestClock {
    now: Arc<watch::Sender<Timestamp>>,
}

impl TestClock {
    /// A clock standing at `start`.
    pub fn at(start: Timestamp) -> TestClock {
        TestClock {
            now: Arc::new(watch::Sender::new(start)),
        }
    }

    /// A clock standing at the system clock's now.
    pub fn starting_now() -> TestClock {
        TestClock::at(Timestamp::now())
    }

    /// Moves the clock forward by `by`, waking the sleeps that are due.
    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|now| *now = later(*now, by));
    }

    /// Sets the clock to `at` (forward or back), waking the sleeps that are due.
    pub fn set(&self, at: Timestamp) {
        self.now.send_replace(at);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep {
        let mut moved = self.now.subscribe();
        Box::pin(async move {
            // `wait_for` checks the current time first, then each move.
            if moved.wait_for(|now| *now >= at).await.is_err() {
                // The clock is gone (its last clone dropped): time never moves again.
                std::future::pending::<()>().await;
            }
        })
    }

    fn moves(&self) -> Option<watch::Receiver<Timestamp>> {
        Some(self.now.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).expect("a time")
    }

    #[tokio::test]
    async fn a_test_clock_wakes_a_one_hour_sleep_when_it_is_advanced_past_it() {
        let clock = TestClock::at(at(0));
        let mut sleep = tokio::spawn(clock.sleep(Duration::from_secs(3_600)));
        clock.advance(Duration::from_secs(3_599));
        let early = tokio::time::timeout(Duration::from_millis(50), &mut sleep).await;
        assert!(early.is_err(), "woke a second before the hour");
        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), sleep)
            .await
            .expect("woke at the hour")
            .expect("the sleep ran");
        assert_eq!(clock.now(), at(3_600));
    }

    #[tokio::test]
    async fn a_sleep_until_a_past_time_resolves_at_once_on_both_clocks() {
        let test = TestClock::at(at(10));
        tokio::time::timeout(Duration::from_secs(1), test.sleep_until(at(5)))
            .await
            .expect("the test clock is past it");
        let past = SystemClock.now() - SignedDuration::from_secs(1);
        tokio::time::timeout(Duration::from_secs(1), SystemClock.sleep_until(past))
            .await
            .expect("the system clock is past it");
    }

    #[tokio::test]
    async fn the_system_clock_sleeps_until_its_wall_time_reaches_the_deadline() {
        let deadline = later(SystemClock.now(), Duration::from_millis(30));
        SystemClock.sleep_until(deadline).await;
        assert!(SystemClock.now() >= deadline);
    }

    #[tokio::test]
    async fn a_test_clock_reports_its_moves_and_the_system_clock_none() {
        assert!(SystemClock.moves().is_none());
        let clock = TestClock::at(at(0));
        let mut moves = clock.moves().expect("a test clock reports its moves");
        assert!(!moves.has_changed().expect("the clock lives"));
        clock.advance(Duration::from_secs(3_600));
        tokio::time::timeout(Duration::from_secs(5), moves.changed())
            .await
            .expect("the move is seen")
            .expect("the clock lives");
        assert_eq!(*moves.borrow_and_update(), at(3_600));
    }

    #[test]
    fn clones_of_a_test_clock_share_one_time() {
        let clock = TestClock::at(at(0));
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        clock.set(at(42));
        assert_eq!(shared.now(), at(42));
        assert_eq!(shared.now_ms(), at(42).as_millisecond());
    }
}

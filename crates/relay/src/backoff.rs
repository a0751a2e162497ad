//! The one reconnect back-off: every loop that reconnects to something that
//! went away (the agent to a QEMU chardev or to libvirtd, the gateway to an
//! agent) waits by it.
//!
//! Exponential and capped, with "equal jitter": each wait is a random
//! duration between half the current step and the step itself, and the step
//! doubles up to the cap. The lower half keeps a loop from spinning; the
//! random half spreads out the many loops that lost their peer at the same
//! moment (every console of a restarted libvirtd, every gateway of a
//! restarted agent), so they do not all knock at once.
//!
//! Sans-IO: it hands out durations and never sleeps.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Reconnect waits for one loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// The current step: the longest the next wait can be.
    step: Duration,
    /// xorshift64 state; never zero.
    rng: u64,
}

impl Backoff {
    /// Waits that start at most `min` and grow to at most `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        // Each RandomState is seeded afresh by the standard library, which
        // is all the randomness jitter needs.
        let seed = RandomState::new().build_hasher().finish();
        Backoff::with_seed(min, max, seed)
    }

    /// The same with a given seed, for tests that need the same waits.
    pub fn with_seed(min: Duration, max: Duration, seed: u64) -> Backoff {
        let max = max.max(min);
        Backoff {
            min,
            max,
            step: min,
            rng: seed | 1,
        }
    }

    /// How long to wait before the next attempt; the step after it doubles.
    pub fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        let half = step / 2;
        let spread = u64::try_from((step - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter = match spread {
            0 => 0,
            s => self.random() % s.saturating_add(1),
        };
        half + Duration::from_nanos(jitter)
    }

    /// Back to the shortest step, after a connection that worked.
    pub fn reset(&mut self) {
        self.step = self.min;
    }

    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    #[test]
    fn waits_grow_to_the_cap_within_half_and_all_of_each_step() {
        let mut b = Backoff::with_seed(MIN, MAX, 7);
        let mut step = MIN;
        for _ in 0..20 {
            let w = b.next_wait();
            assert!(w >= step / 2 && w <= step, "{w:?} outside {step:?}");
            step = (step * 2).min(MAX);
        }
        // At the cap, the waits stay there.
        let w = b.next_wait();
        assert!(w >= MAX / 2 && w <= MAX, "{w:?}");
    }

    #[test]
    fn reset_starts_over_at_the_shortest_step() {
        let mut b = Backoff::with_seed(MIN, MAX, 7);
        for _ in 0..10 {
            b.next_wait();
        }
        b.reset();
        let w = b.next_wait();
        assert!(w >= MIN / 2 && w <= MIN, "{w:?}");
    }

    #[test]
    fn loops_that_start_together_spread_out() {
        // A hundred loops whose peer went away at once: their first waits
        // are not one value (as without jitter) but spread over the step.
        let waits: std::collections::BTreeSet<Duration> = (0..100)
            .map(|_| Backoff::new(MIN, MAX).next_wait())
            .collect();
        assert!(waits.len() > 50, "only {} distinct waits", waits.len());
        let (lo, hi) = (*waits.first().unwrap(), *waits.last().unwrap());
        assert!(hi - lo > MIN / 4, "spread {lo:?}..{hi:?}");
    }

    #[test]
    fn a_zero_step_never_waits_and_never_panics() {
        let mut b = Backoff::with_seed(Duration::ZERO, Duration::ZERO, 0);
        assert_eq!(b.next_wait(), Duration::ZERO);
        let mut b = Backoff::with_seed(Duration::from_nanos(1), Duration::MAX, 3);
        for _ in 0..200 {
            b.next_wait();
        }
    }
}

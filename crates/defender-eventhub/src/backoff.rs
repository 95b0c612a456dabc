//! Jittered exponential backoff for reconnects and retries.

use std::time::Duration;

/// Full-jitter exponential backoff: the n-th wait is uniform in `[0, min(max, base * 2^n)]`, so
/// many readers that failed together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base`, capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max, attempt: 0 }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << self.attempt.min(16)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_under_the_growing_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for n in 0..20u32 {
            let cap = Duration::from_millis(100)
                .saturating_mul(1 << n.min(16))
                .min(Duration::from_secs(5));
            assert!(b.next_delay() <= cap);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}

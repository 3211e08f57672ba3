//! Jittered exponential backoff for reconnects.
//!
//! A fleet of devices that loses its broker must not come back in lockstep;
//! each delay is drawn uniformly from [d/2, d] where d doubles up to a cap.

use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: SystemRandom,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
            rng: SystemRandom::new(),
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.attempt.min(16);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.base.saturating_mul(factor).min(self.cap);
        let mut bytes = [0u8; 4];
        // If the OS RNG fails, fall back to the full ceiling: slower, still correct.
        let fraction = match self.rng.fill(&mut bytes) {
            Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
            Err(_) => 1.0,
        };
        ceiling.mul_f64(0.5 + 0.5 * fraction)
    }

    /// Called after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(2));
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_secs(1), "{late:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}

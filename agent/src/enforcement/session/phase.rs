//! The two sessions' phases and timers (no IO, no gate): which round is
//! where, when it is due, and the jittered backoff.

use mctc_shim::DeviceId;
use mctc_shim::gate::Generation;
use mctc_shim::messages::NoncePurpose;
use mctc_shim::topics::DeviceTopic;
use mctc_shim::tpm::PcrSelection;
use ring::rand::SecureRandom;

/// How long a quote may take before it counts as a transient failure (a
/// quote takes well under a second on any TPM, even queued behind a drift
/// read or a checkpoint).
pub const QUOTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The session's round a publish belongs to: if the outbox refuses it, the
/// round failed ([`super::Core::publish_failed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Renewal,
    Fresh,
}

impl Which {
    pub(super) fn purpose(self) -> NoncePurpose {
        match self {
            Which::Renewal => NoncePurpose::Renew,
            Which::Fresh => NoncePurpose::FreshOp,
        }
    }
}

/// A nonce to quote and the PCRs the authority asked to quote with it
/// (the nonce message's selection, or for a renewal by `next_nonce` the
/// installed artifact's, which the authority took from the same policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Challenge {
    pub(super) nonce: [u8; 32],
    pub(super) selection: PcrSelection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Not attesting; start at `start_at` (with a known nonce, or by asking
    /// for one). `start_at: None` = parked until something schedules it.
    Idle {
        start_at: Option<u64>,
        nonce: Option<Challenge>,
    },
    AwaitNonce {
        deadline: u64,
    },
    /// The gate's generation is taken when the quote starts: the answer
    /// installs only if the gate has not closed for a cause other than
    /// expiry since ([`mctc_shim::gate`], "Generations").
    Quoting {
        round: u64,
        challenge: Challenge,
        quoted_in: Generation,
    },
    AwaitAnswer {
        nonce: [u8; 32],
        quoted_in: Generation,
        deadline: u64,
    },
}

pub(super) const PARKED: Phase = Phase::Idle {
    start_at: None,
    nonce: None,
};

/// Both sessions' state.
#[derive(Debug)]
pub(super) struct Sessions {
    pub(super) renewal: Phase,
    pub(super) fresh: Phase,
    pub(super) rounds: u64,
    pub(super) failures: u32,
    pub(super) retry_min_ms: u64,
    pub(super) retry_max_ms: u64,
    pub(super) nonce_topic: String,
    pub(super) evidence_topic: String,
    pub(super) rng: ring::rand::SystemRandom,
}

/// A uniformly random fraction in [0, 1).
fn random_fraction(rng: &ring::rand::SystemRandom) -> f64 {
    let mut bytes = [0u8; 4];
    // A failing system RNG leaves zeros: no jitter, still correct.
    let _ = rng.fill(&mut bytes);
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

/// `base` scaled by a random factor in `[1 - spread, 1 + spread)`.
pub(super) fn jittered(rng: &ring::rand::SystemRandom, base: u64, spread: f64) -> u64 {
    let factor = 1.0 - spread + 2.0 * spread * random_fraction(rng);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a delay in ms, far below 2^52; the factor is positive"
    )]
    let scaled = (base as f64 * factor) as u64;
    scaled
}

impl Sessions {
    pub(super) fn new(device: &DeviceId, retry_min_ms: u64, retry_max_ms: u64) -> Sessions {
        Sessions {
            renewal: PARKED,
            fresh: PARKED,
            rounds: 0,
            failures: 0,
            retry_min_ms,
            retry_max_ms,
            nonce_topic: DeviceTopic::NonceRequest.topic(device).as_str().to_owned(),
            evidence_topic: DeviceTopic::Evidence.topic(device).as_str().to_owned(),
            rng: ring::rand::SystemRandom::new(),
        }
    }

    pub(super) fn phase(&self, which: Which) -> Phase {
        match which {
            Which::Renewal => self.renewal,
            Which::Fresh => self.fresh,
        }
    }

    pub(super) fn set(&mut self, which: Which, phase: Phase) {
        match which {
            Which::Renewal => self.renewal = phase,
            Which::Fresh => self.fresh = phase,
        }
    }

    /// Starts the renewal session at `now` (with `nonce`, or asking).
    pub(super) fn schedule_renewal(&mut self, now: u64, nonce: Option<Challenge>) {
        self.renewal = Phase::Idle {
            start_at: Some(now),
            nonce,
        };
    }

    /// Reattests with a requested nonce after `delay`, unless a round is
    /// already under way or due sooner.
    pub(super) fn schedule_fresh_renewal(&mut self, now: u64, delay: Option<u64>) {
        let at = now.saturating_add(delay.unwrap_or(0));
        if let Phase::Idle { start_at, .. } = self.renewal {
            let start_at = Some(start_at.map_or(at, |s| s.min(at)));
            self.renewal = Phase::Idle {
                start_at,
                nonce: None,
            };
        }
    }

    /// The backoff before the next round after a failure.
    pub(super) fn failure_delay(&self) -> u64 {
        let (min, max) = (self.retry_min_ms, self.retry_max_ms);
        let base = min
            .saturating_mul(1u64 << self.failures.min(20))
            .min(max)
            .max(min);
        jittered(&self.rng, base, 0.2)
    }

    /// Parks the renewal until `now + delay`, asking for a new nonce then
    /// (a round under way is abandoned).
    pub(super) fn fail_renewal_for(&mut self, now: u64, delay: u64) {
        self.renewal = Phase::Idle {
            start_at: Some(now.saturating_add(delay)),
            nonce: None,
        };
    }

    pub(super) fn discard_all(&mut self) {
        self.renewal = PARKED;
        self.fresh = PARKED;
    }

    pub(super) fn discard_fresh(&mut self) {
        self.fresh = PARKED;
    }

    /// The gate closed for a cause that voids evidence: no round quoted
    /// before it may be answered, and the renewal's `next_nonce` belongs to
    /// the artifact that is gone. Both sessions start over with requested
    /// nonces (the renewal when the close schedules it, the fresh one for
    /// the queue's head). The gate refuses such an answer anyway
    /// ([`gate::GateError::StaleEvidence`]); dropping the rounds here means
    /// it is not even matched, and nothing waits for an answer that
    /// cannot count.
    pub(super) fn void_rounds(&mut self) {
        self.renewal = PARKED;
        self.fresh = PARKED;
    }

    /// A new broker session: whatever was in flight is lost (clean
    /// sessions), so in-flight rounds start over.
    pub(super) fn on_connected(&mut self, now: u64) {
        match self.renewal {
            Phase::Idle {
                start_at: Some(_), ..
            } => {}
            Phase::Idle {
                start_at: None,
                nonce,
            } => {
                self.renewal = Phase::Idle {
                    start_at: Some(now),
                    nonce,
                };
            }
            Phase::AwaitNonce { .. } | Phase::Quoting { .. } | Phase::AwaitAnswer { .. } => {
                self.renewal = Phase::Idle {
                    start_at: Some(now),
                    nonce: None,
                };
            }
        }
    }

    pub(super) fn next_wake(&self) -> Option<u64> {
        let wake = |phase: Phase| match phase {
            Phase::Idle { start_at, .. } => start_at,
            Phase::AwaitNonce { deadline } | Phase::AwaitAnswer { deadline, .. } => Some(deadline),
            Phase::Quoting { .. } => None,
        };
        match (wake(self.renewal), wake(self.fresh)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_spread() {
        let rng = ring::rand::SystemRandom::new();
        for _ in 0..1000 {
            let j = jittered(&rng, 10_000, 0.1);
            assert!((9_000..11_000).contains(&j), "{j}");
        }
        assert_eq!(jittered(&rng, 0, 0.1), 0);
    }
}

//! Time as the agent decides on it, and the TPM boot it stamps records with.
//!
//! Deadlines are CLOCK_BOOTTIME milliseconds ([`BootClock`]); tokio timers
//! only wake the enforcement loop, which then asks the gate with the boot
//! clock. Tests substitute a clock driven by tokio's paused time.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mctc_shim::tpm::BootCounters;

/// The agent's clocks.
pub trait Clock: Send + Sync + Debug + 'static {
    /// CLOCK_BOOTTIME in ms: every deadline is decided on this.
    fn now_ms(&self) -> u64;
    /// Unix ms, only if the wall clock is trusted: what decisions (an
    /// artifact's `exp`) may use.
    fn wall_ms(&self) -> Option<u64>;
    /// Unix ms as the system says, trusted or not: for what people read
    /// (the status, a revocation marker), never for a decision.
    fn wall_display_ms(&self) -> u64;
}

/// The production clock.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    pub wall_trusted: bool,
}

impl Clock for BootClock {
    fn now_ms(&self) -> u64 {
        mctc_service::clock::boottime_ms()
    }

    fn wall_ms(&self) -> Option<u64> {
        self.wall_trusted.then(mctc_service::clock::wall_ms)
    }

    fn wall_display_ms(&self) -> u64 {
        mctc_service::clock::wall_ms()
    }
}

/// The TPM boot counters last observed (by a quote or a drift check),
/// shared by the enforcement task and the lineage writer.
#[derive(Debug, Clone, Default)]
pub struct CurrentBoot(Arc<AtomicU64>);

impl CurrentBoot {
    pub fn new(boot: BootCounters) -> CurrentBoot {
        let boot_state = CurrentBoot::default();
        boot_state.set(boot);
        boot_state
    }

    pub fn set(&self, boot: BootCounters) {
        let packed = (u64::from(boot.reset) << 32) | u64::from(boot.restart);
        self.0.store(packed, Ordering::Release);
    }

    pub fn get(&self) -> BootCounters {
        let packed = self.0.load(Ordering::Acquire);
        BootCounters {
            reset: (packed >> 32) as u32,
            restart: (packed & 0xffff_ffff) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_counters_round_trip() {
        let boot = CurrentBoot::new(BootCounters {
            reset: u32::MAX,
            restart: 7,
        });
        assert_eq!(
            boot.get(),
            BootCounters {
                reset: u32::MAX,
                restart: 7
            }
        );
    }
}

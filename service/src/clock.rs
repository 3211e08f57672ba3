//! The clock every deadline is decided on.
//!
//! `std::time::Instant` is CLOCK_MONOTONIC on Linux and stops while the
//! machine is suspended, so a deadline measured with it would last longer
//! across a suspend: that fails open. CLOCK_BOOTTIME keeps counting.

use rustix::time::{ClockId, clock_gettime};

/// Milliseconds since boot, including time spent suspended.
pub fn boottime_ms() -> u64 {
    let ts = clock_gettime(ClockId::Boottime);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
}

/// Wall-clock milliseconds since the Unix epoch (for records and `iat`
/// claims only; never for deciding a deadline).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_advances() {
        let a = boottime_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = boottime_ms();
        assert!(b >= a + 20, "{a} -> {b}");
    }
}

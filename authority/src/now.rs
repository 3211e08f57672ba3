//! Time as the authority decides with it.
//!
//! Deadlines that several processes share through the database (nonces,
//! enrollment challenges, the heartbeat lease, outbox claims) are stored as
//! CLOCK_BOOTTIME milliseconds together with the kernel's boot id. A
//! deadline from another boot is expired: after a reboot every stored
//! deadline fails closed, and a wall-clock jump changes nothing. The wall
//! clock is used only for claims (`iat`, `exp`) and for display.

const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The clocks could not be read (the host lacks what the authority needs).
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// The boot id could not be read.
    #[error("cannot read {BOOT_ID_PATH}: {0}")]
    BootId(#[source] std::io::Error),
    /// The boot id is empty.
    #[error("{BOOT_ID_PATH} is empty")]
    EmptyBootId,
}

/// One reading of the clocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Now {
    /// Unix milliseconds (claims and display only).
    pub wall_ms: u64,
    /// CLOCK_BOOTTIME milliseconds (every deadline).
    pub boot_ms: u64,
    /// The kernel's boot id: which boot `boot_ms` counts from.
    pub boot_id: String,
}

impl Now {
    /// Reads the clocks and the boot id.
    pub fn read() -> Result<Now, ClockError> {
        let boot_id = std::fs::read_to_string(BOOT_ID_PATH)
            .map_err(ClockError::BootId)?
            .trim()
            .to_owned();
        if boot_id.is_empty() {
            return Err(ClockError::EmptyBootId);
        }
        Ok(Now {
            wall_ms: mctc_service::clock::wall_ms(),
            boot_ms: mctc_service::clock::boottime_ms(),
            boot_id,
        })
    }

    /// The same boot, read again (the boot id cannot change while the
    /// process runs).
    pub fn refresh(&self) -> Now {
        Now {
            wall_ms: mctc_service::clock::wall_ms(),
            boot_ms: mctc_service::clock::boottime_ms(),
            boot_id: self.boot_id.clone(),
        }
    }

    /// Unix seconds.
    pub fn wall_secs(&self) -> u64 {
        self.wall_ms / 1000
    }

    /// The deadline `ms` from now.
    pub fn after(&self, ms: u64) -> Deadline {
        Deadline {
            boot_id: self.boot_id.clone(),
            boot_ms: self.boot_ms.saturating_add(ms),
        }
    }
}

/// Where a worker reads the time. The daemon gives the engine the host's
/// clocks ([`SystemClock`]); tests give it one they move by hand, so
/// deadlines are tested without waiting.
pub trait Clock: Send + std::fmt::Debug {
    /// A reading of the clocks.
    fn now(&self) -> Now;
}

/// The host's clocks on this boot.
#[derive(Debug, Clone)]
pub struct SystemClock {
    boot_id: String,
}

impl SystemClock {
    /// The clocks of the boot `reading` was taken on.
    pub fn of(reading: &Now) -> SystemClock {
        SystemClock {
            boot_id: reading.boot_id.clone(),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Now {
        Now {
            wall_ms: mctc_service::clock::wall_ms(),
            boot_ms: mctc_service::clock::boottime_ms(),
            boot_id: self.boot_id.clone(),
        }
    }
}

/// A point on one boot's CLOCK_BOOTTIME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    /// The boot it belongs to.
    pub boot_id: String,
    /// CLOCK_BOOTTIME milliseconds.
    pub boot_ms: u64,
}

impl Deadline {
    /// Whether the deadline is still ahead (exclusive: at the deadline it
    /// has passed). A deadline of another boot has passed.
    pub fn is_ahead(&self, now: &Now) -> bool {
        self.boot_id == now.boot_id && now.boot_ms < self.boot_ms
    }

    /// Milliseconds left, 0 if passed.
    pub fn remaining_ms(&self, now: &Now) -> u64 {
        if self.is_ahead(now) {
            self.boot_ms - now.boot_ms
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(boot_ms: u64, boot_id: &str) -> Now {
        Now {
            wall_ms: 1,
            boot_ms,
            boot_id: boot_id.into(),
        }
    }

    #[test]
    fn deadlines_are_exclusive_and_die_with_the_boot() {
        let now = at(1000, "a");
        let d = now.after(500);
        assert!(d.is_ahead(&at(1499, "a")));
        assert_eq!(d.remaining_ms(&at(1499, "a")), 1);
        assert!(!d.is_ahead(&at(1500, "a")));
        assert_eq!(d.remaining_ms(&at(1600, "a")), 0);
        // After a reboot boottime restarts near 0: still expired.
        assert!(!d.is_ahead(&at(10, "b")));
    }

    #[test]
    fn reads_this_hosts_boot() {
        let now = Now::read().unwrap();
        assert!(!now.boot_id.is_empty());
        assert!(now.wall_secs() > 1_600_000_000);
        let later = now.refresh();
        assert!(later.boot_ms >= now.boot_ms);
        assert_eq!(later.boot_id, now.boot_id);
    }
}

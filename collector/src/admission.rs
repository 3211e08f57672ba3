//! Admission of incoming lineage at the MQTT edge, before anything is
//! decoded or queued for the ingest worker. Sans IO: the caller passes the
//! time (CLOCK_BOOTTIME ms) and logs the reports.
//!
//! - **Per-device rate limit.** A token bucket per device id, taken from the
//!   topic (`mctc/v1/dev/{id}/lineage`; the broker ACL binds it to the
//!   sender's certificate), `burst` batches deep and refilled at
//!   `per_sec` batches a second. A batch over the budget is dropped without
//!   being decoded or queued, so a flooding device can neither fill the
//!   worker's queue nor make it decode or write for it; other devices'
//!   batches never wait behind the flood. Nothing is lost: a device resends
//!   whatever was not acknowledged (`resend_after_ms`), and gets through
//!   once it slows down.
//! - **Size.** A payload above [`MAX_BATCH_LEN`] is never an mctc batch. It
//!   is dropped here (its bytes are not queued); the worker is only told the
//!   device and the length, so it records the `undecodable` anomaly and acks
//!   the unchanged head as for any other undecodable batch.
//! - **Bounded memory.** At most `tracked` buckets; idle ones (full again,
//!   nothing left to report) are forgotten on [`Admission::tick`], which
//!   loses nothing (a new bucket starts full). A lineage message from a
//!   device beyond that bound is dropped and counted as `untracked`: the
//!   device resends later.
//! - **Reports, not log floods.** Drops are counted per device; a
//!   [`DropReport`] is produced for the first drop and then at most once
//!   per `report_interval_ms` per device, with the counts since the last one.
//!
//! Registry records (and anything else on a subscribed topic) pass: only
//! the authority may publish them (broker ACL), and the worker checks them.

use std::collections::HashMap;

use mctc_shim::DeviceId;
use mctc_shim::limits::MAX_BATCH_LEN;
use mctc_shim::topics::{self, DeviceTopic};

/// Milli-tokens per batch (integer arithmetic: a refill rate of `per_sec`
/// batches a second is `per_sec` milli-tokens a millisecond).
const MILLI: u64 = 1_000;

/// The admission limits (`[ingest]` keys `device_burst`,
/// `device_batches_per_sec`, `tracked_devices`, `alert_interval_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Batches a device may send at once (bucket depth).
    pub burst: u32,
    /// Batches a second a device may send on average (refill rate).
    pub per_sec: u32,
    /// Devices tracked at once, at most.
    pub tracked: usize,
    /// At most one report per device per this many ms.
    pub report_interval_ms: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            burst: 1_024,
            per_sec: 2_048,
            tracked: 65_536,
            report_interval_ms: 10_000,
        }
    }
}

/// What to do with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Queue it for the worker.
    Admit,
    /// A lineage payload over [`MAX_BATCH_LEN`] within the device's rate:
    /// drop the bytes, tell the worker (anomaly and ack).
    Oversize {
        /// The device of the topic.
        device: DeviceId,
        /// The payload's length.
        len: usize,
    },
    /// Drop it (over the rate, or the device cannot be tracked).
    Drop,
}

/// Messages dropped before decoding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Over the device's rate.
    pub rate_limited: u64,
    /// Over [`MAX_BATCH_LEN`] (within the rate).
    pub oversize: u64,
    /// From a device beyond the `tracked` bound.
    pub untracked: u64,
}

impl Dropped {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn add(&mut self, other: Dropped) {
        self.rate_limited = self.rate_limited.saturating_add(other.rate_limited);
        self.oversize = self.oversize.saturating_add(other.oversize);
        self.untracked = self.untracked.saturating_add(other.untracked);
    }
}

/// One log line's worth: what was dropped for a device since its last
/// report (`device` is `None` for messages from untracked devices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropReport {
    /// The device, if tracked.
    pub device: Option<DeviceId>,
    /// Dropped since the last report for it.
    pub dropped: Dropped,
    /// Dropped since the collector started, all devices.
    pub totals: Dropped,
}

#[derive(Debug)]
struct Bucket {
    milli: u64,
    at_ms: u64,
    /// Drops not reported yet.
    dropped: Dropped,
    reported_ms: Option<u64>,
}

impl Bucket {
    fn refill(&mut self, config: &AdmissionConfig, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        let capacity = u64::from(config.burst).saturating_mul(MILLI);
        self.milli = self
            .milli
            .saturating_add(elapsed.saturating_mul(u64::from(config.per_sec)))
            .min(capacity);
        // A clock that does not move forward never refills twice.
        self.at_ms = self.at_ms.max(now_ms);
    }

    fn due(&self, config: &AdmissionConfig, now_ms: u64) -> bool {
        self.reported_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= config.report_interval_ms)
    }
}

/// The edge's admission state.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    buckets: HashMap<DeviceId, Bucket>,
    untracked: Dropped,
    untracked_reported_ms: Option<u64>,
    totals: Dropped,
}

impl Admission {
    /// Empty: every device starts with a full bucket.
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            config,
            buckets: HashMap::new(),
            untracked: Dropped::default(),
            untracked_reported_ms: None,
            totals: Dropped::default(),
        }
    }

    /// Everything dropped since the start.
    pub fn totals(&self) -> Dropped {
        self.totals
    }

    /// Devices tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Decides on a message of `len` bytes on `topic` at `now_ms`; a report
    /// to log comes with it when one is due.
    pub fn admit(&mut self, topic: &str, len: usize, now_ms: u64) -> (Verdict, Option<DropReport>) {
        let device = match topics::parse(topic) {
            Some((DeviceTopic::Lineage, device)) => device,
            _ => return (Verdict::Admit, None),
        };
        if !self.buckets.contains_key(&device) && self.buckets.len() >= self.config.tracked {
            let drop = Dropped {
                untracked: 1,
                ..Dropped::default()
            };
            self.totals.add(drop);
            self.untracked.add(drop);
            let due = self
                .untracked_reported_ms
                .is_none_or(|at| now_ms.saturating_sub(at) >= self.config.report_interval_ms);
            let report = due.then(|| {
                self.untracked_reported_ms = Some(now_ms);
                DropReport {
                    device: None,
                    dropped: std::mem::take(&mut self.untracked),
                    totals: self.totals,
                }
            });
            return (Verdict::Drop, report);
        }
        let config = self.config;
        let bucket = self
            .buckets
            .entry(device.clone())
            .or_insert_with(|| Bucket {
                milli: u64::from(config.burst).saturating_mul(MILLI),
                at_ms: now_ms,
                dropped: Dropped::default(),
                reported_ms: None,
            });
        bucket.refill(&config, now_ms);
        let (verdict, drop) = if bucket.milli < MILLI {
            let drop = Dropped {
                rate_limited: 1,
                ..Dropped::default()
            };
            (Verdict::Drop, drop)
        } else {
            bucket.milli -= MILLI;
            if len <= MAX_BATCH_LEN {
                return (Verdict::Admit, None);
            }
            let drop = Dropped {
                oversize: 1,
                ..Dropped::default()
            };
            (
                Verdict::Oversize {
                    device: device.clone(),
                    len,
                },
                drop,
            )
        };
        self.totals.add(drop);
        bucket.dropped.add(drop);
        let report = bucket.due(&config, now_ms).then(|| {
            bucket.reported_ms = Some(now_ms);
            DropReport {
                device: Some(device),
                dropped: std::mem::take(&mut bucket.dropped),
                totals: self.totals,
            }
        });
        (verdict, report)
    }

    /// Reports drops whose interval has passed, and forgets idle devices.
    pub fn tick(&mut self, now_ms: u64) -> Vec<DropReport> {
        let config = self.config;
        let capacity = u64::from(config.burst).saturating_mul(MILLI);
        let totals = self.totals;
        let mut reports = Vec::new();
        self.buckets.retain(|device, bucket| {
            if !bucket.dropped.is_empty() && bucket.due(&config, now_ms) {
                bucket.reported_ms = Some(now_ms);
                reports.push(DropReport {
                    device: Some(device.clone()),
                    dropped: std::mem::take(&mut bucket.dropped),
                    totals,
                });
            }
            bucket.refill(&config, now_ms);
            // Forgetting a full bucket loses nothing: a new one starts full.
            let idle = bucket.milli >= capacity
                && bucket.dropped.is_empty()
                && bucket.due(&config, now_ms);
            !idle
        });
        let due = self
            .untracked_reported_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= config.report_interval_ms);
        if !self.untracked.is_empty() && due {
            self.untracked_reported_ms = Some(now_ms);
            reports.push(DropReport {
                device: None,
                dropped: std::mem::take(&mut self.untracked),
                totals,
            });
        }
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(device: &str) -> String {
        format!("mctc/v1/dev/{device}/lineage")
    }

    fn config() -> AdmissionConfig {
        AdmissionConfig {
            burst: 4,
            per_sec: 2,
            tracked: 3,
            report_interval_ms: 1_000,
        }
    }

    fn verdicts(a: &mut Admission, device: &str, n: usize, now_ms: u64) -> (usize, usize) {
        let mut admitted = 0;
        let mut dropped = 0;
        for _ in 0..n {
            match a.admit(&topic(device), 100, now_ms).0 {
                Verdict::Admit => admitted += 1,
                Verdict::Drop => dropped += 1,
                Verdict::Oversize { .. } => panic!("not oversize"),
            }
        }
        (admitted, dropped)
    }

    #[test]
    fn a_flooding_device_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        let mut a = Admission::new(config());
        // The burst, then nothing more at the same instant.
        assert_eq!(verdicts(&mut a, "flood", 100, 0), (4, 96));
        // Another device is not touched by the flood.
        assert_eq!(verdicts(&mut a, "calm", 4, 0), (4, 0));
        // Refill: 2 a second; half a second buys exactly one batch.
        assert_eq!(verdicts(&mut a, "flood", 10, 500), (1, 9));
        assert_eq!(verdicts(&mut a, "flood", 10, 1_500), (2, 8));
        // Once it slows down, it gets through again (the resend succeeds).
        assert_eq!(verdicts(&mut a, "flood", 4, 10_000), (4, 0));
        assert_eq!(a.totals().rate_limited, 96 + 9 + 8);
        // A clock going backwards never mints tokens.
        assert_eq!(verdicts(&mut a, "flood", 1, 5_000), (0, 1));
    }

    #[test]
    fn oversize_is_refused_before_decoding_and_costs_a_token() {
        let mut a = Admission::new(config());
        let (verdict, report) = a.admit(&topic("big"), MAX_BATCH_LEN + 1, 0);
        assert_eq!(
            verdict,
            Verdict::Oversize {
                device: DeviceId::new("big").unwrap(),
                len: MAX_BATCH_LEN + 1
            }
        );
        let report = report.expect("the first drop is reported at once");
        assert_eq!(report.dropped.oversize, 1);
        assert_eq!(a.admit(&topic("big"), MAX_BATCH_LEN, 0).0, Verdict::Admit);
        assert_eq!(verdicts(&mut a, "big", 3, 0), (2, 1));
        // Not lineage: passes (the worker decides), no token taken.
        assert_eq!(
            a.admit("mctc/v1/registry/big", 10 * MAX_BATCH_LEN, 0).0,
            Verdict::Admit
        );
        assert_eq!(a.admit("junk/topic", 5, 0).0, Verdict::Admit);
    }

    #[test]
    fn reports_come_once_per_device_and_interval_with_the_counts() {
        let mut a = Admission::new(config());
        let mut reports = Vec::new();
        for i in 0..20u64 {
            let (_, report) = a.admit(&topic("flood"), MAX_BATCH_LEN * 2, i * 10);
            reports.extend(report);
        }
        // 4 oversize within the burst, then 16 rate-limited: one line now.
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].dropped.oversize, 1);
        // The rest waits for the interval, then comes as one report.
        assert!(a.tick(500).is_empty());
        let later = a.tick(1_000);
        assert_eq!(later.len(), 1);
        let dropped = later[0].dropped;
        assert_eq!((dropped.oversize, dropped.rate_limited), (3, 16));
        assert_eq!(later[0].totals.oversize + later[0].totals.rate_limited, 20);
        assert!(a.tick(5_000).is_empty());
    }

    #[test]
    fn the_map_is_bounded_and_idle_devices_are_forgotten() {
        let mut a = Admission::new(config());
        for d in ["a", "b", "c"] {
            assert_eq!(verdicts(&mut a, d, 1, 0), (1, 0));
        }
        // A fourth device while three are tracked: dropped, counted.
        let (verdict, report) = a.admit(&topic("d"), 10, 0);
        assert_eq!(verdict, Verdict::Drop);
        assert_eq!(report.unwrap().dropped.untracked, 1);
        assert_eq!(a.tracked(), 3);
        // Full buckets again after 0.5 s (one token at 2/s): forgotten.
        assert_eq!(a.tick(500).len(), 0);
        assert_eq!(a.tracked(), 0);
        assert_eq!(verdicts(&mut a, "d", 4, 600), (4, 0));
        assert_eq!(a.totals().untracked, 1);
    }
}

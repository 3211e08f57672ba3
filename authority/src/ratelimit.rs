//! Per-device, per-topic token buckets: a device (or whoever holds its
//! certificate) cannot make the authority sign, hash or write to the
//! database faster than the configured rate. Applied before a message is
//! queued for a worker, so a flood costs a hash-map lookup, not a
//! transaction.
//!
//! Each process keeps its own buckets; with several instances sharing the
//! load a device gets at most that many times the rate.

use std::collections::HashMap;

use mctc_shim::DeviceId;
use mctc_shim::topics::DeviceTopic;

/// Buckets kept before idle (full) ones are forgotten.
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
}

/// The limiter.
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    per_ms: f64,
    buckets: HashMap<(DeviceId, DeviceTopic), Bucket>,
}

impl RateLimiter {
    /// `burst` requests at once, refilled at `per_minute`.
    pub fn new(burst: u32, per_minute: u32) -> RateLimiter {
        RateLimiter {
            burst: f64::from(burst.max(1)),
            per_ms: f64::from(per_minute.max(1)) / 60_000.0,
            buckets: HashMap::new(),
        }
    }

    /// Whether `device` may send one more message on `topic` at `now_ms`
    /// (CLOCK_BOOTTIME).
    pub fn allow(&mut self, device: &DeviceId, topic: DeviceTopic, now_ms: u64) -> bool {
        if self.buckets.len() >= MAX_BUCKETS {
            self.forget_idle(now_ms);
        }
        let (burst, per_ms) = (self.burst, self.per_ms);
        let bucket = self
            .buckets
            .entry((device.clone(), topic))
            .or_insert(Bucket {
                tokens: burst,
                last_ms: now_ms,
            });
        let elapsed = now_ms.saturating_sub(bucket.last_ms) as f64;
        bucket.tokens = (bucket.tokens + elapsed * per_ms).min(burst);
        bucket.last_ms = bucket.last_ms.max(now_ms);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn forget_idle(&mut self, now_ms: u64) {
        let (burst, per_ms) = (self.burst, self.per_ms);
        self.buckets
            .retain(|_, b| b.tokens + now_ms.saturating_sub(b.last_ms) as f64 * per_ms < burst);
        if self.buckets.len() >= MAX_BUCKETS {
            // Every bucket is busy: more devices than the map holds are
            // sending at once. Starting over only loosens the limit once.
            self.buckets.clear();
        }
    }

    /// Buckets held (tests, metrics).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_per_device_and_topic() {
        let mut l = RateLimiter::new(3, 60); // one per second
        let a = DeviceId::new("a").unwrap();
        let b = DeviceId::new("b").unwrap();
        for _ in 0..3 {
            assert!(l.allow(&a, DeviceTopic::NonceRequest, 0));
        }
        assert!(!l.allow(&a, DeviceTopic::NonceRequest, 0));
        // Other devices and other topics have their own buckets.
        assert!(l.allow(&b, DeviceTopic::NonceRequest, 0));
        assert!(l.allow(&a, DeviceTopic::Evidence, 0));
        assert!(!l.allow(&a, DeviceTopic::NonceRequest, 999));
        assert!(l.allow(&a, DeviceTopic::NonceRequest, 1000));
        assert!(!l.allow(&a, DeviceTopic::NonceRequest, 1000));
        // Never more than the burst, however long the pause.
        for _ in 0..3 {
            assert!(l.allow(&a, DeviceTopic::NonceRequest, 1_000_000));
        }
        assert!(!l.allow(&a, DeviceTopic::NonceRequest, 1_000_000));
        // Time going backwards refills nothing.
        assert!(!l.allow(&a, DeviceTopic::NonceRequest, 5));
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn idle_buckets_are_forgotten_when_the_map_is_full() {
        let mut l = RateLimiter::new(1, 60_000);
        for i in 0..MAX_BUCKETS {
            let id = DeviceId::new(&format!("d{i}")).unwrap();
            assert!(l.allow(&id, DeviceTopic::Evidence, 0));
        }
        assert_eq!(l.len(), MAX_BUCKETS);
        let late = DeviceId::new("late").unwrap();
        assert!(l.allow(&late, DeviceTopic::Evidence, 10));
        assert_eq!(l.len(), 1, "all earlier buckets had refilled");
    }
}

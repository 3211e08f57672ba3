//! The JSON alert published (retained) on `mctc/v1/collector/alerts` for
//! new anomalies, so monitors see the latest one even if they connect
//! later, and the coalescing that keeps a hostile device from flooding that
//! topic (and the log): at most one alert per device and anomaly kind per
//! interval, with the count of new anomalies it stands for. The full
//! history is in the store's `anomalies` table (bounded per device and
//! kind) and its `anomaly_overflow` counts.

use std::collections::HashMap;

use serde::Serialize;

use crate::store::AnomalyKind;

/// The alert topic (fixed by the contract).
pub const ALERT_TOPIC: &str = "mctc/v1/collector/alerts";

/// Devices × kinds whose coalescing state is kept at most. Beyond it, a
/// new key's alert is dropped (counted and logged; the anomaly itself is
/// still in the store).
pub const MAX_ALERT_KEYS: usize = 65_536;

/// One alert, as published.
#[derive(Debug, Serialize)]
pub struct Alert<'a> {
    /// Format version (1).
    pub v: u8,
    /// The collector instance (its MQTT client id).
    pub collector: &'a str,
    /// The anomaly's row id in that collector's store; `null` when it was
    /// not kept (beyond `anomaly_rows_per_kind`).
    pub id: Option<i64>,
    /// The device.
    pub device: &'a str,
    /// What kind of anomaly.
    pub kind: AnomalyKind,
    /// The seq it concerns, if any.
    pub seq: Option<u64>,
    /// One line for operators.
    pub detail: &'a str,
    /// SHA-256 (hex) of the stored evidence, empty when none (or not kept).
    pub evidence_sha256: &'a str,
    /// Unix ms when first seen.
    pub first_seen_ms: u64,
    /// New anomalies of this device and kind this alert stands for: 1 for
    /// an alert sent at once, more for the summary sent when the interval
    /// ends (the other fields describe the latest of them).
    pub count: u64,
}

/// A new anomaly, as the alert will describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// The store's row id, if kept.
    pub id: Option<i64>,
    /// The device.
    pub device: String,
    /// What kind.
    pub kind: AnomalyKind,
    /// The seq, if any.
    pub seq: Option<u64>,
    /// One line for operators.
    pub detail: String,
    /// SHA-256 (hex) of the kept evidence, or empty.
    pub evidence_sha256: String,
    /// Unix ms first seen.
    pub first_seen_ms: u64,
}

/// An alert to publish: the latest sighting and how many it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The latest new anomaly.
    pub sighting: Sighting,
    /// How many new anomalies of its device and kind since the last alert.
    pub count: u64,
}

impl Due {
    /// The alert payload.
    pub fn payload(&self, collector: &str) -> Vec<u8> {
        let s = &self.sighting;
        let alert = Alert {
            v: 1,
            collector,
            id: s.id,
            device: &s.device,
            kind: s.kind,
            seq: s.seq,
            detail: &s.detail,
            evidence_sha256: &s.evidence_sha256,
            first_seen_ms: s.first_seen_ms,
            count: self.count,
        };
        // Serialising a struct of strings and integers cannot fail; an empty
        // payload would still be a visible (if odd) retained message.
        serde_json::to_vec(&alert).unwrap_or_default()
    }
}

/// Milliseconds from `then` to `now`; a clock that went back (the collector
/// passes wall time) counts as "long ago", so a jump back can end an
/// interval early but never silence alerts for the length of the jump.
pub fn since(now_ms: u64, then_ms: u64) -> u64 {
    now_ms.checked_sub(then_ms).unwrap_or(u64::MAX)
}

#[derive(Debug)]
struct Slot {
    alerted_ms: u64,
    suppressed: u64,
    latest: Option<Sighting>,
}

/// One alert per device and kind per interval. The first new anomaly of a
/// quiet key is alerted at once; the ones after it within the interval are
/// counted, and [`Coalescer::tick`] sends one summary for them when the
/// interval ends.
#[derive(Debug)]
pub struct Coalescer {
    interval_ms: u64,
    max_keys: usize,
    slots: HashMap<(String, AnomalyKind), Slot>,
    dropped: u64,
    warned_ms: Option<u64>,
}

impl Coalescer {
    /// At most one alert per device and kind per `interval_ms`.
    pub fn new(interval_ms: u64) -> Self {
        Self::with_max_keys(interval_ms, MAX_ALERT_KEYS)
    }

    /// As [`Coalescer::new`], keeping state for at most `max_keys` keys.
    pub fn with_max_keys(interval_ms: u64, max_keys: usize) -> Self {
        Self {
            interval_ms,
            max_keys,
            slots: HashMap::new(),
            dropped: 0,
            warned_ms: None,
        }
    }

    /// Alerts dropped because the key bound was reached.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn idle(&self, slot: &Slot, now_ms: u64) -> bool {
        slot.suppressed == 0 && since(now_ms, slot.alerted_ms) >= self.interval_ms
    }

    /// A new anomaly: the alert to publish now, or `None` (counted towards
    /// the next summary).
    pub fn offer(&mut self, sighting: Sighting, now_ms: u64) -> Option<Due> {
        let key = (sighting.device.clone(), sighting.kind);
        if !self.slots.contains_key(&key) && self.slots.len() >= self.max_keys {
            let interval = self.interval_ms;
            self.slots.retain(|_, slot| {
                !(slot.suppressed == 0 && since(now_ms, slot.alerted_ms) >= interval)
            });
            if self.slots.len() >= self.max_keys {
                self.dropped = self.dropped.saturating_add(1);
                if self
                    .warned_ms
                    .is_none_or(|at| since(now_ms, at) >= self.interval_ms)
                {
                    self.warned_ms = Some(now_ms);
                    tracing::warn!(
                        dropped = self.dropped,
                        keys = self.slots.len(),
                        "too many devices with anomalies at once; alert dropped (the store has it)"
                    );
                }
                return None;
            }
        }
        match self.slots.get_mut(&key) {
            Some(slot) if since(now_ms, slot.alerted_ms) < self.interval_ms => {
                slot.suppressed = slot.suppressed.saturating_add(1);
                slot.latest = Some(sighting);
                None
            }
            _ => {
                // Quiet key (or its interval is over): alert now, with what
                // was still waiting for a summary.
                let waiting = self.slots.get(&key).map_or(0, |s| s.suppressed);
                self.slots.insert(
                    key,
                    Slot {
                        alerted_ms: now_ms,
                        suppressed: 0,
                        latest: None,
                    },
                );
                Some(Due {
                    sighting,
                    count: waiting.saturating_add(1),
                })
            }
        }
    }

    /// The summaries whose interval ended; forgets keys that went quiet.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Due> {
        let mut due = Vec::new();
        let interval = self.interval_ms;
        for slot in self.slots.values_mut() {
            if slot.suppressed > 0 && since(now_ms, slot.alerted_ms) >= interval {
                if let Some(sighting) = slot.latest.take() {
                    due.push(Due {
                        sighting,
                        count: slot.suppressed,
                    });
                }
                slot.suppressed = 0;
                slot.alerted_ms = now_ms;
            }
        }
        let slots = std::mem::take(&mut self.slots);
        self.slots = slots
            .into_iter()
            .filter(|(_, slot)| !self.idle(slot, now_ms))
            .collect();
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sighting(device: &str, kind: AnomalyKind, seq: u64) -> Sighting {
        Sighting {
            id: Some(seq as i64),
            device: device.into(),
            kind,
            seq: Some(seq),
            detail: format!("at {seq}"),
            evidence_sha256: String::new(),
            first_seen_ms: seq,
        }
    }

    #[test]
    fn one_alert_per_device_and_kind_per_interval_with_the_count() {
        let mut c = Coalescer::new(1_000);
        let mut now = Vec::new();
        for seq in 0..500 {
            now.extend(c.offer(sighting("evil", AnomalyKind::Fork, seq), seq));
        }
        // Another kind and another device are alerted on their own.
        now.extend(c.offer(sighting("evil", AnomalyKind::Gap, 1), 10));
        now.extend(c.offer(sighting("good", AnomalyKind::Fork, 1), 10));
        assert_eq!(now.len(), 3);
        assert_eq!((now[0].count, now[0].sighting.seq), (1, Some(0)));
        // Nothing more within the interval.
        assert!(c.tick(999).is_empty());
        // Then one summary for the 499 others, describing the latest.
        let summary = c.tick(1_000);
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].count, 499);
        assert_eq!(summary[0].sighting.seq, Some(499));
        // A later anomaly within the next interval waits for the next summary.
        assert!(
            c.offer(sighting("evil", AnomalyKind::Fork, 600), 1_500)
                .is_none()
        );
        assert_eq!(c.tick(2_000)[0].count, 1);
        // Quiet keys are forgotten; the next one alerts at once again.
        assert!(c.tick(10_000).is_empty());
        assert_eq!(c.slots.len(), 0);
        let again = c
            .offer(sighting("evil", AnomalyKind::Fork, 700), 10_001)
            .unwrap();
        assert_eq!(again.count, 1);
    }

    #[test]
    fn a_wall_clock_going_back_never_silences_alerts() {
        let mut c = Coalescer::new(1_000);
        assert!(
            c.offer(sighting("d", AnomalyKind::Gap, 1), 10_000_000)
                .is_some()
        );
        // An hour back: the next one is alerted, not held for an hour.
        let back = c.offer(sighting("d", AnomalyKind::Gap, 2), 10_000_000 - 3_600_000);
        assert_eq!(back.map(|d| d.count), Some(1));
    }

    #[test]
    fn the_key_bound_holds_and_quiet_keys_make_room() {
        let mut c = Coalescer::with_max_keys(1_000, 2);
        assert!(c.offer(sighting("a", AnomalyKind::Gap, 1), 0).is_some());
        assert!(c.offer(sighting("b", AnomalyKind::Gap, 1), 0).is_some());
        assert!(c.offer(sighting("c", AnomalyKind::Gap, 1), 10).is_none());
        assert_eq!(c.dropped(), 1);
        // Once the first two are quiet for an interval, there is room.
        assert!(c.offer(sighting("c", AnomalyKind::Gap, 2), 1_000).is_some());
        assert!(c.slots.len() <= 2);
    }

    #[test]
    fn the_payload_names_the_count_and_a_missing_row() {
        let due = Due {
            sighting: Sighting {
                id: None,
                ..sighting("evil", AnomalyKind::Undecodable, 3)
            },
            count: 42,
        };
        let json: serde_json::Value = serde_json::from_slice(&due.payload("c-1")).unwrap();
        assert_eq!(json["count"], 42);
        assert_eq!(json["id"], serde_json::Value::Null);
        assert_eq!(json["kind"], "undecodable");
        assert_eq!(json["collector"], "c-1");
    }
}

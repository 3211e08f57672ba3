//! The gate's lineage as the agent keeps it: every event the gate returns
//! is appended as a record and checked by a chain verifier, so a gate event
//! that lineage could not record (which would close the gate in the agent)
//! stops the fuzzer.

use mctc_shim::gate::Events;
use mctc_shim::lineage::{Body, ChainHead, ChainVerifier, Stamp};
use mctc_shim::{DeviceId, RingCrypto};

use crate::fixtures::BOOT;

/// A chain being written and verified side by side.
#[derive(Debug)]
pub struct Journal {
    head: ChainHead,
    verifier: ChainVerifier,
}

impl Journal {
    /// An empty chain of `device`.
    pub fn new(device: DeviceId) -> Journal {
        Journal {
            head: ChainHead::genesis(device.clone()),
            verifier: ChainVerifier::genesis(device),
        }
    }

    /// Records `events` at CLOCK_BOOTTIME `now` (never decreasing).
    pub fn record(&mut self, events: &Events, now: u64) {
        for event in events {
            self.record_body(event.body(), now);
        }
    }

    /// Records one body (a gate event's or a decision's) at `now`.
    pub fn record_body(&mut self, body: Body<'_>, now: u64) {
        let mut buf = [0u8; 2048];
        let stamp = Stamp {
            boot: BOOT,
            mono_ms: now,
            wall_ms: None,
        };
        let appended = self
            .head
            .append(&RingCrypto, stamp, body, &mut buf)
            .expect("what the gate returns is always a valid record");
        self.verifier
            .push(&RingCrypto, appended.bytes)
            .expect("a record just written chains");
    }
}

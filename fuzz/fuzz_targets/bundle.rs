//! Exported lineage bundles (files handed to auditors): the collector's
//! offline verifier `mctc_collector::verify::verify_bundle` (what
//! `mctc-collector verify` runs) and the agent's own reader
//! `mctc_agent::lineage::bundle::Bundle::parse`.
//!
//! Input: the bundle file's bytes.
//!
//! Invariants: no panic; a bundle the verifier passes has a failure-free
//! report with at least one record and parses in the agent's reader with
//! the same device and record count; whatever the agent's reader parses
//! re-encodes to something it parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mctc_agent::lineage::bundle::Bundle;
use mctc_collector::verify::verify_bundle;
use mctc_fuzz::fixtures;

fuzz_target!(|data: &[u8]| {
    let report = verify_bundle(data, &fixtures::keys(), &[]);
    // Completeness only adds checks: whatever passes with the collector's
    // key passes without it, and names its receipt.
    let complete = verify_bundle(data, &fixtures::keys(), &[fixtures::collector_key()]);
    if complete.ok {
        assert!(report.ok, "complete but not authentic: {report:?}");
        assert!(complete.receipt.is_some());
    }
    let parsed = Bundle::parse(data);
    if report.ok {
        assert!(report.failure.is_none());
        assert!(report.records > 0);
        let bundle = parsed
            .as_ref()
            .expect("a verified bundle parses in the agent's reader");
        assert_eq!(report.device.as_deref(), Some(bundle.device.as_str()));
        assert_eq!(report.records, bundle.records.len() as u64);
    }
    if let Ok(bundle) = parsed {
        let again = Bundle::parse(&bundle.encode()).expect("an encoded bundle parses");
        assert_eq!(again, bundle);
    }
});

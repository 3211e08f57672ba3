//! Exported lineage bundles (files handed to auditors): the shim's one
//! bundle codec (`mctc_shim::bundle`: `BundleReader`, `Bundle::parse`,
//! `encode_bundle`), which the agent's export and the collector's export
//! and verify all use, and the collector's offline verifier
//! `mctc_collector::verify::verify_bundle` (what `mctc-collector verify`
//! runs).
//!
//! Input: the bundle file's bytes.
//!
//! Invariants: no panic; strictness: whatever parses re-encodes to exactly
//! the input bytes (one bundle, one encoding), and the streaming reader and
//! the owned parse accept the same inputs; a bundle the verifier passes has
//! a failure-free report with at least one record and parses with the same
//! device and record count; completeness only adds checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mctc_collector::verify::verify_bundle;
use mctc_fuzz::fixtures;
use mctc_shim::bundle::{BUNDLE_VERSION, Bundle, BundleReader, encode_bundle};

fuzz_target!(|data: &[u8]| {
    let report = verify_bundle(data, &fixtures::keys(), &[]);
    // Completeness only adds checks: whatever passes with the collector's
    // key passes without it, and names its receipt.
    let complete = verify_bundle(data, &fixtures::keys(), &[fixtures::collector_key()]);
    if complete.ok {
        assert!(report.ok, "complete but not authentic: {report:?}");
        assert!(complete.receipt.is_some());
    }

    // The streaming reader, to the end.
    let streamed = BundleReader::open(data).and_then(|(header, mut reader)| {
        let mut records = Vec::new();
        while let Some(record) = reader.next_record() {
            records.push(record?);
        }
        Ok((header, records))
    });
    let parsed = Bundle::parse(data);
    match (&streamed, &parsed) {
        (Ok((header, records)), Ok(bundle)) => {
            assert_eq!(header.version, BUNDLE_VERSION);
            assert_eq!(header.count, records.len() as u64);
            assert_eq!(encode_bundle(&bundle.parts(), records), data);
        }
        (Ok((header, _)), Err(e)) => {
            assert_ne!(header.version, BUNDLE_VERSION, "reader accepts, parse refuses: {e}");
        }
        (Err(e), Ok(_)) => panic!("parse accepts, reader refuses: {e}"),
        (Err(_), Err(_)) => {}
    }

    if report.ok {
        assert!(report.failure.is_none());
        assert!(report.records > 0);
        let bundle = parsed.as_ref().expect("a verified bundle parses");
        assert_eq!(report.device.as_deref(), Some(bundle.device.as_str()));
        assert_eq!(report.records, bundle.records.len() as u64);
    }
    if let Ok(bundle) = parsed {
        // Strictness: the input was the one encoding of its value.
        assert_eq!(bundle.encode(), data, "a parsed bundle re-encodes to its input");
        let again = Bundle::parse(&bundle.encode()).expect("an encoded bundle parses");
        assert_eq!(again, bundle);
    }
});

//! The suite's own tests. The suite is a `harness = false` bench target,
//! where `#[test]`s never run, so its modules are compiled again here, as
//! a test target, for their unit tests and for the checks below: the
//! software evidence and lineage the suite measures with are accepted by
//! the real authority and collector code, so a figure is never the speed
//! of a path that fails.
#![forbid(unsafe_code)]
#![allow(
    dead_code,
    reason = "the suite's modules are compiled here for their tests; their entry points are the suite's"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

mod authority;
mod chain;
mod collector;
mod device;
mod fleet;
mod gate;
mod limits;
mod report;
mod soft_tpm;
mod stats;

#[test]
fn software_evidence_is_affirmed_and_issued() {
    let mut figures = report::Figures::default();
    authority::measure(&mut figures, std::time::Duration::from_millis(200)).unwrap();
    assert!(figures.get("authority_issue_per_s").unwrap() > 0.0);
}

#[test]
fn software_lineage_is_verified_stored_and_acked_by_the_collector() {
    let mut figures = report::Figures::default();
    // 2 500 records: two checkpoints quoted by the software AK, the last
    // batch partial; `measure` fails unless the last record is acked.
    collector::measure(&mut figures, 2_500).unwrap();
    assert!(figures.get("collector_ingest_per_s").unwrap() > 0.0);
    assert!(
        figures.get("sha256_records_per_s").unwrap()
            > figures.get("collector_ingest_per_s").unwrap()
    );
}

mod report_tests {
    use crate::report::*;

    #[test]
    fn ratios_and_verdicts() {
        let mut f = Figures::default();
        f.set("tpm_quote_ms_p50", 4.0);
        f.set("attest_roundtrip_ms_p50", 8.0);
        f.set("fsync_per_s", 1000.0);
        f.set("fdatasync_ms_p50", 1.0);
        f.set("durable_permits_per_s", 60_000.0);
        f.set("permit_latency_ms_p99", 3.5);
        f.derive();
        assert_eq!(f.get("attest_roundtrip_ratio"), Some(2.0));
        assert_eq!(f.get("durable_permit_ratio"), Some(60.0));
        let table = f.table();
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.contains(&format!("`{name}`")))
                .unwrap()
                .to_owned()
        };
        assert!(row("attest_roundtrip_ratio").contains("MISS"));
        assert!(row("durable_permit_ratio").contains("pass"));
        assert!(row("permit_latency_ms_p99").contains("≤ 3.00 ms"));
        assert!(row("permit_latency_ms_p99").contains("MISS"));
        assert!(row("agent_rss_mb").contains("MISSING"));
        let json = f.json(serde_json::json!({}));
        for key in &KEYS {
            assert!(json.get(key.name).is_some(), "{} missing", key.name);
        }
        assert!(json["agent_rss_mb"].is_null());
    }

    #[test]
    fn rounding_keeps_three_digits() {
        assert_eq!(round(12345.0), 12300.0);
        assert_eq!(round(0.012345), 0.0123);
        assert_eq!(number(4.26), "4.26");
        assert_eq!(number(18_700.0), "18700");
    }
}

mod stats_tests {
    use std::time::Duration;

    use crate::stats::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = Samples::new();
        assert_eq!(s.p50(), None);
        for ms in 1..=100 {
            s.push_ms(f64::from(ms));
        }
        assert_eq!(s.p50(), Some(50.0));
        assert_eq!(s.p99(), Some(99.0));
        assert_eq!(s.percentile(100.0), Some(100.0));
        assert_eq!(s.percentile(0.0), Some(1.0));
        assert_eq!(s.max(), Some(100.0));
        let mut one = Samples::new();
        one.push(Duration::from_micros(1500));
        assert_eq!(one.p99(), Some(1.5));
    }
}

mod soft_tpm_tests {
    use crate::soft_tpm::*;
    use mctc_attest::verifier::{AkPublic, EkPublic, QuoteExpectation, verify_quote};
    use mctc_attest::{ClockInfo, PcrSelection, PcrValues};

    #[test]
    fn the_verifier_takes_soft_quotes_as_tpm_quotes() {
        let tpm = SoftTpm::generate().unwrap();
        let ak = AkPublic::parse(tpm.ak_public()).unwrap();
        assert_eq!(ak.name(), tpm.ak_name());
        EkPublic::parse(tpm.ek_public()).unwrap();
        let values = [[1u8; 32], [2u8; 32], [3u8; 32]];
        let mask = 1 | 1 << 7 | 1 << 14;
        let (attest, signature) = tpm.quote(&[9; 32], mask, &values).unwrap();
        let selection = PcrSelection::sha256(&[0, 7, 14]).unwrap();
        let evidence = mctc_attest::Evidence {
            attest: attest.clone(),
            signature: signature.clone(),
            pcrs: PcrValues::new(selection, values.iter().map(|v| v.to_vec()).collect()).unwrap(),
            clock: ClockInfo {
                clock: 0,
                reset_count: 0,
                restart_count: 0,
                safe: false,
            },
        };
        let expected = QuoteExpectation {
            qualifying_data: &[9; 32],
            selection: &selection,
            last_accepted: None,
        };
        let verified = verify_quote(&ak, &evidence, &expected).unwrap();
        assert_eq!(verified.clock().reset_count, 1);
        // The same quote for another nonce, or with a flipped bit, fails.
        let other = QuoteExpectation {
            qualifying_data: &[8; 32],
            ..expected
        };
        assert!(verify_quote(&ak, &evidence, &other).is_err());
        let mut forged = evidence;
        if let Some(b) = forged.attest.last_mut() {
            *b ^= 1;
        }
        assert!(verify_quote(&ak, &forged, &expected).is_err());
    }
}

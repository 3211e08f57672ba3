//! The one table of code names: every wire code has exactly one stable
//! kebab-case name, names are unique within their set and lead back to
//! their code, and the composite close reasons read as the status JSON
//! documents them.

use std::collections::BTreeSet;

use mctc_shim::gate::CloseReason;
use mctc_shim::lineage::{
    AttestVerdict, CloseCode, DenyCode, DriftKind, RecordKind, Source, VerdictCode,
};
use mctc_shim::messages::{
    AckAnomaly, ControlAction, DeviceStatus, EnrollStatus, NoncePurpose, PcrProblem, RefusalCode,
};
use mctc_shim::wire::CodeName;

/// Checks one code set; returns its names.
fn check<T: CodeName + std::fmt::Debug + PartialEq + std::fmt::Display>(
    set: &str,
) -> Vec<&'static str> {
    let mut names = BTreeSet::new();
    let mut codes = BTreeSet::new();
    for &value in T::ALL {
        let name = value.name();
        assert!(!name.is_empty(), "{set}::{value:?} has no name");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !name.starts_with('-')
                && !name.ends_with('-'),
            "{set}::{value:?} name {name:?} is not kebab-case"
        );
        assert!(names.insert(name), "{set}: name {name:?} used twice");
        assert!(codes.insert(value.wire_code()), "{set}: code used twice");
        assert_eq!(T::from_name(name), Some(value), "{set}: {name}");
        assert_eq!(value.to_string(), name, "{set}: Display is the name");
        assert_eq!(T::from_wire_code(value.wire_code()), Some(value));
    }
    // Every code the wire accepts is in ALL, so has a name.
    for code in 0..=1024u64 {
        if let Some(value) = T::from_wire_code(code) {
            assert!(T::ALL.contains(&value), "{set}: code {code} not listed");
        }
    }
    assert_eq!(T::from_name("no-such-name"), None);
    names.into_iter().collect()
}

#[test]
fn every_code_has_one_unique_kebab_case_name() {
    check::<AttestVerdict>("AttestVerdict");
    check::<CloseCode>("CloseCode");
    check::<Source>("Source");
    check::<VerdictCode>("VerdictCode");
    check::<DenyCode>("DenyCode");
    check::<DriftKind>("DriftKind");
    check::<RecordKind>("RecordKind");
    check::<EnrollStatus>("EnrollStatus");
    check::<NoncePurpose>("NoncePurpose");
    check::<RefusalCode>("RefusalCode");
    check::<PcrProblem>("PcrProblem");
    check::<ControlAction>("ControlAction");
    check::<DeviceStatus>("DeviceStatus");
    check::<AckAnomaly>("AckAnomaly");
}

#[test]
fn names_that_leave_the_device_are_the_documented_ones() {
    // The gate socket's deny reasons and the status JSON's codes
    // (agent/README.md): changing one breaks operators' tooling.
    assert_eq!(
        check::<DenyCode>("DenyCode"),
        [
            "amount-required",
            "closed",
            "contained",
            "currency-mismatch",
            "fresh-attestation-invalid",
            "out-of-scope",
            "over-limit",
            "revoked"
        ]
    );
    assert_eq!(
        check::<RefusalCode>("RefusalCode"),
        [
            "bad-evidence",
            "boot-anomaly",
            "contained",
            "internal",
            "not-enrolled",
            "policy-mismatch",
            "revoked",
            "stale-nonce"
        ]
    );
    assert_eq!(
        check::<AttestVerdict>("AttestVerdict"),
        ["affirmed", "no-answer", "refused", "rejected"]
    );
    assert_eq!(check::<NoncePurpose>("NoncePurpose"), ["fresh-op", "renew"]);
    assert_eq!(
        check::<DeviceStatus>("DeviceStatus"),
        ["active", "contained", "revoked"]
    );
}

#[test]
fn close_reasons_read_as_documented() {
    let cases = [
        (CloseReason::Startup, "startup"),
        (CloseReason::ArtifactExpired, "artifact-expired"),
        (CloseReason::HeartbeatLapsed, "heartbeat-lapsed"),
        (CloseReason::Drift(DriftKind::Pcr), "drift-pcr"),
        (CloseReason::Drift(DriftKind::Boot), "drift-boot"),
        (CloseReason::Drift(DriftKind::File), "drift-file"),
        (CloseReason::Drift(DriftKind::Clock), "drift-clock"),
        (
            CloseReason::Refused(RefusalCode::BadEvidence),
            "refused-bad-evidence",
        ),
        (CloseReason::Restored, "restored"),
        (CloseReason::RevocationGap, "revocation-gap"),
        (CloseReason::LineageUnavailable, "lineage-unavailable"),
        (CloseReason::Shutdown, "shutdown"),
        (CloseReason::ClockRegression, "clock-regression"),
        (CloseReason::AttestationFailed, "attestation-failed"),
    ];
    for (reason, name) in cases {
        assert_eq!(reason.to_string(), name);
    }
}

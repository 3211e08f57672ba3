#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]
//! The authority names the PCRs with every nonce, so a device's
//! configuration cannot drift from the policy: a device whose
//! `attestation.pcrs` lists other PCRs than its class still attests with
//! the class's selection (and says so in its log), and a class selection
//! the policy has no reference for is refused, never affirmed.

mod common;

use common::{Fleet, MEASURED_PCR, PATIENCE};
use mctc_shim::lineage::AttestVerdict;
use mctc_shim::messages::RefusalCode;
use mctc_tests::fleet::{test_policy, uncovered_class};
use mctc_tests::wait_until;

/// Rewrites the device's `attestation.pcrs`.
fn configure_pcrs(device: &common::Device, pcrs: &str) {
    let text = std::fs::read_to_string(&device.config).unwrap();
    let line = format!("pcrs = [0, 7, {MEASURED_PCR}]");
    assert!(text.contains(&line), "{text}");
    std::fs::write(&device.config, text.replace(&line, pcrs)).unwrap();
}

#[test]
fn the_device_quotes_the_class_selection_not_its_configuration() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    let mut device = fleet.device("drifted-config-1", "locker");
    // PCRs the class does not ask for (14 stays: the measured file's PCR
    // must be listed), and 7, which the class does, missing.
    configure_pcrs(&device, &format!("pcrs = [0, 1, 2, 3, {MEASURED_PCR}]"));
    device.bring_up();
    let log = device.log();
    assert!(
        log.contains("the authority's PCR selection differs from attestation.pcrs"),
        "{log}"
    );
    assert!(log.contains(&format!("pcrs=0,7,{MEASURED_PCR}")), "{log}");
    assert!(device.permits(), "{}", device.status());
}

#[test]
fn a_class_selection_the_policy_does_not_cover_is_refused() {
    // Class `uncovered` quotes PCR 16 too, which has no reference value.
    let uncovered = uncovered_class("uncovered", 16);
    let mut fleet = Fleet::with_policy(&(test_policy() + &uncovered));
    fleet.start_authority();
    let mut device = fleet.device("uncovered-1", "uncovered");
    device.enroll();
    device.start();
    let refused = wait_until(PATIENCE, || {
        device
            .gate_status()
            .and_then(|s| s.last_attestation)
            .is_some_and(|a| {
                a.verdict == AttestVerdict::Refused
                    && a.refusal == Some(RefusalCode::PolicyMismatch)
            })
    });
    assert!(
        refused.is_some(),
        "{}\n--- agent log ---\n{}",
        device.status(),
        device.log()
    );
    assert!(!device.permits(), "{}", device.status());
    assert_eq!(device.state(), "closed", "{}", device.status());
    // The device quoted the class's selection (with 16), and the authority
    // refused it for the missing reference (policy mismatch, above), not as
    // bad evidence.
    assert!(
        device
            .log()
            .contains(&format!("pcrs=0,7,{MEASURED_PCR},16")),
        "{}",
        device.log()
    );
}

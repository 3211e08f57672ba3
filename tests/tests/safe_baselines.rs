//! Safe baselines end to end, with the real authority, Mosquitto and real
//! agents on swtpm: `policy learn` from a drifted device with `--replace`
//! would contain the healthy device of its class, so it is refused without
//! `--force` and says "would contain 1"; the healthy device's gate stays
//! open across renewals; and the count is true (forced, the change does
//! contain it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use mctc_tests::fleet::{Fleet, MEASURED_PCR, Output, PATIENCE};
use mctc_tests::wait_until;
use serde_json::{Value, json};

/// Class `locker` whose measured PCR has no value in the policy file: the
/// fleet learns it. Short artifacts, so devices renew every few seconds.
fn policy() -> String {
    let zero = hex::encode([0u8; 32]);
    format!(
        "[classes.locker]\npcrs = [0, 7, {MEASURED_PCR}]\nartifact_ttl_ms = 4000\nheartbeat_ms = 3000\n\
         [classes.locker.reference]\n0 = [\"{zero}\"]\n7 = [\"{zero}\"]\n\
         [[classes.locker.scope]]\nop = \"unlock\"\nfresh_attestation = false\n"
    )
}

fn show(fleet: &Fleet, id: &str) -> Value {
    let out = fleet.cli(&["devices", "show", id, "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    out.json()
}

fn learned_pcr(fleet: &Fleet) -> Value {
    let shown = fleet.cli(&["policy", "show", "--json"]).json();
    shown["classes"][0]["reference"][MEASURED_PCR.to_string()].clone()
}

fn refused(out: &Output, needles: &[&str]) {
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    for needle in needles {
        assert!(out.stderr.contains(needle), "{needle:?} not in {out:?}");
    }
}

#[test]
fn a_replace_from_a_drifted_device_is_refused_and_the_healthy_gate_stays_open() {
    let mut fleet = Fleet::with_policy(&policy());
    fleet.start_authority();

    // The first device: verified, refused for want of a baseline, learned.
    let mut healthy = fleet.device("locker-a", "locker");
    healthy.enroll();
    healthy.start();
    let verified = wait_until(PATIENCE, || {
        show(&fleet, "locker-a")["last_refusal"] == "no-baseline"
    });
    assert!(verified.is_some(), "{}", fleet.authority_log());
    let learn = fleet.cli(&["policy", "learn", "locker-a", "--yes", "--json"]);
    assert_eq!(learn.code, 0, "{learn:?}");
    let learn = learn.json();
    assert_eq!(
        (&learn["stored"], &learn["mode"], &learn["would_contain"]),
        (&json!(true), &json!("add"), &json!(0))
    );
    healthy.wait_open();

    // The second device runs another controller build: PCR 14 differs, it
    // drifts and is contained.
    let mut drifted = fleet.device("locker-b", "locker");
    std::fs::write(&drifted.measured_file, b"locker-controller v2.0-rc\n").unwrap();
    drifted.enroll();
    drifted.start();
    let contained = wait_until(PATIENCE, || {
        show(&fleet, "locker-b")["status"] == "contained"
    });
    assert!(contained.is_some(), "{}", fleet.authority_log());
    assert_eq!(
        show(&fleet, "locker-b")["reason"],
        format!("pcr drift: PCR {MEASURED_PCR}")
    );
    assert_ne!(drifted.state(), "open");

    // Looking says what the change would do, and stores nothing.
    let look = fleet.cli(&["policy", "learn", "locker-b", "--replace", "--json"]);
    assert_eq!(look.code, 0, "{look:?}");
    let look = look.json();
    assert_eq!(look["stored"], false);
    assert_eq!(look["would_contain"], 1);
    assert_eq!(look["would_contain_devices"], json!(["locker-a"]));
    assert_eq!(look["needs_force"], true);
    let text = fleet.cli(&["policy", "learn", "locker-b", "--replace"]);
    assert!(
        text.stdout
            .contains("would contain 1 of 1 active device(s) of class locker (locker-a)"),
        "{text:?}"
    );

    // Confirming is refused: the source is contained and drifted, and the
    // replacement would contain the healthy device.
    refused(
        &fleet.cli(&["policy", "learn", "locker-b", "--replace", "--yes"]),
        &["would contain 1", "locker-a", "it is contained", "--force"],
    );
    // Adding its values is refused too (a contained, drifted source), even
    // though it would contain nobody.
    refused(
        &fleet.cli(&["policy", "learn", "locker-b", "--yes"]),
        &["it is contained", "would contain 0", "--force"],
    );
    let before = learned_pcr(&fleet);
    assert_eq!(before.as_array().unwrap().len(), 1, "{before}");
    assert_eq!(before[0]["from"], "locker-a");

    // The healthy device keeps renewing under the unchanged baseline and
    // its gate stays open.
    let issued = show(&fleet, "locker-a")["artifacts_issued"]
        .as_u64()
        .unwrap();
    let renewed = wait_until(PATIENCE, || {
        show(&fleet, "locker-a")["artifacts_issued"]
            .as_u64()
            .unwrap()
            >= issued + 2
    });
    assert!(renewed.is_some(), "{}", fleet.authority_log());
    assert_eq!(healthy.state(), "open", "{}", healthy.status());
    assert!(healthy.permits());
    assert_eq!(show(&fleet, "locker-a")["status"], "active");

    // The count was true: forced, the replacement contains the healthy
    // device at its next renewal and closes its gate.
    let forced = fleet.cli(&[
        "policy",
        "learn",
        "locker-b",
        "--replace",
        "--yes",
        "--force",
        "--json",
    ]);
    assert_eq!(forced.code, 0, "{forced:?}");
    assert_eq!(forced.json()["would_contain"], 1);
    let closed = wait_until(PATIENCE, || {
        show(&fleet, "locker-a")["status"] == "contained"
    });
    assert!(closed.is_some(), "{}", fleet.authority_log());
    assert!(
        wait_until(PATIENCE, || healthy.state() != "open").is_some(),
        "{}",
        healthy.status()
    );
    assert!(!healthy.permits());
}

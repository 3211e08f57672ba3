#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]
//! Enrollment, the open gate and its scope, fresh-attestation operations,
//! and the thin CLI clients — against the real authority, swtpm and
//! Mosquitto.

mod common;

use common::{DeviceLineage, Fleet, kinds, record};
use mctc_shim::lineage::{Body, VerdictCode};

#[test]
fn an_enrolled_device_opens_and_permits_only_within_scope() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    let mut device = fleet.device("locker-1", "locker");

    // Before enrollment and start: unreachable is exit 2 (deny).
    let out = device.cli(&["authorize", "--op", "unlock"]);
    assert_eq!(out.code, 2, "{out:?}");

    device.enroll();
    // Enrolling again is harmless.
    device.enroll();
    device.start();
    device.wait_open();

    let permit = device.authorize("unlock", None, None, Some("door-3"));
    assert_eq!(permit["decision"], "permit", "{permit}");
    assert!(permit["seq"].as_u64().is_some());
    let cti = device.status()["artifact"]["cti"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(permit["artifact"], cti.as_str());

    let within = device.authorize("capture", Some(50_000), Some("EUR"), Some("order-1"));
    assert_eq!(within["decision"], "permit", "{within}");
    for (op, amount, currency, reason) in [
        ("launch", None, None, "out-of-scope"),
        ("capture", Some(50_001), Some("EUR"), "over-limit"),
        ("capture", Some(100), Some("USD"), "currency-mismatch"),
        ("capture", None, Some("EUR"), "amount-required"),
    ] {
        let answer = device.authorize(op, amount, currency, None);
        assert_eq!(answer["decision"], "deny", "{op}: {answer}");
        assert_eq!(answer["reason"], reason, "{op}: {answer}");
        assert!(answer["seq"].as_u64().is_some(), "denies are recorded too");
    }

    // The thin clients: exit 0 permit, 1 deny; status 0 while open.
    let out = device.cli(&["authorize", "--op", "unlock", "--ref", "cli"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("permit"), "{out:?}");
    let out = device.cli(&["authorize", "--op", "launch", "--json"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.json()["reason"], "out-of-scope");
    let out = device.cli(&["status"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("open"), "{out:?}");
    let status = device.cli(&["status", "--json"]).json();
    assert_eq!(status["connected"], true);
    assert_eq!(status["session"], 1);
    assert_eq!(status["tpm"], "ok");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));

    // The lineage holds every answer, in order, after the gate opened.
    device.stop();
    let records = device.lineage();
    let kinds = kinds(&records);
    let opened = kinds.iter().position(|k| *k == "opened").unwrap();
    assert_eq!(kinds.first(), Some(&"start"));
    assert!(kinds.contains(&"enrolled"));
    assert_eq!(kinds.get(opened - 1), Some(&"attested"));
    assert_eq!(
        kinds.get(opened + 1),
        Some(&"checkpoint"),
        "transitions are checkpointed"
    );
    let decisions: Vec<_> = records
        .iter()
        .filter_map(|(seq, bytes)| match record(bytes).body {
            Body::Decision(d) => Some((*seq, d.verdict, d.reference.map(|r| r.0.to_owned()))),
            _ => None,
        })
        .collect();
    assert_eq!(decisions.len(), 8, "{decisions:?}");
    assert_eq!(decisions[0].0, permit["seq"].as_u64().unwrap());
    assert_eq!(decisions[0].1, VerdictCode::Permit);
    assert_eq!(decisions[0].2.as_deref(), Some("door-3"));
    assert_eq!(
        kinds.last(),
        Some(&"checkpoint"),
        "stop ends with a checkpoint"
    );
    assert_eq!(kinds.get(kinds.len() - 2), Some(&"stop"));
}

#[test]
fn a_fresh_attestation_operation_goes_through_its_own_round() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    let mut device = fleet.device("locker-2", "locker");
    device.bring_up();
    let gate_cti = device.status()["artifact"]["cti"]
        .as_str()
        .unwrap()
        .to_owned();

    let first = device.authorize("refund", Some(500), None, Some("refund-1"));
    assert_eq!(first["decision"], "permit", "{first}");
    let fresh_cti = first["artifact"].as_str().unwrap().to_owned();
    assert_ne!(fresh_cti, gate_cti, "permitted on a new artifact");
    let status = device.status();
    assert_eq!(status["last_attestation"]["purpose"], "fresh-op");
    assert_eq!(
        status["artifact"]["cti"],
        gate_cti.as_str(),
        "the gate keeps its artifact"
    );

    // Each operation gets its own round.
    let second = device.authorize("refund", Some(500), None, Some("refund-2"));
    assert_eq!(second["decision"], "permit", "{second}");
    assert_ne!(second["artifact"], first["artifact"]);
    // Limits still apply.
    let over = device.authorize("refund", Some(10_001), None, None);
    assert_eq!(over["reason"], "over-limit", "{over}");

    device.stop();
    let records = device.lineage();
    // needs-fresh decision, then the fresh attestation, then the permit.
    let seq = first["seq"].as_u64().unwrap();
    let at = records.iter().position(|(s, _)| *s == seq).unwrap();
    let before: Vec<_> = records[..at]
        .iter()
        .rev()
        .take(2)
        .map(|(_, bytes)| match record(bytes).body {
            Body::Decision(d) => format!("decision-{:?}", d.verdict),
            Body::Attested(a) => format!("attested-{:?}", a.verdict),
            other => format!("{:?}", other.kind()),
        })
        .collect();
    assert_eq!(
        before,
        vec!["attested-Affirmed", "decision-NeedsFreshAttestation"],
        "{before:?}"
    );
}

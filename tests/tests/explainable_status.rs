//! Explainable status, end to end on the real binaries, swtpm and
//! Mosquitto: a device whose gate is not open says why — in
//! `mctc-agent status --json`, in its human `status`, in the retained
//! status on `mctc/v1/dev/{id}/status` — and the fleet manager's
//! `mctc-authority devices show` says the same from the authority's side.
//! Each case proves the deny as well as the explanation.
//!
//! One fleet, four devices: one whose PCR 14 differs from its class's
//! baseline (refused, contained), one whose agent expects another issuer
//! than the authority signs as (every artifact rejected on the device),
//! one in a class that quotes a PCR nobody gave a reference value (refused,
//! no baseline), one that never enrolled.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use mctc_tests::OBSERVER;
use mctc_tests::fleet::{self, Device, Fleet, MEASURED_PCR, PATIENCE};
use mctc_tests::mqtt::MqttClient;
use mctc_tests::wait_until;
use serde_json::Value;

/// The PCR class `uncovered` quotes and gives no reference value.
const UNCOVERED_PCR: u8 = 16;

/// The test policy plus class `drifted`: the fleet's PCRs, but a reference
/// for PCR 14 no test device has; and class `uncovered`, which also quotes
/// PCR 16 without a reference for it.
fn policy() -> String {
    let zero = hex::encode([0u8; 32]);
    let other = hex::encode([0x42u8; 32]);
    format!(
        "{}[classes.drifted]\npcrs = [0, 7, {MEASURED_PCR}]\nartifact_ttl_ms = 60000\nheartbeat_ms = 3000\n\
         [classes.drifted.reference]\n0 = [\"{zero}\"]\n7 = [\"{zero}\"]\n{MEASURED_PCR} = [\"{other}\"]\n\
         [[classes.drifted.scope]]\nop = \"unlock\"\nfresh_attestation = false\n{}",
        fleet::test_policy(),
        fleet::uncovered_class("uncovered", UNCOVERED_PCR)
    )
}

/// `mctc-agent status --json` (exit 1: the gate is not open).
fn cli_status(device: &Device) -> Value {
    let out = device.cli(&["status", "--json"]);
    assert_eq!(out.code, 1, "status of a closed gate exits 1: {out:?}");
    out.json()
}

/// Waits until the status's `why.cause` is `cause`; returns the status.
fn wait_cause(device: &Device, cause: &str) -> Value {
    let seen = wait_until(PATIENCE, || device.status()["why"]["cause"] == cause);
    let status = device.status();
    assert!(
        seen.is_some(),
        "{}: no `{cause}` explanation: {status}\n--- agent log ---\n{}",
        device.id,
        device.log()
    );
    status
}

/// The gate denies, on the socket and through the CLI (exit 1).
fn assert_denies(device: &Device) {
    assert!(!device.permits(), "{} permits", device.id);
    let out = device.cli(&["authorize", "--op", "unlock", "--json"]);
    assert_eq!(out.code, 1, "{out:?}");
}

/// The last retained status the observer heard from `id`.
fn published(observer: &MqttClient, id: &str) -> Option<Value> {
    observer
        .received_on(&format!("mctc/v1/dev/{id}/status"))
        .last()
        .and_then(|p| serde_json::from_slice(p).ok())
}

fn devices_show(fleet: &Fleet, id: &str) -> (Value, String) {
    let json = fleet.cli(&["devices", "show", id, "--json"]);
    assert_eq!(json.code, 0, "{json:?}");
    let text = fleet.cli(&["devices", "show", id]);
    assert_eq!(text.code, 0, "{text:?}");
    (json.json(), text.stdout)
}

#[test]
fn a_closed_gate_says_why_on_the_device_over_mqtt_and_at_the_authority() {
    let mut fleet = Fleet::with_policy(&policy());
    fleet.start_authority();
    let observer = MqttClient::connect(
        &fleet.broker,
        OBSERVER,
        "explain-observer",
        &["mctc/v1/dev/+/status"],
    );

    // --- PCR 14 differs from the class baseline ---
    let mut drifted = fleet.device("drift-1", "drifted");
    drifted.enroll();
    drifted.start();
    let status = wait_cause(&drifted, "contained");
    assert_eq!(status["state"], "contained");
    let why = &status["why"];
    assert_eq!(why["check"], "policy-mismatch", "{status}");
    let pcrs = why["pcrs"].as_array().unwrap();
    assert_eq!(pcrs.len(), 1, "{status}");
    assert_eq!(pcrs[0]["pcr"], MEASURED_PCR);
    assert_eq!(pcrs[0]["problem"], "differs");
    assert_eq!(pcrs[0]["expected"], hex::encode([0x42u8; 8]));
    let measured = fleet::extended(&[fleet::sha256(&[fleet::MEASURED_CONTENT])]);
    assert_eq!(pcrs[0]["got"], hex::encode(&measured[..8]));
    let hint = why["hint"].as_str().unwrap();
    assert!(
        hint.contains("PCR 14") && hint.contains("mctc-authority devices show drift-1"),
        "{hint}"
    );
    assert!(why["since_wall_ms"].as_u64().unwrap() > 0);
    assert_denies(&drifted);
    // The CLI's JSON is the socket's schema; its text names the PCR.
    assert_eq!(cli_status(&drifted)["why"]["pcrs"][0]["pcr"], MEASURED_PCR);
    let text = drifted.cli(&["status"]).stdout;
    println!("--- mctc-agent status ---\n{text}");
    assert!(
        text.contains("PCR 14 differs") && text.contains("hint"),
        "{text}"
    );
    // The authority's side: which PCR, expected against measured, a hint.
    let (show, text) = devices_show(&fleet, "drift-1");
    assert_eq!(show["status"], "contained", "{show}");
    assert_eq!(show["last_verdict"], "refused");
    assert_eq!(show["refusal"]["pcrs"][0]["pcr"], MEASURED_PCR, "{show}");
    assert_eq!(
        show["refusal"]["pcrs"][0]["expected"],
        hex::encode([0x42u8; 8])
    );
    assert!(show["refusal"]["since"].as_u64().unwrap() > 0);
    let hint = show["hint"].as_str().unwrap();
    assert!(
        hint.contains("PCR 14 differs from class drifted") && hint.contains("policy learn drift-1"),
        "{hint}"
    );
    println!("--- mctc-authority devices show drift-1 ---\n{text}");
    assert!(
        text.contains("refusal_pcr") && text.contains("PCR 14 differs"),
        "{text}"
    );

    // --- the agent expects another issuer than the authority signs as ---
    let mut foreign = fleet.device("issuer-1", "locker");
    let config = std::fs::read_to_string(&foreign.config).unwrap();
    let rewritten = config.replace(
        &format!("issuer = \"{}\"", fleet::AUTHORITY_ID),
        "issuer = \"mctc-authority\"",
    );
    assert_ne!(config, rewritten, "the harness config names the issuer");
    std::fs::write(&foreign.config, rewritten).unwrap();
    foreign.enroll();
    foreign.start();
    let status = wait_cause(&foreign, "artifact-rejected");
    assert_eq!(status["state"], "closed");
    assert_eq!(status["why"]["check"], "issuer", "{status}");
    assert!(
        status["why"]["hint"].as_str().unwrap().contains("issuer"),
        "{status}"
    );
    assert_denies(&foreign);
    println!("--- issuer-1 why ---\n{}", status["why"]);
    // The retained status on the broker carries the same explanation.
    let heard = wait_until(PATIENCE, || {
        published(&observer, "issuer-1").is_some_and(|s| s["why"]["check"] == "issuer")
    });
    assert!(
        heard.is_some(),
        "published: {:?}",
        published(&observer, "issuer-1")
    );

    // --- the class quotes a PCR nobody gave a reference value ---
    // The authority names the class's selection in the nonce, so the
    // device quotes PCR 16 although its own configuration does not list it.
    let mut uncovered = fleet.device("uncovered-1", "uncovered");
    uncovered.enroll();
    uncovered.start();
    let status = wait_cause(&uncovered, "refused-evidence");
    // On the wire a missing baseline is a policy mismatch that does not
    // contain; the PCR finding says which kind.
    assert_eq!(status["why"]["check"], "policy-mismatch", "{status}");
    assert_eq!(status["why"]["pcrs"][0]["pcr"], UNCOVERED_PCR, "{status}");
    assert_eq!(status["why"]["pcrs"][0]["problem"], "no-reference");
    assert_denies(&uncovered);
    let (show, _) = devices_show(&fleet, "uncovered-1");
    assert_eq!(show["last_refusal"], "no-baseline", "{show}");
    let hint = show["hint"].as_str().unwrap();
    assert!(
        hint.contains(&format!("lacks PCR {UNCOVERED_PCR}"))
            && hint.contains("policy learn uncovered-1"),
        "{show}"
    );

    // --- never enrolled ---
    let mut never = fleet.device("never-1", "locker");
    never.start();
    let status = wait_cause(&never, "not-enrolled");
    assert_eq!(status["state"], "closed");
    assert!(
        status["why"]["hint"]
            .as_str()
            .unwrap()
            .contains("mctc-agent enroll"),
        "{status}"
    );
    assert_denies(&never);
    let (show, _) = devices_show(&fleet, "never-1");
    assert_eq!(show["enrolled"], false);
    assert!(
        show["hint"].as_str().unwrap().contains("mctc-agent enroll"),
        "{show}"
    );
    let heard = wait_until(PATIENCE, || {
        published(&observer, "never-1").is_some_and(|s| s["why"]["cause"] == "not-enrolled")
    });
    assert!(heard.is_some(), "{:?}", published(&observer, "never-1"));
}

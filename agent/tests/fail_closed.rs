#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]
//! Ways the gate must close that only these tests provoke, proven by asking
//! the gate (deny), not by a status line alone — against the real
//! authority, swtpm and Mosquitto.
//!
//! Each fault is provoked once per `cargo xtask test` (the owners are
//! listed in `xtask/src/chaos/owners.rs`, whose tests fail if a test here
//! injects a fault a chaos row owns). The chaos rows own, with the
//! assertions these tests used to make: the authority killed, the broker
//! killed past the heartbeat window, a PCR extended, a TPM reset, a
//! measured file changed (also across a restart in the same boot), the
//! TPM killed and back power-cycled, garbage on every topic.

mod common;

use std::time::{Duration, Instant};

use common::{DeviceLineage, Fleet, MqttClient, PATIENCE, ms};
use mctc_shim::lineage::{Body, CloseCode, VerdictCode};
use mctc_tests::wait_until;

/// Pace of the tests that ask the gate throughout an outage: a request
/// every 10 ms resolves a reopening far below the drift interval (250 ms)
/// without flooding the lineage, which would slow the timing-sensitive
/// tests running alongside.
const PROBE_PACE: Duration = Duration::from_millis(10);

/// Owns the fault "authority silent past a short artifact's deadline"
/// (`xtask/src/chaos/owners.rs`).
#[test]
fn a_short_artifact_closes_the_gate_at_its_deadline_when_the_authority_goes_silent() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    let mut device = fleet.device("ttl-1", "short");
    device.bring_up();
    // Renewals keep it open (ttl 2 s, renewal at ~1 s): two of them, each
    // a new artifact, and the gate never closed in between.
    let mut seen = vec![device.status()["artifact"]["cti"].clone()];
    let renewed = wait_until(PATIENCE, || {
        let status = device.status();
        assert_eq!(status["state"], "open", "closed between renewals: {status}");
        let cti = status["artifact"]["cti"].clone();
        if !seen.contains(&cti) {
            seen.push(cti);
        }
        seen.len() >= 3
    });
    assert!(renewed.is_some(), "no two renewals: {}", device.status());
    assert!(device.permits(), "{}", device.status());

    fleet.silence_authority();
    let silenced = Instant::now();
    let expires_in = device.status()["artifact"]["expires_in_ms"]
        .as_u64()
        .unwrap();
    // The status was taken after `silenced`: the real deadline is no
    // earlier than this.
    let deadline = Duration::from_millis(expires_in);
    // Ask continuously: permitted up to the deadline, denied from it on.
    let first_deny = loop {
        let at = silenced.elapsed();
        if !device.permits() {
            break at;
        }
        assert!(at < deadline + Duration::from_secs(3), "never closed");
    };
    assert!(
        first_deny >= deadline.saturating_sub(Duration::from_millis(50)),
        "closed {first_deny:?} after silencing, deadline {deadline:?}"
    );
    assert!(
        first_deny <= deadline + Duration::from_millis(500),
        "first deny {first_deny:?}, deadline {deadline:?}"
    );
    let status = device.status();
    assert_eq!(status["state"], "closed");
    assert_eq!(status["reason"], "artifact-expired", "{status}");
    // The answer that ended the loop may be a permit decided just before the
    // deadline but durable only after it (answered, and recorded, as the
    // closed gate's deny); the next
    // decision is the closed gate's own deny.
    assert_eq!(
        device.authorize("unlock", None, None, None)["reason"],
        "closed"
    );
    fleet.resume_authority();

    // Exactly at the deadline, on the device's own clock (load-independent):
    // every permit under the last artifact was decided before its deadline,
    // and the first decision at or after it was a deny.
    assert!(device.stop().success());
    let records = device.lineage();
    let mut deadline_ms = None;
    let mut closed_at = None;
    let mut permits_after = 0;
    let mut last_permit_ms = 0;
    let mut first_deny_ms = None;
    for (_, bytes) in &records {
        let record = common::record(bytes);
        match record.body {
            Body::GateOpened(o) if closed_at.is_none() => deadline_ms = Some(o.deadline_ms),
            Body::ArtifactInstalled(a) if closed_at.is_none() => deadline_ms = Some(a.deadline_ms),
            Body::GateClosed(c)
                if c.reason == CloseCode::ArtifactExpired && closed_at.is_none() =>
            {
                closed_at = Some(record.mono_ms);
            }
            Body::Decision(d) if d.verdict == VerdictCode::Permit => {
                if closed_at.is_some() {
                    permits_after += 1;
                } else {
                    last_permit_ms = record.mono_ms;
                }
            }
            Body::Decision(_) if closed_at.is_some() && first_deny_ms.is_none() => {
                first_deny_ms = Some(record.mono_ms);
            }
            _ => {}
        }
    }
    let deadline_ms = deadline_ms.unwrap();
    let closed_at = closed_at.expect("GateClosed(ArtifactExpired) recorded");
    assert!(
        last_permit_ms < deadline_ms,
        "permit at {last_permit_ms}, deadline {deadline_ms}"
    );
    assert!(
        closed_at >= deadline_ms,
        "closed at {closed_at}, deadline {deadline_ms}"
    );
    assert!(first_deny_ms.unwrap() >= deadline_ms);
    assert_eq!(permits_after, 0);
}

/// Owns the fault "device revoked; marker carried across restarts"
/// (`xtask/src/chaos/owners.rs`).
#[test]
fn a_revoked_device_stays_revoked_across_restarts() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    let mut device = fleet.device("rev-1", "locker");
    device.bring_up();

    let out = fleet.cli(&["devices", "revoke", "rev-1", "--reason", "stolen"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        device.wait_state("revoked", PATIENCE).is_some(),
        "{}",
        device.status()
    );
    let answer = device.authorize("unlock", None, None, None);
    assert_eq!(answer["reason"], "revoked", "{answer}");
    // Written off the enforcement loop, right after the gate closed.
    let marker = device.state_dir().join("revoked");
    assert!(
        wait_until(PATIENCE, || marker.exists()).is_some(),
        "revocation marker never written:\n{}",
        device.log()
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&marker).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    assert!(device.stop().success());
    device.start();
    let status = device.status();
    assert_eq!(status["state"], "revoked", "{status}");
    assert_eq!(status["reason"], "revoked-persisted");

    // That much the authority would enforce too (it revoked rev-1). What
    // only the agent's memory enforces: a device the authority still
    // permits, carrying the marker, stays revoked. rev-2 is healthy and
    // open; it gets rev-1's marker while stopped.
    let mut healthy = fleet.device("rev-2", "locker");
    healthy.bring_up();
    assert!(healthy.stop().success());
    let copied = healthy.state_dir().join("revoked");
    std::fs::copy(&marker, &copied).unwrap();
    let heartbeats = common::heartbeat_watch(&fleet, "rev-hb");
    healthy.start();
    let status = healthy.status();
    assert_eq!(status["state"], "revoked", "{status}");
    assert_eq!(status["reason"], "revoked-persisted");
    // Long enough for a round, which a revoked agent never starts.
    common::connected_for_two_heartbeats(&healthy, &heartbeats);
    let answer = healthy.authorize("unlock", None, None, None);
    assert_eq!(answer["reason"], "revoked", "{answer}");
    assert_eq!(healthy.state(), "revoked", "{}", healthy.status());
    // The same device and authority without the marker: it opens, so the
    // closed gate above was the agent's memory alone.
    assert!(healthy.stop().success());
    std::fs::remove_file(&copied).unwrap();
    healthy.start();
    healthy.wait_open();
}

/// Owns the fault "forged artifact while open (foreign identity, stolen
/// service key)" (`xtask/src/chaos/owners.rs`); the chaos rows of the
/// impostor authority forge artifacts for a closed gate.
#[test]
fn forged_artifacts_are_stopped_by_the_broker_acl_or_rejected_by_the_agent() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    let mut device = fleet.device("forge-1", "locker");
    device.bring_up();
    let genuine = device.status()["artifact"]["cti"]
        .as_str()
        .unwrap()
        .to_owned();
    let topic = "mctc/v1/dev/forge-1/artifact";

    // A rogue key signs a plausible artifact for this device.
    let rogue = mctc_shim::RingSigner::from_seed(&[7; 32]).unwrap();
    let forged = mctc_tests::forge::artifact(
        &mctc_tests::forge::ArtifactSpec {
            sub: "forge-1".into(),
            nonce: [0; 32],
            boot: mctc_shim::tpm::BootCounters::default(),
            pcr_mask: 1,
            pcr_digest: [0; 32],
            iat: 1,
            exp: 4_000_000_000,
            ttl_ms: 86_400_000,
            hb_ms: 3_600_000,
            hb_seq: 0,
            epoch: 0,
        },
        &rogue,
    )
    .unwrap();

    // 1. Another device's identity: the broker drops it. An observer that
    // reads every topic proves nothing reached the topic: the intruder
    // then publishes on its own status topic, which the broker routes after
    // the forged message (one connection's publishes are handled in
    // order), so once the observer has that, it would have had the other.
    let sentinel = "mctc/v1/dev/intruder-1/status";
    fleet.broker.grant_device("intruder-1").unwrap();
    let spy = MqttClient::connect(
        &fleet.broker,
        mctc_tests::OBSERVER,
        "spy",
        &[topic, sentinel],
    );
    let intruder = MqttClient::connect(&fleet.broker, "intruder-1", "intruder", &[]);
    intruder.publish(topic, &forged, false);
    intruder.publish(sentinel, b"after the forged artifact", false);
    assert!(
        wait_until(Duration::from_secs(5), || spy.received_on(sentinel).len()
            == 1)
        .is_some(),
        "the intruder's own status never arrived"
    );
    assert!(
        spy.received_on(topic).is_empty(),
        "the ACL let a foreign identity publish"
    );

    // 2. An identity the broker lets write the topic (the authority's
    // certificate, say, stolen): the message arrives and the agent rejects it.
    let injector = MqttClient::connect(&fleet.broker, "mctc-authority", "injector", &[]);
    injector.publish(topic, &forged, false);
    assert!(
        wait_until(Duration::from_secs(5), || spy.received_on(topic).len() == 1).is_some(),
        "the injected artifact did not reach the topic"
    );
    let rejected = wait_until(Duration::from_secs(5), || {
        device.log().contains("artifact-topic message")
    });
    assert!(
        rejected.is_some(),
        "agent did not log the rejection:\n{}",
        device.log()
    );
    let status = device.status();
    assert_eq!(status["state"], "open");
    assert_eq!(
        status["artifact"]["cti"],
        genuine.as_str(),
        "the forged artifact was not installed"
    );
    assert!(device.permits());
}

/// Owns the fault "agent SIGTERM" (`xtask/src/chaos/owners.rs`).
#[test]
fn sigterm_leaves_the_offline_status_retained() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    let mut device = fleet.device("term-1", "locker");
    device.bring_up();
    let status = device.stop();
    assert!(status.success(), "exit {status}\n{}", device.log());
    assert!(!device.socket.exists(), "socket removed");
    let monitor = MqttClient::connect(
        &fleet.broker,
        "mctc-monitor",
        "monitor",
        &["mctc/v1/dev/term-1/status"],
    );
    let got = wait_until(Duration::from_secs(5), || {
        !monitor.received_on("mctc/v1/dev/term-1/status").is_empty()
    });
    assert!(got.is_some(), "no retained status");
    let (_, payload, retained) = monitor.received().into_iter().next().unwrap();
    assert!(retained);
    let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(json["state"], "offline", "{json}");
    assert_eq!(json["reason"], "shutdown");
    assert_eq!(json["online"], false);
    // The gate closed, then the stop, then the final checkpoint (the
    // transition's own checkpoint lands before the stop or is the final one,
    // depending on whether both records shared a group commit).
    let kinds = common::kinds(&device.lineage());
    assert!(kinds.ends_with(&["stop", "checkpoint"]), "{kinds:?}");
    let before_stop = kinds[..kinds.len() - 2]
        .iter()
        .rev()
        .find(|k| **k != "checkpoint");
    assert_eq!(before_stop, Some(&"closed"), "{kinds:?}");
}

/// Owns the fault "swtpm hung (SIGSTOP), then answering again"
/// (`xtask/src/chaos/owners.rs`): no chaos row hangs the TPM.
#[test]
fn a_hung_tpm_closes_the_gate_until_it_answers_again_then_a_new_attestation_reopens_it() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    let mut device = fleet.device("tpm-3", "locker");
    device.bring_up();

    device.swtpm.pause().unwrap();
    // A read that gets no answer counts as a missing TPM after 2 s. (Asked
    // through the status: a permit asked just before the hang waits for
    // its record, and the lineage writer for its checkpoint quote.)
    let after = wait_until(Duration::from_secs(10), || {
        device.status()["reason"] == "attestation-failed"
    });
    assert!(
        after.is_some_and(|a| a <= Duration::from_millis(250 + 2000 + 1000)),
        "closed {after:?} after the TPM hung: {}",
        device.status()
    );
    let after = after.unwrap();
    let closed = Instant::now();
    while closed.elapsed() < Duration::from_secs(4) {
        let answer = device.authorize("unlock", None, None, None);
        assert_eq!(
            answer["decision"],
            "deny",
            "permit {} ms into the hang: {answer}",
            ms(closed)
        );
        std::thread::sleep(PROBE_PACE);
    }
    let status = device.status();
    assert_eq!(status["tpm"], "unavailable", "{status}");
    assert_eq!(status["reason"], "attestation-failed", "{status}");

    // It answers again with its state intact (same boot, same PCRs): the
    // agent re-attests by itself and the gate reopens in place.
    device.swtpm.resume().unwrap();
    let back = Instant::now();
    device.wait_open();
    assert!(device.permits());
    assert_eq!(device.status()["tpm"], "ok");
    eprintln!(
        "closed {} ms after the hang; reopened {} ms after the TPM answered again",
        after.as_millis(),
        ms(back)
    );
}

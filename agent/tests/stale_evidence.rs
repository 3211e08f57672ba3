#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]
//! Issue 13, part 5, against the real fleet (Mosquitto, authority,
//! collector, swtpm, agent): a close for any cause but expiry voids the
//! evidence quoted before it. The attack: the platform drifts while a
//! renewal is in flight, then an artifact answering the pre-drift evidence
//! arrives. It must not reopen the gate; nothing of the lineage may be
//! lost; the device recovers the way policy allows (the drift resolved by
//! a reboot, the containment lifted by the fleet manager).

mod common;

use std::time::{Duration, Instant};

use common::{DeviceLineage, Fleet, MqttClient, PATIENCE, ms};
use mctc_shim::lineage::{Body, CloseCode};
use mctc_shim::messages::{Evidence, Heartbeat};
use mctc_shim::wire::Message;
use mctc_shim::{AuthorityKey, RingCrypto, Signed, Signer};
use mctc_tests::fleet::{class, sha256};
use mctc_tests::forge::{self, ArtifactSpec};
use mctc_tests::wait_until;

/// Pace of the tests that ask the gate throughout an outage: a request
/// every 10 ms resolves a reopening far below the drift interval (250 ms)
/// without flooding the lineage, which would slow the timing-sensitive
/// tests running alongside.
const PROBE_PACE: Duration = Duration::from_millis(10);

/// Artifacts live 8 s (renewed at about 4 s); the heartbeat window is a
/// minute, so silencing the authority for the attack lets nothing but the
/// artifact's own deadline close the gate.
const TTL_MS: u32 = 8_000;
const HB_MS: u32 = 60_000;

fn policy() -> String {
    class(
        "slow-hb",
        u64::from(TTL_MS),
        u64::from(HB_MS),
        &["op = \"unlock\"\nfresh_attestation = false"],
    )
}

#[test]
fn an_answer_to_evidence_quoted_before_a_drift_does_not_reopen_the_gate() {
    let mut fleet = Fleet::with_policy(&policy());
    fleet.start_authority();
    fleet.start_collector();
    let mut device = fleet.device("stale-1", "slow-hb");
    // The renewal's answer may come up to 10 s after its evidence: the
    // forged answer below arrives while the agent would still take it.
    let config = std::fs::read_to_string(&device.config).unwrap();
    std::fs::write(
        &device.config,
        config.replace("answer_timeout_ms = 2000", "answer_timeout_ms = 10000"),
    )
    .unwrap();
    let evidence_topic = "mctc/v1/dev/stale-1/evidence";
    let artifact_topic = "mctc/v1/dev/stale-1/artifact";
    let heartbeat_topic = "mctc/v1/fleet/heartbeat";
    // Reads what flows (the harness's observer), and writes where the
    // authority writes (its identity, as with a stolen key).
    let spy = MqttClient::connect(
        &fleet.broker,
        mctc_tests::OBSERVER,
        "stale-spy",
        &[evidence_topic, artifact_topic, heartbeat_topic],
    );
    let forger = MqttClient::connect(&fleet.broker, "mctc-authority", "stale-forger", &[]);
    device.bring_up();
    let signer = forge::authority_signer(&fleet.dir.path().join("keys/authority.key")).unwrap();

    // The authority falls silent; the renewal at half-life quotes the
    // artifact's next_nonce and waits for an answer.
    fleet.silence_authority();
    let silenced = Instant::now();
    let sent = wait_until(Duration::from_millis(u64::from(TTL_MS)), || {
        !spy.since(evidence_topic, silenced).is_empty()
    });
    assert!(sent.is_some(), "no renewal evidence\n{}", device.log());
    let (_, bytes) = spy.since(evidence_topic, silenced).remove(0);
    let evidence = Evidence::decode(&bytes).unwrap();
    let mut composite = Vec::new();
    for value in evidence.pcr_values.iter() {
        composite.extend_from_slice(&value.0);
    }
    let pre_drift_digest = sha256(&[&composite]);
    assert!(device.permits(), "open while the renewal is out");

    // Drift while the answer is outstanding.
    let mark = device.log().len();
    let extended = Instant::now();
    device.swtpm.extend_pcr(7, b"rootkit").unwrap();
    let closed = wait_until(Duration::from_secs(3), || !device.permits());
    assert!(
        closed.is_some(),
        "no close after the drift: {}",
        device.status()
    );
    assert_eq!(device.status()["reason"], "drift-pcr");
    let closed_after = ms(extended);

    // The answer to the pre-drift evidence, exactly as the authority would
    // have issued it, arrives after the close.
    let keys = [AuthorityKey::new(&RingCrypto, signer.public_key())];
    let epoch = spy
        .received_on(heartbeat_topic)
        .iter()
        .filter_map(|b| Heartbeat::open(b, &keys, &RingCrypto).ok())
        .map(|h| h.epoch)
        .max()
        .unwrap_or(0);
    let boot = common::record(&device.lineage().last().unwrap().1).boot;
    let now = forge::unix_now();
    let answer = forge::artifact(
        &ArtifactSpec {
            sub: "stale-1".into(),
            nonce: evidence.nonce.0,
            boot,
            pcr_mask: evidence.pcr_mask,
            pcr_digest: pre_drift_digest,
            iat: now,
            exp: now + u64::from(TTL_MS / 1000) + 1,
            ttl_ms: TTL_MS,
            hb_ms: HB_MS,
            hb_seq: device.status()["heartbeat_seq"].as_u64().unwrap_or(0),
            epoch,
        },
        &signer,
    )
    .unwrap();
    let delivered = Instant::now();
    forger.publish(artifact_topic, &answer, false);
    let handled = wait_until(Duration::from_secs(5), || {
        device.log().get(mark..).is_some_and(|new| {
            new.contains("while no evidence is outstanding")
                || new.contains("answers no outstanding nonce")
                || new.contains("artifact not installed")
                || new.contains("gate opened")
        })
    });
    assert!(
        handled.is_some(),
        "the agent did not handle the answer:\n{}",
        device.log()
    );
    // Asked again and again for longer than a drift check would take to
    // re-close a gate the answer had reopened: deny throughout.
    let mut asked = 0;
    while delivered.elapsed() < Duration::from_millis(1_500) {
        let answer = device.authorize("unlock", None, None, None);
        assert_eq!(
            answer["decision"],
            "deny",
            "permit on pre-drift evidence {} ms after it arrived: {answer}\n{}",
            ms(delivered),
            device.log()
        );
        asked += 1;
        std::thread::sleep(PROBE_PACE);
    }
    let status = device.status();
    assert_eq!(status["state"], "closed", "{status}");
    assert_eq!(status["reason"], "drift-pcr", "{status}");
    assert!(
        !device.log()[mark..].contains("gate opened"),
        "{}",
        device.log()
    );

    // The authority back: the agent's new round shows the drift, and
    // policy contains the device.
    fleet.resume_authority();
    let contained = device.wait_state("contained", PATIENCE);
    assert!(contained.is_some(), "{}\n{}", device.status(), device.log());
    assert_eq!(
        device.authorize("unlock", None, None, None)["reason"],
        "contained"
    );

    // Recovery as policy allows: a reboot (TPM reset, the agent measures
    // its files into the new boot) and the fleet manager lifting the
    // containment.
    assert!(device.stop().success());
    device.swtpm.reset().unwrap();
    let out = fleet.cli(&["devices", "restore", "stale-1", "--reason", "re-imaged"]);
    assert_eq!(out.code, 0, "{out:?}");
    device.start();
    device.wait_open();
    assert!(device.permits());

    // The lineage says what happened, nothing opened between the drift and
    // the reboot, and every record reaches the collector.
    let records = device.lineage();
    let bodies: Vec<_> = records.iter().map(|(_, b)| common::record(b)).collect();
    let drift_close = bodies
        .iter()
        .position(|r| matches!(&r.body, Body::GateClosed(c) if c.reason == CloseCode::Drift))
        .expect("the drift close is recorded");
    let restart = bodies[drift_close..]
        .iter()
        .position(|r| matches!(r.body, Body::AgentStart(_)))
        .map(|i| drift_close + i)
        .expect("the reboot's start is recorded");
    let reopened: Vec<u64> = records[drift_close..restart]
        .iter()
        .zip(&bodies[drift_close..restart])
        .filter(|(_, r)| matches!(r.body, Body::GateOpened(_) | Body::ArtifactInstalled(_)))
        .map(|((seq, _), _)| *seq)
        .collect();
    assert!(
        reopened.is_empty(),
        "opened on pre-drift evidence at seqs {reopened:?}"
    );
    assert!(
        bodies[drift_close..restart]
            .iter()
            .any(|r| matches!(r.body, Body::GateContained(_))),
        "the containment is recorded"
    );
    let last = records.last().unwrap().0;
    let collected = wait_until(PATIENCE, || {
        device.status()["lineage"]["acked_seq"]
            .as_u64()
            .is_some_and(|acked| acked >= last)
    });
    assert!(
        collected.is_some(),
        "the collector did not acknowledge through seq {last}: {}\n{}",
        device.status(),
        fleet.collector_log()
    );
    eprintln!(
        "closed {closed_after} ms after the drift; the stale answer was refused, {asked} requests denied in the 1.5 s after it"
    );
}

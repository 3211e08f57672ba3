//! Issue 13's broker attacks against the real fleet (shipped broker
//! configuration, real authority, collector and agents): no certificate of
//! the fleet CA that is not a service's may take another device's messages,
//! and `devices revoke` reaches the broker.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use std::time::{Duration, Instant};

use mctc_tests::fleet::{Fleet, MqttClient, class};
use mctc_tests::wait_until;

const TTL_MS: u64 = 3_000;
const HB_MS: u64 = 3_000;

fn short_policy() -> String {
    class(
        "pos",
        TTL_MS,
        HB_MS,
        &["op = \"unlock\"\nfresh_attestation = false"],
    )
}

/// Attack 1: twenty connections holding a device's certificate, the
/// monitor's, and a revoked device's try to join the authority's and the
/// collector's shared-subscription groups. Every subscription is refused;
/// over four artifact lifetimes the victim's gate never closes, every
/// renewal is answered, and its lineage reaches the collector.
#[test]
fn stolen_certificates_cannot_starve_the_fleet() {
    let mut fleet = Fleet::with_policy(&short_policy());
    fleet.start_authority();
    fleet.start_collector();
    let mut victim = fleet.device("pos-victim", "pos");
    victim.bring_up();
    let mut thief = fleet.device("pos-thief", "pos");
    thief.bring_up();
    let mut gone = fleet.device("pos-gone", "pos");
    gone.bring_up();
    gone.stop();
    let out = fleet.cli(&["devices", "revoke", "pos-gone", "--reason", "stolen"]);
    assert_eq!(out.code, 0, "{out:?}");

    let identities = [
        fleet.broker.identity("pos-thief").unwrap(),
        fleet.broker.identity("mctc-monitor").unwrap(),
        fleet.broker.identity("pos-gone").unwrap(),
    ];
    let attackers: Vec<MqttClient> = (0..20)
        .map(|i| {
            MqttClient::try_connect_with(
                &fleet.broker,
                &identities[i % identities.len()],
                &format!("attacker-{i}"),
                &mctc_tests::SERVICE_GROUP_FILTERS,
            )
            .unwrap()
        })
        .collect();
    for (i, attacker) in attackers.iter().enumerate() {
        assert_eq!(
            attacker.refused(),
            mctc_tests::SERVICE_GROUP_FILTERS,
            "attacker {i} was let into a group"
        );
    }

    let start = Instant::now();
    let mut asked = 0;
    while start.elapsed() < Duration::from_millis(4 * TTL_MS) {
        asked += 1;
        assert!(
            victim.permits(),
            "the victim's gate closed after {} ms: {}\n--- authority ---\n{}",
            start.elapsed().as_millis(),
            victim.status(),
            fleet.authority_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(asked > 10);
    let status = victim.status();
    assert_eq!(
        status["last_attestation"]["verdict"], "affirmed",
        "{status}"
    );
    // Its lineage is acknowledged by the collector up to what it wrote
    // before the burst ended.
    let next = status["lineage"]["next_seq"].as_u64().unwrap();
    let acked = wait_until(Duration::from_secs(30), || {
        victim.status()["lineage"]["acked_seq"]
            .as_u64()
            .is_some_and(|a| a + 1 >= next)
    });
    assert!(acked.is_some(), "{}", victim.status());
    for attacker in &attackers {
        assert!(attacker.received().is_empty());
    }
}

/// `devices revoke` reaches the broker: the revoked device is told (its
/// control), then disconnected, and from then on the broker refuses its
/// subscriptions and drops its publishes. Measured from the command's
/// return.
#[test]
fn revocation_reaches_the_broker_within_seconds() {
    let mut fleet = Fleet::with_policy(&short_policy());
    fleet.start_authority();
    let mut device = fleet.device("pos-lost", "pos");
    device.bring_up();
    let monitor = MqttClient::connect(
        &fleet.broker,
        "mctc-monitor",
        "revocation-monitor",
        &["mctc/v1/dev/pos-lost/status"],
    );

    let out = fleet.cli(&["devices", "revoke", "pos-lost", "--reason", "stolen"]);
    assert_eq!(out.code, 0, "{out:?}");
    let revoked = Instant::now();
    let cut = wait_until(Duration::from_secs(10), || {
        device.log().contains("broker connection lost")
    });
    let cut = cut.unwrap_or_else(|| {
        panic!(
            "the broker did not disconnect the revoked device\n--- agent ---\n{}\n--- broker ---\n{}",
            device.log(),
            fleet.broker.log()
        )
    });
    eprintln!(
        "revoked device disconnected by the broker {} ms after `devices revoke` returned",
        cut.as_millis()
    );
    // It was told first: the agent persisted its revocation.
    assert_eq!(device.state(), "revoked", "{}", device.status());
    // It connects again, with a valid certificate, and may do nothing.
    let refused = wait_until(Duration::from_secs(15), || {
        device.log().contains("subscription refused by the broker")
    });
    assert!(refused.is_some(), "{}", device.log());
    let identity = fleet.broker.identity("pos-lost").unwrap();
    let probe = MqttClient::try_connect_with(
        &fleet.broker,
        &identity,
        "pos-lost-probe",
        &["mctc/v1/dev/pos-lost/control"],
    )
    .unwrap();
    assert_eq!(probe.refused(), ["mctc/v1/dev/pos-lost/control"]);
    let since = Instant::now();
    probe.publish("mctc/v1/dev/pos-lost/status", b"still here", true);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        monitor
            .since("mctc/v1/dev/pos-lost/status", since)
            .iter()
            .all(|(_, p)| p != b"still here"),
        "a revoked device's publish got through"
    );
    eprintln!("total {} ms", revoked.elapsed().as_millis());
}

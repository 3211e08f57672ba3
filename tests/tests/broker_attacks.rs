//! Issue 13's broker attacks against the real fleet (shipped broker
//! configuration, real authority and agent): `devices revoke` reaches the
//! broker.
//!
//! Attack 1 (stolen certificates joining the services' share groups) is
//! proven twice elsewhere, so it is not provoked here a third time: the
//! broker's refusal for every kind of certificate (a device's, the
//! monitor's, a revoked one, one never granted) in
//! `broker_smoke::no_device_or_monitor_joins_a_service_share_group`, and
//! the live fleet under it (gate open, renewals answered, lineage at the
//! collector) in the chaos row "stolen certificates join the services'
//! share groups" (`cargo xtask chaos`, a step of `cargo xtask test`).
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
/// The monitor may read it and the authority's identity may write it: the
/// sentinel's topic.
const HEARTBEAT: &str = "mctc/v1/fleet/heartbeat";
const HB_MS: u64 = 3_000;

fn short_policy() -> String {
    class(
        "pos",
        TTL_MS,
        HB_MS,
        &["op = \"unlock\"\nfresh_attestation = false"],
    )
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
        &["mctc/v1/dev/pos-lost/status", HEARTBEAT],
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
    drop(probe);
    let since = Instant::now();
    publish_until_acked(
        &fleet,
        &identity,
        "mctc/v1/dev/pos-lost/status",
        b"still here",
    );
    // The broker has now routed or dropped it. A sentinel sent after that
    // reaches the monitor after anything the broker routed before it (one
    // broker, one monitor connection, delivered in order): once the
    // sentinel is in, the revoked device's publish would be too.
    let sentinel = MqttClient::connect(&fleet.broker, "mctc-authority", "revocation-sentinel", &[]);
    sentinel.publish(HEARTBEAT, b"sentinel", false);
    let in_order = wait_until(Duration::from_secs(10), || {
        monitor
            .received_on(HEARTBEAT)
            .iter()
            .any(|p| p == b"sentinel")
    });
    assert!(in_order.is_some(), "the sentinel did not reach the monitor");
    assert!(
        monitor
            .since("mctc/v1/dev/pos-lost/status", since)
            .iter()
            .all(|(_, p)| p != b"still here"),
        "a revoked device's publish got through"
    );
    eprintln!("total {} ms", revoked.elapsed().as_millis());
}

/// Publishes at QoS 1 with `identity` and returns once the broker answered
/// with a PUBACK, which it sends after routing the message, or dropping it
/// for a publish its ACL denies.
fn publish_until_acked(
    fleet: &Fleet,
    identity: &mctc_tests::ClientIdentity,
    topic: &str,
    payload: &[u8],
) {
    use rumqttc::{Event, Packet, QoS};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = fleet
            .broker
            .mqtt_options("revoked-publisher", identity)
            .unwrap();
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
        client
            .publish(topic, QoS::AtLeastOnce, true, payload.to_vec())
            .await
            .unwrap();
        let acked = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await;
        assert_eq!(
            acked,
            Ok(true),
            "the broker did not acknowledge the publish:\n{}",
            fleet.broker.log()
        );
    });
}

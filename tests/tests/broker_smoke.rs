//! The harness's Mosquitto: TLS 1.3 with client certificates, and the shipped
//! ACL confining each device to its own topics.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use std::time::Duration;

use mctc_tests::Broker;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS, SubscribeReasonCode};
use tokio::time::timeout;

/// Connects as `cn` and waits for the CONNACK.
async fn connect(broker: &Broker, cn: &str) -> (AsyncClient, EventLoop) {
    let identity = broker.identity(cn).expect("client certificate");
    let options = broker.mqtt_options(cn, &identity).expect("mqtt options");
    let (client, mut events) = AsyncClient::new(options, 16);
    timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("{cn} could not connect: {e}"),
            }
        }
    })
    .await
    .expect("CONNACK within 10 s");
    (client, events)
}

/// Polls until a SUBACK arrives and returns its return codes.
async fn suback(events: &mut EventLoop) -> Vec<SubscribeReasonCode> {
    timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::SubAck(ack)) = events.poll().await.expect("event loop") {
                return ack.return_codes;
            }
        }
    })
    .await
    .expect("SUBACK within 10 s")
}

/// Polls for `window`, collecting (topic, payload) of every publish received.
async fn received_within(events: &mut EventLoop, window: Duration) -> Vec<(String, Vec<u8>)> {
    let mut got = Vec::new();
    let _ = timeout(window, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    got.push((p.topic.clone(), p.payload.to_vec()))
                }
                Ok(_) => {}
                Err(e) => panic!("event loop failed: {e}"),
            }
        }
    })
    .await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_publish_subscribe_round_trip_with_client_certificate() {
    let broker = Broker::start().expect("start mosquitto");
    let (client, mut events) = connect(&broker, "device-a").await;
    client
        .subscribe("mctc/v1/dev/device-a/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        suback(&mut events).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    client
        .publish(
            "mctc/v1/dev/device-a/status",
            QoS::AtLeastOnce,
            false,
            b"hello".to_vec(),
        )
        .await
        .unwrap();
    let got = received_within(&mut events, Duration::from_secs(2)).await;
    assert_eq!(
        got,
        vec![("mctc/v1/dev/device-a/status".to_owned(), b"hello".to_vec())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_read_or_write_another_devices_topics() {
    let broker = Broker::start().expect("start mosquitto");
    let (a, mut a_events) = connect(&broker, "device-a").await;
    let (b, mut b_events) = connect(&broker, "device-b").await;

    // Device B listens on its own subtree: the positive control proving that
    // messages on B's topics do flow when the sender is allowed.
    b.subscribe("mctc/v1/dev/device-b/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        suback(&mut b_events).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    // Device A tries to listen on B's subtree. Mosquitto 2.0 answers an MQTT
    // 3.1.1 wildcard subscription with a grant and enforces the ACL's read
    // rule per delivered message, so the property to check is delivery.
    a.subscribe("mctc/v1/dev/device-b/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    suback(&mut a_events).await;

    // Device A forges a message on B's artifact topic: dropped by the broker.
    a.publish(
        "mctc/v1/dev/device-b/artifact",
        QoS::AtLeastOnce,
        false,
        b"forged".to_vec(),
    )
    .await
    .unwrap();
    // Device B publishes on its own topic: delivered to B, not to A.
    b.publish(
        "mctc/v1/dev/device-b/status",
        QoS::AtLeastOnce,
        false,
        b"genuine".to_vec(),
    )
    .await
    .unwrap();

    let (to_a, to_b) = tokio::join!(
        received_within(&mut a_events, Duration::from_secs(2)),
        received_within(&mut b_events, Duration::from_secs(2)),
    );
    assert_eq!(
        to_b,
        vec![(
            "mctc/v1/dev/device-b/status".to_owned(),
            b"genuine".to_vec()
        )],
        "B must receive its own message and never A's forgery"
    );
    assert!(to_a.is_empty(), "A must not see B's traffic: {to_a:?}");
}

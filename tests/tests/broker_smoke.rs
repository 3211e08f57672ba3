//! The broker's authorization, as shipped: TLS 1.3 with client certificates,
//! and the dynamic-security roles confining each device to its own topics in
//! each direction, keeping every identity but the services' out of the
//! services' shared-subscription groups, and taking everything from a
//! revoked or unknown certificate.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use std::time::{Duration, Instant};

use mctc_tests::Broker;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS, SubscribeReasonCode};
use tokio::time::timeout;

/// Connects as `cn` and waits for the CONNACK.
async fn connect(broker: &Broker, cn: &str) -> (AsyncClient, EventLoop) {
    connect_as(broker, cn, cn).await
}

/// Connects as `cn` with MQTT client id `client_id`.
async fn connect_as(broker: &Broker, cn: &str, client_id: &str) -> (AsyncClient, EventLoop) {
    let identity = broker.identity(cn).expect("client certificate");
    let options = broker
        .mqtt_options(client_id, &identity)
        .expect("mqtt options");
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

const SUCCESS: SubscribeReasonCode = SubscribeReasonCode::Success(QoS::AtLeastOnce);

/// Subscribes to each filter in turn and returns the broker's answers.
async fn subscribe_each(
    client: &AsyncClient,
    events: &mut EventLoop,
    filters: &[&str],
) -> Vec<SubscribeReasonCode> {
    let mut codes = Vec::new();
    for filter in filters {
        client.subscribe(*filter, QoS::AtLeastOnce).await.unwrap();
        codes.extend(suback(events).await);
    }
    codes
}

async fn publish(client: &AsyncClient, topic: &str, payload: &[u8]) {
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_uses_its_own_topics_in_their_own_direction_only() {
    let broker = Broker::start().expect("start mosquitto");
    broker.grant_device("device-a").unwrap();
    broker.grant_device("device-b").unwrap();
    let (a, mut a_events) = connect(&broker, "device-a").await;
    let (b, mut b_events) = connect(&broker, "device-b").await;
    let (authority, mut authority_events) = connect(&broker, "mctc-authority").await;
    let (collector, mut collector_events) = connect(&broker, "mctc-collector").await;

    // A device may subscribe to its own subtrees and the heartbeat, nothing
    // else.
    assert_eq!(
        subscribe_each(
            &b,
            &mut b_events,
            &[
                "mctc/v1/dev/device-b/artifact",
                "mctc/v1/dev/device-b/lineage/ack",
                "mctc/v1/fleet/heartbeat",
                "mctc/v1/dev/device-b/#",
                "mctc/v1/dev/device-a/artifact",
                "mctc/v1/dev/+/artifact",
                "#",
            ],
        )
        .await,
        vec![
            SUCCESS,
            SUCCESS,
            SUCCESS,
            SUCCESS,
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Failure,
        ]
    );
    assert_eq!(
        subscribe_each(
            &a,
            &mut a_events,
            &["mctc/v1/dev/device-a/lineage/ack", "mctc/v1/dev/device-b/#"]
        )
        .await,
        vec![SUCCESS, SubscribeReasonCode::Failure]
    );
    // The services' side: the authority hears nonce requests and the
    // collector lineage, each through its share group.
    assert_eq!(
        subscribe_each(
            &authority,
            &mut authority_events,
            &["$share/mctc-authority/mctc/v1/dev/+/nonce/req"]
        )
        .await,
        vec![SUCCESS]
    );
    assert_eq!(
        subscribe_each(
            &collector,
            &mut collector_events,
            &["$share/mctc-collector/mctc/v1/dev/+/lineage"]
        )
        .await,
        vec![SUCCESS]
    );

    // Device A forges what the fleet says to B, and what the collector says
    // to A itself; it writes a nonce request and lineage in B's name.
    publish(&a, "mctc/v1/dev/device-b/artifact", b"forged artifact").await;
    publish(&a, "mctc/v1/dev/device-b/lineage/ack", b"forged ack for b").await;
    publish(&a, "mctc/v1/dev/device-a/lineage/ack", b"forged ack for a").await;
    publish(&a, "mctc/v1/dev/device-b/nonce/req", b"as b").await;
    publish(&a, "mctc/v1/dev/device-b/lineage", b"as b").await;
    // What may flow does: the fleet's answers to each device, and each
    // device's own requests and lineage to the services.
    publish(
        &authority,
        "mctc/v1/dev/device-b/artifact",
        b"genuine artifact",
    )
    .await;
    publish(
        &collector,
        "mctc/v1/dev/device-a/lineage/ack",
        b"genuine ack",
    )
    .await;
    publish(&a, "mctc/v1/dev/device-a/nonce/req", b"a's own").await;
    publish(&a, "mctc/v1/dev/device-a/lineage", b"a's own").await;

    let (to_a, to_b, to_authority, to_collector) = tokio::join!(
        received_within(&mut a_events, Duration::from_secs(2)),
        received_within(&mut b_events, Duration::from_secs(2)),
        received_within(&mut authority_events, Duration::from_secs(2)),
        received_within(&mut collector_events, Duration::from_secs(2)),
    );
    assert_eq!(
        to_b,
        vec![(
            "mctc/v1/dev/device-b/artifact".to_owned(),
            b"genuine artifact".to_vec()
        )]
    );
    assert_eq!(
        to_a,
        vec![(
            "mctc/v1/dev/device-a/lineage/ack".to_owned(),
            b"genuine ack".to_vec()
        )]
    );
    assert_eq!(
        to_authority,
        vec![(
            "mctc/v1/dev/device-a/nonce/req".to_owned(),
            b"a's own".to_vec()
        )]
    );
    assert_eq!(
        to_collector,
        vec![(
            "mctc/v1/dev/device-a/lineage".to_owned(),
            b"a's own".to_vec()
        )]
    );
}

/// Issue 13, attack 1: twenty connections with any fleet certificate (a
/// device, the monitor, a revoked device, one never granted) try to join
/// the authority's and the collector's shared-subscription groups. The
/// broker refuses every such subscription, and every request a device sends
/// reaches the authority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_device_or_monitor_joins_a_service_share_group() {
    let broker = Broker::start().expect("start mosquitto");
    for device in ["device-a", "device-r", "device-v"] {
        broker.grant_device(device).unwrap();
    }
    broker.revoke_device("device-r").unwrap();
    let (authority, mut authority_events) = connect(&broker, "mctc-authority").await;
    assert_eq!(
        subscribe_each(
            &authority,
            &mut authority_events,
            &["$share/mctc-authority/mctc/v1/dev/+/nonce/req"]
        )
        .await,
        vec![SUCCESS]
    );
    let group_filters = [
        "$share/mctc-authority/mctc/v1/dev/+/nonce/req",
        "$share/mctc-authority/mctc/v1/dev/+/evidence",
        "$share/mctc-authority/mctc/v1/enroll/+/request",
        "$share/mctc-collector/mctc/v1/dev/+/lineage",
        "$share/mctc-authority/#",
        "$share/x/#",
        "mctc/v1/dev/+/nonce/req",
    ];
    let mut attackers = Vec::new();
    for i in 0..20 {
        let cn = ["device-a", "mctc-monitor", "device-r", "never-granted"][i % 4];
        let (client, mut events) = connect_as(&broker, cn, &format!("{cn}-{i}")).await;
        let codes = subscribe_each(&client, &mut events, &group_filters).await;
        assert!(
            codes.iter().all(|c| *c == SubscribeReasonCode::Failure),
            "{cn} was let into a service's group: {codes:?}"
        );
        attackers.push((client, events));
    }
    // Keep the attackers' sessions serviced while the victim sends.
    let attackers = tokio::spawn(async move {
        let mut got = 0;
        for (_client, mut events) in attackers {
            got += received_within(&mut events, Duration::from_millis(100))
                .await
                .len();
        }
        got
    });
    let (victim, mut victim_events) = connect(&broker, "device-v").await;
    let send = async {
        for i in 0..50 {
            publish(
                &victim,
                "mctc/v1/dev/device-v/nonce/req",
                format!("{i}").as_bytes(),
            )
            .await;
        }
    };
    let ((), to_authority, _) = tokio::join!(
        send,
        received_within(&mut authority_events, Duration::from_secs(3)),
        received_within(&mut victim_events, Duration::from_secs(3)),
    );
    assert_eq!(
        to_authority.len(),
        50,
        "every request reaches the authority"
    );
    assert_eq!(attackers.await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_certificate_may_do_nothing() {
    let broker = Broker::start().expect("start mosquitto");
    let (monitor, mut monitor_events) = connect(&broker, "mctc-monitor").await;
    assert_eq!(
        subscribe_each(&monitor, &mut monitor_events, &["mctc/v1/dev/+/status"]).await,
        vec![SUCCESS]
    );
    // A certificate of the fleet CA whose device was never added.
    let (stranger, mut stranger_events) = connect(&broker, "device-x").await;
    assert_eq!(
        subscribe_each(
            &stranger,
            &mut stranger_events,
            &["mctc/v1/dev/device-x/artifact", "mctc/v1/fleet/heartbeat"]
        )
        .await,
        vec![SubscribeReasonCode::Failure, SubscribeReasonCode::Failure]
    );
    publish(&stranger, "mctc/v1/dev/device-x/status", b"hello").await;
    // The monitor may only read.
    publish(&monitor, "mctc/v1/dev/device-x/status", b"from the monitor").await;
    let (got, _) = tokio::join!(
        received_within(&mut monitor_events, Duration::from_secs(2)),
        received_within(&mut stranger_events, Duration::from_secs(2)),
    );
    assert!(got.is_empty(), "{got:?}");
}

/// `devices revoke` reaches the broker: the revoked device is disconnected
/// at once, and its certificate then opens a TLS session in which it may
/// neither subscribe nor publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_cut_off_at_once() {
    let broker = Broker::start().expect("start mosquitto");
    broker.grant_device("device-a").unwrap();
    let (monitor, mut monitor_events) = connect(&broker, "mctc-monitor").await;
    subscribe_each(&monitor, &mut monitor_events, &["mctc/v1/dev/+/status"]).await;
    let (a, mut a_events) = connect(&broker, "device-a").await;
    assert_eq!(
        subscribe_each(&a, &mut a_events, &["mctc/v1/dev/device-a/control"]).await,
        vec![SUCCESS]
    );
    publish(&a, "mctc/v1/dev/device-a/status", b"before").await;
    let (to_monitor, _) = tokio::join!(
        received_within(&mut monitor_events, Duration::from_secs(1)),
        received_within(&mut a_events, Duration::from_secs(1)),
    );
    assert_eq!(
        to_monitor,
        vec![("mctc/v1/dev/device-a/status".to_owned(), b"before".to_vec())]
    );

    let revoked_at = Instant::now();
    broker.revoke_device("device-a").unwrap();
    let cut = timeout(Duration::from_secs(10), async {
        loop {
            if a_events.poll().await.is_err() {
                return revoked_at.elapsed();
            }
        }
    })
    .await
    .expect("the broker disconnects a revoked device");
    eprintln!(
        "revoked device disconnected {} ms after the revocation was sent",
        cut.as_millis()
    );

    let (a, mut a_events) = connect(&broker, "device-a").await;
    assert_eq!(
        subscribe_each(&a, &mut a_events, &["mctc/v1/dev/device-a/control"]).await,
        vec![SubscribeReasonCode::Failure]
    );
    publish(&a, "mctc/v1/dev/device-a/status", b"after").await;
    let (got, _) = tokio::join!(
        received_within(&mut monitor_events, Duration::from_secs(2)),
        received_within(&mut a_events, Duration::from_secs(2)),
    );
    assert!(got.is_empty(), "{got:?}");
}

//! The link against a real Mosquitto: TLS client auth, resubscription after a
//! broker restart, backoff instead of a busy loop, Last Will on a vanished
//! client.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use std::time::Duration;

use mctc_service::BrokerConfig;
use mctc_service::link::{Link, LinkEvent, LinkOptions, QoS};
use mctc_tests::Broker;
use tokio::time::timeout;

/// The link's configuration for `cn`, with the rights the harness gives
/// that name (`Broker::client_identity`).
fn config(broker: &Broker, cn: &str) -> BrokerConfig {
    config_for(broker, broker.client_identity(cn).unwrap())
}

fn config_for(broker: &Broker, id: mctc_tests::ClientIdentity) -> BrokerConfig {
    BrokerConfig {
        url: broker.url(),
        ca: id.ca,
        cert: id.cert,
        key: id.key,
        keep_alive_secs: 5,
    }
}

/// A topic the collector's identity may both write and read.
const ALERTS: &str = "mctc/v1/collector/alerts";

async fn next(link: &mut Link) -> LinkEvent {
    timeout(Duration::from_secs(15), link.recv())
        .await
        .expect("event within 15 s")
        .expect("link running")
}

async fn next_message(link: &mut Link) -> (String, Vec<u8>) {
    loop {
        if let LinkEvent::Message { topic, payload, .. } = next(link).await {
            return (topic, payload);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_broker_restart_and_resubscribes() {
    let mut broker = Broker::start().unwrap();
    let options = LinkOptions::new("mctc-collector").subscribe(ALERTS, QoS::AtLeastOnce);
    let mut link = Link::start(&config(&broker, "mctc-collector"), options).unwrap();
    assert_eq!(next(&mut link).await, LinkEvent::Connected { session: 1 });
    assert_eq!(next(&mut link).await, LinkEvent::Subscribed { session: 1 });
    link.client()
        .publish(ALERTS, QoS::AtLeastOnce, false, b"1".to_vec())
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut link).await,
        (ALERTS.into(), b"1".to_vec())
    );

    broker.kill();
    assert!(matches!(
        next(&mut link).await,
        LinkEvent::Disconnected { .. }
    ));
    assert!(!link.is_connected());
    // While the broker is down the link backs off: only a handful of
    // attempts in a second, not a busy loop.
    let mut failures = 0;
    let _ = timeout(Duration::from_secs(1), async {
        while let Some(LinkEvent::Disconnected { .. }) = link.recv().await {
            failures += 1;
        }
    })
    .await;
    assert!(failures <= 5, "{failures} reconnect attempts in one second");

    broker.start_again().unwrap();
    loop {
        match next(&mut link).await {
            LinkEvent::Connected { session } => {
                assert_eq!(session, 2);
                // The new session subscribes again and says when granted.
                assert_eq!(next(&mut link).await, LinkEvent::Subscribed { session: 2 });
                break;
            }
            LinkEvent::Disconnected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    link.client()
        .publish(ALERTS, QoS::AtLeastOnce, false, b"2".to_vec())
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut link).await,
        (ALERTS.into(), b"2".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_will_is_published_when_a_client_vanishes_but_not_on_clean_shutdown() {
    let broker = Broker::start().unwrap();
    let status = "mctc/v1/dev/device-a/status";
    let mut watcher = Link::start(
        &config(&broker, "mctc-monitor"),
        LinkOptions::new("mctc-monitor").subscribe("mctc/v1/dev/+/status", QoS::AtLeastOnce),
    )
    .unwrap();
    assert_eq!(
        next(&mut watcher).await,
        LinkEvent::Connected { session: 1 }
    );

    let will = || LinkOptions::new("device-a").last_will(status, b"offline".to_vec(), false);
    let mut device = Link::start(&config(&broker, "device-a"), will()).unwrap();
    assert_eq!(next(&mut device).await, LinkEvent::Connected { session: 1 });
    // Nothing to subscribe to: subscribed at once.
    assert_eq!(
        next(&mut device).await,
        LinkEvent::Subscribed { session: 1 }
    );
    device.shutdown(Duration::from_secs(2)).await;
    assert!(
        timeout(Duration::from_secs(1), next_message(&mut watcher))
            .await
            .is_err(),
        "a clean DISCONNECT must not publish the will"
    );

    let mut device = Link::start(&config(&broker, "device-a"), will()).unwrap();
    assert_eq!(next(&mut device).await, LinkEvent::Connected { session: 1 });
    drop(device);
    assert_eq!(
        next_message(&mut watcher).await,
        (status.into(), b"offline".to_vec())
    );
}

/// A device that connects before the authority granted it its rights on
/// the broker is refused its subscriptions; the link asks again with
/// backoff, and once the grant is in, the device hears its topics without
/// a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_is_asked_again_until_granted() {
    let broker = Broker::start().unwrap();
    let control = "mctc/v1/dev/device-b/control";
    let options = LinkOptions::new("device-b").subscribe(control, QoS::AtLeastOnce);
    let mut link = Link::start(
        &config_for(&broker, broker.identity("device-b").unwrap()),
        options,
    )
    .unwrap();
    assert_eq!(next(&mut link).await, LinkEvent::Connected { session: 1 });
    assert_eq!(
        next(&mut link).await,
        LinkEvent::SubscribeRefused {
            topic: control.into()
        }
    );
    // Still refused when asked again, until the grant.
    assert_eq!(
        next(&mut link).await,
        LinkEvent::SubscribeRefused {
            topic: control.into()
        }
    );
    broker.grant_device("device-b").unwrap();
    let mut authority = Link::start(
        &config(&broker, "mctc-authority"),
        LinkOptions::new("mctc-authority"),
    )
    .unwrap();
    assert_eq!(
        next(&mut authority).await,
        LinkEvent::Connected { session: 1 }
    );
    authority
        .client()
        .publish(control, QoS::AtLeastOnce, true, b"retained".to_vec())
        .await
        .unwrap();
    // Refusals that were in flight may still be reported; then `Subscribed`
    // (only now: the refused session never reported it), then the message.
    let mut subscribed = false;
    let got = timeout(Duration::from_secs(30), async {
        loop {
            match link.recv().await {
                Some(LinkEvent::Message { topic, payload, .. }) => return (topic, payload),
                Some(LinkEvent::SubscribeRefused { .. }) => {
                    assert!(!subscribed, "a refusal after Subscribed");
                }
                Some(LinkEvent::Subscribed { session }) => {
                    assert_eq!(session, 1, "granted on the same session");
                    assert!(!subscribed, "Subscribed twice in one session");
                    subscribed = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("the device hears its topic once granted");
    assert!(subscribed, "the message came before Subscribed");
    assert_eq!(got, (control.to_owned(), b"retained".to_vec()));
}

#[tokio::test]
async fn a_world_readable_key_is_refused_before_connecting() {
    use std::os::unix::fs::PermissionsExt;
    let broker = Broker::start().unwrap();
    let cfg = config(&broker, "device-a");
    std::fs::set_permissions(&cfg.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Link::start(&cfg, LinkOptions::new("device-a")).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

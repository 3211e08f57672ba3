//! Controls reach devices even when a publish was lost: the outbox forgets a
//! control once it is handed to the MQTT client, so every new broker session
//! announces each device's latest control again (retained, same seq — a
//! device that already has it ignores it as a replay).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

mod common;

use common::*;
use mctc_shim::messages::{Control, ControlAction, EnrollStatus};
use mctc_shim::topics::DeviceTopic;
use mctc_shim::{RingCrypto, Signed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_control_is_announced_again_on_the_next_broker_session() {
    let mut fleet = Fleet::new();
    let first = fleet.start();
    let mut device = Device::new(&fleet, "locker-7").await;
    fleet.add(
        "locker-7",
        "locker",
        &["--ek-sha256", &device.ek_sha256_hex()],
    );
    assert_eq!(device.enroll().await, EnrollStatus::Ok);
    let control_topic = topic(DeviceTopic::Control, &device.id);

    let out = fleet.cli(&["devices", "contain", "locker-7", "--reason", "inspection"]);
    assert_eq!(out.code, 0, "{out:?}");
    let mut watcher = fleet.client(mctc_tests::OBSERVER, &[&control_topic]).await;
    let (bytes, _) = watcher
        .next_with(&control_topic, ANSWER)
        .await
        .expect("the contain control");
    let control = Control::open(&bytes, &fleet.keys(), &RingCrypto).unwrap();
    assert_eq!((control.seq, control.action), (1, ControlAction::Contain));

    // The broker loses it (here: the retained copy is cleared, as a broker
    // restart without persistence or a lost in-flight publish would).
    watcher.publish(&control_topic, Vec::new(), true).await;
    fleet.kill(first);

    // A new authority session announces the latest control again.
    fleet.start();
    let mut device_view = fleet.client("locker-7", &[&control_topic]).await;
    let (bytes, _) = device_view
        .next_with(&control_topic, ANSWER)
        .await
        .expect("the control is announced again");
    let control = Control::open(&bytes, &fleet.keys(), &RingCrypto).unwrap();
    assert_eq!((control.seq, control.action), (1, ControlAction::Contain));
}

//! The agent's end-to-end fixtures: the shared fleet harness
//! (`mctc_tests::fleet`: Mosquitto with the shipped ACL, the real authority
//! and collector, devices of swtpm + the real agent) plus what only the
//! agent's tests need: reading a device's lineage straight from its store.
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test fixtures; each test file uses a different subset"
)]

use mctc_agent::lineage::store::read_range;
use mctc_shim::lineage::{Body, ChainVerifier, Record, Step};
use mctc_shim::{DeviceId, Message, RingCrypto};

pub use mctc_tests::fleet::{
    AUTHORITY_ID, Device, Fleet, MEASURED_CONTENT, MEASURED_PCR, MqttClient, Output, PATIENCE,
    extended, ms, run,
};

/// What the agent's tests read from a device's own lineage store.
pub trait DeviceLineage {
    fn device_id(&self) -> DeviceId;

    /// Every record in the device's lineage directory, with the chain
    /// verified from genesis.
    fn lineage(&self) -> Vec<(u64, Vec<u8>)>;
}

impl DeviceLineage for Device {
    fn device_id(&self) -> DeviceId {
        DeviceId::new(&self.id).unwrap()
    }

    fn lineage(&self) -> Vec<(u64, Vec<u8>)> {
        let frames = read_range(&self.lineage_dir(), 0, u64::MAX, usize::MAX, usize::MAX).unwrap();
        let mut chain = ChainVerifier::genesis(self.device_id());
        for frame in &frames {
            match chain.push(&RingCrypto, &frame.payload) {
                Ok(Step::Appended { .. }) => {}
                other => panic!("lineage chain breaks at {}: {other:?}", frame.seq),
            }
        }
        frames.into_iter().map(|f| (f.seq, f.payload)).collect()
    }
}

/// Decodes one record.
pub fn record(bytes: &[u8]) -> Record<'_> {
    Record::decode(bytes).unwrap()
}

/// Kind names of the records, for assertions.
pub fn kinds(records: &[(u64, Vec<u8>)]) -> Vec<&'static str> {
    records
        .iter()
        .map(|(_, bytes)| match record(bytes).body {
            Body::AgentStart(_) => "start",
            Body::AgentStop(_) => "stop",
            Body::Enrolled(_) => "enrolled",
            Body::Attested(_) => "attested",
            Body::ArtifactInstalled(_) => "installed",
            Body::GateOpened(_) => "opened",
            Body::GateClosed(_) => "closed",
            Body::GateContained(_) => "contained",
            Body::GateRevoked(_) => "revoked",
            Body::GateRestored(_) => "restored",
            Body::Decision(_) => "decision",
            Body::Drift(_) => "drift",
            Body::HeartbeatLapse(_) => "lapse",
            Body::ControlReceived(_) => "control",
            Body::Checkpoint(_) => "checkpoint",
        })
        .collect()
}

/// The fleet heartbeat topic.
pub const HEARTBEAT_TOPIC: &str = "mctc/v1/fleet/heartbeat";

/// An observer of the fleet heartbeat, connected (and subscribed) before
/// the device under test starts.
pub fn heartbeat_watch(fleet: &Fleet, client_id: &str) -> MqttClient {
    MqttClient::connect(
        &fleet.broker,
        mctc_tests::OBSERVER,
        client_id,
        &[HEARTBEAT_TOPIC],
    )
}

/// Waits until `device` is connected to the broker and two fleet heartbeats
/// went out after that: the window in which a healthy agent has attested
/// and opened (a round takes a few hundred ms, heartbeats come every
/// second). Tests that prove a gate stays closed ask it after this event.
pub fn connected_for_two_heartbeats(device: &Device, watch: &MqttClient) {
    let connected = mctc_tests::wait_until(PATIENCE, || device.status()["connected"] == true);
    assert!(connected.is_some(), "never connected: {}", device.status());
    let since = std::time::Instant::now();
    let beats = mctc_tests::wait_until(PATIENCE, || {
        watch
            .stamped()
            .iter()
            .filter(|(at, (topic, _, _))| *at > since && topic == HEARTBEAT_TOPIC)
            .count()
            >= 2
    });
    assert!(beats.is_some(), "no two heartbeats after connecting");
}

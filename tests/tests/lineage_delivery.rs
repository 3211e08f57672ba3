//! Lineage from the real agent to the real collector, end to end: an agent
//! restarted behind the collector's head still drains its backlog.
//!
//! Two faults that used to be provoked here too are proven by the chaos
//! suite (`cargo xtask chaos`, a step of `cargo xtask test`), which checks
//! every permit it was answered against the device's log and the
//! collector: the collector down during a burst (row "collector down long
//! (backlog, quota)": backlog, the deny at the quota, the drain, every
//! permit delivered once with no anomaly) and the agent killed in a burst
//! (row "agent SIGKILL during bursts" and the crash loop's 100 to 1000
//! kills at seeded random moments).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use std::path::Path;

use mctc_collector::store::Store;
use mctc_collector::store::sqlite::SqliteStore;
use mctc_shim::lineage::{Body, Record, VerdictCode};
use mctc_shim::{DeviceId, Message};
use mctc_tests::fleet::{Burst, Device, Fleet, PATIENCE, wait_all_acked};
use mctc_tests::wait_until;

/// Checks at the collector's database: the stored chain reaches `through`,
/// every answered permit is stored as that permit, no anomaly was raised.
fn check_collector(db: &Path, device: &Device, through: u64, permits: &[(u64, String)]) {
    let store = SqliteStore::open(db).unwrap();
    let id = DeviceId::new(&device.id).unwrap();
    let head = store
        .head(&id)
        .unwrap()
        .expect("the device has a stored chain");
    assert!(
        head.next_seq > through,
        "collector head {} ≤ {through}",
        head.next_seq
    );
    for (seq, reference) in permits {
        let bytes = store.record(&id, *seq).unwrap().unwrap_or_else(|| {
            panic!("permit at seq {seq} ({reference}) never reached the collector")
        });
        let record = Record::decode(&bytes).unwrap();
        match record.body {
            Body::Decision(d) => {
                assert_eq!(d.verdict, VerdictCode::Permit, "seq {seq}");
                assert_eq!(
                    d.reference.map(|r| r.0),
                    Some(reference.as_str()),
                    "seq {seq}"
                );
            }
            other => panic!("seq {seq} holds {other:?}, not the permit answered"),
        }
    }
    let anomalies = store.anomalies(Some(&id)).unwrap();
    assert!(anomalies.is_empty(), "anomalies: {anomalies:?}");
}

/// The acknowledged seq is persisted lazily; a crash can leave it behind
/// what the collector holds. After the restart the collector's acks are
/// beyond anything this run of the agent sent: the agent must still make
/// progress (believing each ack up to what it resent) instead of waiting for
/// an ack it will never believe. Owns the fault "agent restarted behind the
/// collector's head" (`xtask/src/chaos/owners.rs`).
#[test]
fn a_restart_behind_the_collectors_head_still_drains_the_backlog() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    fleet.start_collector();
    let mut device = fleet.device("deliver-3", "locker");
    device.bring_up();
    // More than the forwarder's window (8 batches of 64) ahead of the
    // persisted ack, so a resend cannot reach the collector's head at once.
    let burst = Burst::start(&device, 8);
    assert!(wait_until(PATIENCE, || burst.count() >= 1000).is_some());
    let permits = burst.stop();
    wait_all_acked(&fleet, &device);

    device.kill();
    // What a crash between receiving acks and persisting them leaves.
    std::fs::write(device.state_dir().join("lineage-acked"), "1\n").unwrap();
    device.start();
    device.wait_open();
    let through = wait_all_acked(&fleet, &device);
    check_collector(
        &fleet.dir.path().join("collector.db"),
        &device,
        through,
        &permits,
    );
}

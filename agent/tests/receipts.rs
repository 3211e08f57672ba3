//! Lineage receipts end to end (issue 13, parts 3 and 4), against the real
//! broker, authority, collector and agent. The shipped broker no longer lets
//! a device write its own `lineage/ack` topic; the receipts are the second
//! line, tested here with the one identity that may write there (the
//! collector's broker certificate, without the collector's receipt key):
//!
//! - receipts by another key, for another device, for a record the
//!   collector does not hold, or replayed, change nothing and are counted;
//! - a bundle cut or thinned below its receipt fails `mctc-collector
//!   verify` at the first missing seq, and the collector's own export
//!   verifies.
//!
//! Acks forged while the collector is down (nothing pruned, the deny at the
//! quota, every record collected) are the chaos row "forged lineage acks
//! (no receipt key), collector down", which owns that fault
//! (`xtask/src/chaos/owners.rs`) and makes this file's former assertions
//! too: a forged receipt naming a real checkpoint by its true hash, every
//! receipt counted, pruning again on the genuine receipts, no anomaly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Device, Fleet, MqttClient, run};
use mctc_agent::lineage::bundle::Bundle;
use mctc_agent::lineage::store::read_range;
use mctc_shim::lineage::record_hash;
use mctc_shim::wire::{Bytes, Version};
use mctc_shim::{DeviceId, Receipt, RingCrypto, RingSigner, Signer};
use mctc_tests::wait_until;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::Value;

/// The collector's receipt key, as the fleet generated it.
struct KeyFile(Ed25519KeyPair);

impl Signer for KeyFile {
    fn public_key(&self) -> [u8; 32] {
        self.0.public_key().as_ref().try_into().unwrap()
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], mctc_shim::Error> {
        Ok(self.0.sign(message).as_ref().try_into().unwrap())
    }
}

fn collector_signer(fleet: &Fleet) -> KeyFile {
    let path = fleet.dir.path().join("keys").join("receipt.key");
    KeyFile(mctc_service::keys::read_signing_key(&path).unwrap())
}

fn ack_topic(device: &Device) -> String {
    format!("mctc/v1/dev/{}/lineage/ack", device.id)
}

/// A receipt for `seq` with `hash`, signed by `signer`.
fn receipt(
    signer: &dyn Signer,
    device: &str,
    seq: u64,
    hash: [u8; 32],
    checkpoint: Option<u64>,
) -> Vec<u8> {
    let r = Receipt {
        v: Version::CURRENT,
        device: DeviceId::new(device).unwrap(),
        seq,
        hash: Bytes(hash),
        time_ms: 1_764_000_000_000,
        checkpoint,
        anomaly: None,
        at_seq: None,
        log_checkpoint: None,
        inclusion_proof: None,
    };
    let mut buf = [0u8; 2048];
    r.sign(signer, &RingCrypto, &mut buf).unwrap().to_vec()
}

/// The device's durable records from `from`.
fn records(device: &Device, from: u64) -> Vec<(u64, Vec<u8>)> {
    read_range(
        &device.lineage_dir(),
        from,
        u64::MAX,
        usize::MAX,
        usize::MAX,
    )
    .unwrap()
    .into_iter()
    .map(|f| (f.seq, f.payload))
    .collect()
}

fn first_on_disk(device: &Device) -> u64 {
    records(device, 0).first().unwrap().0
}

fn lineage(device: &Device) -> Value {
    device.status()["lineage"].clone()
}

fn rejected(device: &Device) -> u64 {
    lineage(device)["rejected_receipts"].as_u64().unwrap()
}

/// Owns the fault "receipts by another key, for another device, for a
/// record not held" (`xtask/src/chaos/owners.rs`).
#[test]
fn receipts_by_another_key_for_another_device_or_a_record_the_collector_does_not_hold_change_nothing()
 {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    fleet.start_collector();
    let mut device = fleet.device("foreign-1", "locker");
    device.bring_up();
    // A genuine receipt first, captured as the device receives it.
    let spy = MqttClient::connect(
        &fleet.broker,
        mctc_tests::OBSERVER,
        "foreign-1-spy",
        &[&ack_topic(&device)],
    );
    for i in 0..20 {
        assert!(device.permits(), "permit {i}");
    }
    let checkpoint = device
        .request(&serde_json::json!({"checkpoint": {}}))
        .unwrap()["checkpoint"]
        .as_u64()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            lineage(&device)["pruned_through"]
                .as_u64()
                .is_some_and(|p| p >= checkpoint)
        })
        .is_some(),
        "{}",
        device.status()
    );
    let genuine_early = spy
        .received_on(&ack_topic(&device))
        .into_iter()
        .find(|p| p.first() == Some(&0xd2))
        .unwrap();
    // Everything is receipted and the device is idle: no genuine receipt
    // comes until it writes again.
    let next = lineage(&device)["next_seq"].as_u64().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            lineage(&device)["acked_seq"].as_u64() == Some(next - 1)
        })
        .is_some(),
        "{}",
        device.status()
    );
    let before = lineage(&device);
    let before_rejected = rejected(&device);
    let first = first_on_disk(&device);

    let collector = collector_signer(&fleet);
    let rogue = RingSigner::from_seed(&[0x66; 32]).unwrap();
    let seq = next - 1;
    let own = records(&device, seq - 1);
    let hash = record_hash(&RingCrypto, &own[1].1);
    let other_hash = record_hash(&RingCrypto, &own[0].1);
    let attempts = [
        // Another key, the right device, seq and hash.
        receipt(&rogue, &device.id, seq, hash, Some(checkpoint)),
        // The collector's key, another device.
        receipt(&collector, "foreign-2", seq, hash, Some(checkpoint)),
        // The collector's key, a seq the device never wrote (so neither
        // sent nor held).
        receipt(&collector, &device.id, next + 1_000, hash, Some(checkpoint)),
        // The collector's key, a seq the device sent but another record
        // than the device's.
        receipt(&collector, &device.id, seq, other_hash, Some(checkpoint)),
        // The authority's word is not a collector's: a registry record.
        std::fs::read(device.state_dir().join("registry.cose")).unwrap(),
        // A genuine but old receipt, replayed.
        genuine_early,
    ];
    let forger = MqttClient::connect(&fleet.broker, "mctc-collector", "foreign-1-forger", &[]);
    for attempt in &attempts {
        forger.publish(&ack_topic(&device), attempt, false);
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            rejected(&device) >= before_rejected + attempts.len() as u64
        })
        .is_some(),
        "rejected {} of {}",
        rejected(&device) - before_rejected,
        attempts.len()
    );
    let after = lineage(&device);
    assert_eq!(after["acked_seq"], before["acked_seq"], "{after}");
    assert_eq!(after["pruned_through"], before["pruned_through"], "{after}");
    assert_eq!(first_on_disk(&device), first, "nothing more pruned");
    let log = device.log();
    for reason in ["unverified", "not-sent", "hash-mismatch", "stale"] {
        assert!(log.contains(reason), "no {reason} rejection logged");
    }

    // Still receipting: new records get a genuine receipt and are pruned
    // through their checkpoint.
    assert!(device.permits());
    let checkpoint = device
        .request(&serde_json::json!({"checkpoint": {}}))
        .unwrap()["checkpoint"]
        .as_u64()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            lineage(&device)["pruned_through"].as_u64() == Some(checkpoint)
        })
        .is_some(),
        "a genuine receipt was not accepted: {}",
        device.status()
    );
    assert_eq!(rejected(&device), before_rejected + attempts.len() as u64);
}

fn verify(fleet: &Fleet, bundle: &Path) -> common::Output {
    run(
        "mctc-collector",
        &[
            "verify",
            bundle.to_str().unwrap(),
            "--authority-key",
            fleet.authority_pub.to_str().unwrap(),
            "--collector-key",
            fleet.collector_pub.to_str().unwrap(),
        ],
    )
}

/// The seq of the receipt the agent persisted.
fn persisted_receipt_seq(fleet: &Fleet, device: &Device) -> Option<u64> {
    let bytes = std::fs::read(device.state_dir().join("lineage-receipt")).ok()?;
    let key = mctc_service::keys::read_public_key(&fleet.collector_pub).unwrap();
    let verified = mctc_shim::verify_receipt(
        &bytes,
        &[mctc_shim::CollectorKey::new(&RingCrypto, key)],
        &RingCrypto,
        &DeviceId::new(&device.id).unwrap(),
    )
    .ok()?;
    Some(verified.receipt().seq)
}

fn rewrite(bundle: &Bundle, from_seq: u64, records: Vec<Vec<u8>>, path: &Path) {
    let cut = Bundle {
        from_seq,
        head: record_hash(&RingCrypto, records.last().unwrap()),
        records,
        ..bundle.clone()
    };
    std::fs::write(path, cut.encode()).unwrap();
}

/// Owns the fault "bundle cut or thinned below its receipt"
/// (`xtask/src/chaos/owners.rs`).
#[test]
fn bundles_cut_or_thinned_below_their_receipt_fail_and_the_collectors_export_verifies() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    fleet.start_collector();
    let mut device = fleet.device("bundle-1", "locker");
    device.bring_up();
    for _ in 0..3 {
        for _ in 0..10 {
            assert!(device.permits());
        }
        device
            .request(&serde_json::json!({"checkpoint": {}}))
            .unwrap();
    }
    // Wait for the receipt of everything so far to be persisted.
    let next = lineage(&device)["next_seq"].as_u64().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            persisted_receipt_seq(&fleet, &device).is_some_and(|seq| seq + 1 >= next)
        })
        .is_some(),
        "{}",
        device.status()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.bundle");
    let out = device.cli(&["lineage", "export", "--out", path.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let ok = verify(&fleet, &path);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("complete through seq"), "{ok:?}");
    let bundle = Bundle::parse(&std::fs::read(&path).unwrap()).unwrap();
    assert!(bundle.receipt.is_some(), "the export carries the receipt");
    let receipt_seq = mctc_shim::verify_receipt(
        bundle.receipt.as_ref().unwrap(),
        &[mctc_shim::CollectorKey::new(
            &RingCrypto,
            mctc_service::keys::read_public_key(&fleet.collector_pub).unwrap(),
        )],
        &RingCrypto,
        &DeviceId::new(&device.id).unwrap(),
    )
    .unwrap()
    .receipt()
    .seq;
    assert!(receipt_seq > bundle.from_seq + 3, "receipt {receipt_seq}");

    // Cut after an earlier checkpoint (the unsigned header recomputed):
    // authentic, so it passes without the collector's key, but with it the
    // cut is found at the first missing seq.
    let index = |seq: u64| (seq - bundle.from_seq) as usize;
    let earlier = bundle.records[..index(receipt_seq)]
        .iter()
        .rposition(|r| {
            matches!(
                common::record(r).body,
                mctc_shim::lineage::Body::Checkpoint(_)
            )
        })
        .unwrap();
    let cut_path = dir.path().join("cut.bundle");
    rewrite(
        &bundle,
        bundle.from_seq,
        bundle.records[..=earlier].to_vec(),
        &cut_path,
    );
    let without_key = run(
        "mctc-collector",
        &[
            "verify",
            cut_path.to_str().unwrap(),
            "--authority-key",
            fleet.authority_pub.to_str().unwrap(),
        ],
    );
    assert_eq!(without_key.code, 0, "{without_key:?}");
    assert!(without_key.stdout.contains("completeness not checked"));
    let cut = verify(&fleet, &cut_path);
    assert_eq!(cut.code, 1, "{cut:?}");
    let first_missing = bundle.from_seq + earlier as u64 + 1;
    assert!(
        cut.stderr
            .contains(&format!("at seq {first_missing}: truncated")),
        "{cut:?}"
    );
    assert_eq!(cut.stderr.lines().count(), 1, "one line: {cut:?}");

    // A record missing before the receipt: fails at that seq.
    let mut thinned = bundle.records.clone();
    let gone = index(receipt_seq) / 2;
    thinned.remove(gone);
    let thin_path = dir.path().join("thin.bundle");
    rewrite(&bundle, bundle.from_seq, thinned, &thin_path);
    let thin = verify(&fleet, &thin_path);
    assert_eq!(thin.code, 1, "{thin:?}");
    let missing = bundle.from_seq + gone as u64;
    assert!(
        thin.stderr.contains(&format!("at seq {missing}: gap")),
        "{thin:?}"
    );

    // The collector's own export, with a fresh receipt, verifies; cut, it
    // fails like the device's.
    let from_collector = dir.path().join("collector.bundle");
    let export = run(
        "mctc-collector",
        &[
            "export",
            &device.id,
            "--config",
            &fleet.collector_config(),
            "--out",
            from_collector.to_str().unwrap(),
        ],
    );
    assert_eq!(export.code, 0, "{export:?}");
    let verified = verify(&fleet, &from_collector);
    assert_eq!(verified.code, 0, "{verified:?}");
    assert!(verified.stdout.contains("0 unacknowledged"), "{verified:?}");
    let held = Bundle::parse(&std::fs::read(&from_collector).unwrap()).unwrap();
    rewrite(&held, 0, held.records[..3].to_vec(), &cut_path);
    assert_eq!(verify(&fleet, &cut_path).code, 1);
    // A device the collector holds nothing of: exit 1, one line.
    let none = run(
        "mctc-collector",
        &[
            "export",
            "nobody-1",
            "--config",
            &fleet.collector_config(),
            "--out",
            dir.path().join("none.bundle").to_str().unwrap(),
        ],
    );
    assert_eq!(none.code, 1, "{none:?}");
}

/// Owns the fault "damaged or foreign receipt file in the state
/// directory" (`xtask/src/chaos/owners.rs`); it stops the collector only so
/// that no new receipt replaces the persisted one.
#[test]
fn the_latest_receipt_survives_a_restart_and_a_damaged_one_is_ignored() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    fleet.start_collector();
    let mut device = fleet.device("durable-1", "locker");
    device.bring_up();
    for _ in 0..10 {
        assert!(device.permits());
    }
    let checkpoint = device
        .request(&serde_json::json!({"checkpoint": {}}))
        .unwrap()["checkpoint"]
        .as_u64()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            lineage(&device)["pruned_through"]
                .as_u64()
                .is_some_and(|p| p >= checkpoint)
        })
        .is_some(),
        "{}",
        device.status()
    );
    // No collector from here on: whatever the agent knows after the
    // restart, it knows from its own state directory.
    fleet.kill_collector();
    let before = lineage(&device);
    let stored = persisted_receipt_seq(&fleet, &device);
    assert_eq!(device.stop().code(), Some(0));
    let after_stop = persisted_receipt_seq(&fleet, &device);
    assert!(after_stop >= stored && after_stop.is_some());
    device.start();
    let after = lineage(&device);
    assert_eq!(after["acked_seq"].as_u64(), after_stop, "{after}");
    assert_eq!(after["pruned_through"], before["pruned_through"], "{after}");

    // A damaged receipt file is ignored (logged), never trusted.
    device.stop();
    let file = device.state_dir().join("lineage-receipt");
    let genuine = std::fs::read(&file).unwrap();
    let mut bytes = genuine.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    device.start();
    let damaged = lineage(&device);
    assert_eq!(damaged["acked_seq"], Value::Null, "{damaged}");
    assert_eq!(damaged["pruned_through"], Value::Null, "{damaged}");
    assert!(
        device
            .log()
            .contains("the stored lineage receipt does not verify")
    );

    // A genuine receipt of another chain (the lineage directory moved aside
    // to start anew) is not about this log: not trusted, nothing of the new
    // chain skipped or pruned.
    device.stop();
    std::fs::write(&file, &genuine).unwrap();
    std::fs::rename(device.lineage_dir(), device.state_dir().join("lineage.old")).unwrap();
    device.start();
    let fresh = lineage(&device);
    assert_eq!(fresh["acked_seq"], Value::Null, "{fresh}");
    assert_eq!(fresh["pruned_through"], Value::Null, "{fresh}");
    assert!(
        device
            .log()
            .contains("the stored lineage receipt is not about this log")
    );
    assert_eq!(first_on_disk(&device), 0);
}

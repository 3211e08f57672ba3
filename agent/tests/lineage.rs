#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]
//! The device side of lineage with the real agent: damage detection,
//! forwarding to the real collector, export.
//!
//! Each fault is provoked once per `cargo xtask test`
//! (`xtask/src/chaos/owners.rs`): the chaos rows "agent SIGKILL during
//! bursts" (and the crash loop) and "collector down long (backlog, quota)"
//! own the SIGKILL in a burst and the quota, with the assertions these
//! tests used to make (each permit recorded with its request's `ref`,
//! nothing pruned without an ack, pruning and the receipt after the
//! drain).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{DeviceLineage, Fleet, record};
use mctc_agent::lineage::bundle::Bundle;
use mctc_shim::lineage::Body;
use mctc_tests::wait_until;

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    found.sort();
    found
}

/// Permits answered to the clients: (seq, ref).
type Answered = Arc<Mutex<Vec<(u64, String)>>>;

/// `clients` threads asking for `unlock` until `stop`; every permit
/// answered is collected.
fn burst(
    device: &common::Device,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> (Vec<std::thread::JoinHandle<()>>, Answered) {
    let permits = Arc::new(Mutex::new(Vec::new()));
    let threads = (0..clients)
        .map(|c| {
            let socket = device.socket.clone();
            let stop = Arc::clone(stop);
            let permits = Arc::clone(&permits);
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let reference = format!("c{c}-{i}");
                    i += 1;
                    let request =
                        serde_json::json!({"authorize": {"op": "unlock", "ref": reference}});
                    let Ok(answer) = mctc_agent::socket::request::<serde_json::Value>(
                        &socket,
                        &request,
                        Duration::from_secs(5),
                    ) else {
                        // Pace of a client whose connection failed (the
                        // socket is busy), not synchronisation.
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    if answer["decision"] == "permit" {
                        permits
                            .lock()
                            .unwrap()
                            .push((answer["seq"].as_u64().unwrap(), reference));
                    }
                }
            })
        })
        .collect();
    (threads, permits)
}

/// Owns the fault "torn final lineage record" (`xtask/src/chaos/owners.rs`).
#[test]
fn a_torn_final_record_is_cut_and_the_chain_continues() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    let mut device = fleet.device("torn-1", "locker");
    device.bring_up();
    for i in 0..20 {
        assert!(
            device.authorize("unlock", None, None, Some(&format!("r{i}")))["decision"] == "permit"
        );
    }
    device.kill();
    let before = device.lineage().len();
    // A crash in the middle of the next group-commit write: a frame header
    // promising 180 bytes, and only some of them.
    let last = segments(&device.lineage_dir()).pop().unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    file.write_all(&180u32.to_le_bytes()).unwrap();
    file.write_all(&[0xab; 4 + 8 + 50]).unwrap();
    drop(file);

    device.start();
    device.wait_open();
    assert_eq!(device.status()["lineage"]["health"], "ok");
    assert!(device.log().contains("torn tail"), "{}", device.log());
    let answer = device.authorize("unlock", None, None, Some("after"));
    assert_eq!(answer["decision"], "permit");
    assert!(answer["seq"].as_u64().unwrap() >= before as u64);
    assert!(device.stop().success());
    let records = device.lineage();
    assert!(records.len() > before + 3);
}

/// Owns the fault "corrupted lineage record in an older segment"
/// (`xtask/src/chaos/owners.rs`).
#[test]
fn a_corrupted_middle_record_is_reported_and_the_gate_stays_closed() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    let mut device = fleet.device_with(
        "rot-1",
        "locker",
        "[lineage]\nsegment_bytes = 8192\nquota_bytes = 16777216\n",
    );
    device.bring_up();
    for i in 0..200 {
        device.authorize("unlock", None, None, Some(&format!("r{i}")));
    }
    assert!(device.stop().success());
    let all = segments(&device.lineage_dir());
    assert!(all.len() >= 3, "{all:?}");
    // Flip one payload byte of a record in an older segment.
    let victim = &all[1];
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[16 + 16 + 40] ^= 0x20;
    std::fs::write(victim, &bytes).unwrap();

    let heartbeats = common::heartbeat_watch(&fleet, "corrupt-hb");
    device.start();
    let status = device.status();
    assert_eq!(status["lineage"]["health"], "failed", "{status}");
    let error = status["lineage"]["error"].as_str().unwrap();
    assert!(error.contains("corrupt"), "{error}");
    // Reported, never skipped: and nothing can open the gate, however long
    // a round would take.
    common::connected_for_two_heartbeats(&device, &heartbeats);
    let status = device.status();
    assert_ne!(status["state"], "open", "{status}");
    let answer = device.authorize("unlock", None, None, None);
    assert_eq!(answer["decision"], "deny", "{answer}");
    assert_eq!(
        std::fs::read(victim).unwrap(),
        bytes,
        "damaged data left as found"
    );
}

#[test]
fn an_exported_bundle_ends_at_a_fresh_checkpoint_and_verifies_offline() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    let mut device = fleet.device("export-1", "locker");
    device.bring_up();
    for i in 0..30 {
        device.authorize("unlock", None, None, Some(&format!("e{i}")));
    }
    let out_dir = tempfile::tempdir().unwrap();
    let bundle_path = out_dir.path().join("export-1.bundle");
    let bundle = bundle_path.to_str().unwrap().to_owned();

    // The device received its own signed registry record (retained on
    // registry/{id}, readable by the device under the broker ACL), so the
    // export needs nothing from the fleet side.
    let last_answer = device.authorize("unlock", None, None, Some("last"));
    let out = device.cli(&["lineage", "export", "--out", &bundle]);
    assert_eq!(out.code, 0, "{out:?}");

    let parsed = Bundle::parse(&std::fs::read(&bundle_path).unwrap()).unwrap();
    assert_eq!(parsed.device, "export-1");
    assert_eq!(parsed.from_seq, 0);
    let last = record(parsed.records.last().unwrap());
    assert!(
        matches!(last.body, Body::Checkpoint(_)),
        "ends at a checkpoint"
    );
    assert!(
        last.seq > last_answer["seq"].as_u64().unwrap(),
        "the running agent checkpointed for the export"
    );

    let verify = common::run(
        "mctc-collector",
        &[
            "verify",
            &bundle,
            "--authority-key",
            fleet.authority_pub.to_str().unwrap(),
        ],
    );
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(verify.stdout.starts_with("OK export-1"), "{verify:?}");

    // One flipped byte in a record fails verification.
    let mut damaged = std::fs::read(&bundle_path).unwrap();
    let at = damaged.len() - 400;
    damaged[at] ^= 0x01;
    let damaged_path = out_dir.path().join("damaged.bundle");
    std::fs::write(&damaged_path, damaged).unwrap();
    let verify = common::run(
        "mctc-collector",
        &[
            "verify",
            damaged_path.to_str().unwrap(),
            "--authority-key",
            fleet.authority_pub.to_str().unwrap(),
        ],
    );
    assert_eq!(verify.code, 1, "{verify:?}");
}

#[test]
fn ten_thousand_decisions_reach_the_collector_and_the_store_is_pruned() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    fleet.start_collector();
    let mut device = fleet.device_with("many-1", "locker", "[lineage]\nsegment_bytes = 65536\n");
    device.bring_up();

    let stop = Arc::new(AtomicBool::new(false));
    let (threads, permits) = burst(&device, 16, &stop);
    let started = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(120), || permits.lock().unwrap().len()
            >= 10_000)
        .is_some(),
        "10 000 permits not reached"
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = started.elapsed();
    // A checkpoint now, so the collector's receipt covers everything: the
    // agent prunes only what a verified checkpoint covers.
    let checkpoint = device
        .request(&serde_json::json!({"checkpoint": {}}))
        .unwrap()["checkpoint"]
        .as_u64()
        .unwrap();
    let last = device.status()["lineage"]["next_seq"].as_u64().unwrap() - 1;
    let drained = wait_until(Duration::from_secs(120), || {
        let status = device.status();
        status["lineage"]["acked_seq"]
            .as_u64()
            .is_some_and(|acked| acked >= last)
            && status["lineage"]["pruned_through"]
                .as_u64()
                .is_some_and(|pruned| pruned >= checkpoint)
    });
    assert!(
        drained.is_some(),
        "{}\n--- collector ---\n{}",
        device.status(),
        fleet.collector_log()
    );
    let status = device.status();
    assert_eq!(
        status["lineage"]["anomaly"],
        serde_json::Value::Null,
        "{status}"
    );
    // Acknowledged segments are gone (the writer prunes right after the
    // receipt is persisted); what is left starts late in the chain.
    let oldest = || {
        segments(&device.lineage_dir())
            .first()
            .map(|p| {
                p.file_stem()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            })
            .unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(10), || oldest() > 9_000).is_some(),
        "oldest segment starts at {}",
        oldest()
    );
    eprintln!(
        "{} permits in {elapsed:?}, acknowledged through {last} after {:?} more",
        permits.lock().unwrap().len(),
        drained.unwrap()
    );
}

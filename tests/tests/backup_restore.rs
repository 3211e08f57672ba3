//! Backup and restore of the authority, end to end with the real binaries,
//! swtpm and Mosquitto: a restore never hands a device a sequence number at
//! or below one it has seen (authority/README.md, "Backup and restore"),
//! even when the same backup is restored twice; a plain file copy does, and
//! the device refuses every heartbeat of the restored authority.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use mctc_tests::fleet::{Device, Fleet, PATIENCE};
use mctc_tests::wait_until;

/// The last heartbeat seq the device accepted.
fn hb_seq(device: &Device) -> u64 {
    device.status()["heartbeat_seq"].as_u64().unwrap_or(0)
}

/// Waits until the device accepted a heartbeat above `above` and its gate
/// is open.
fn wait_accepted_above(fleet: &Fleet, device: &Device, above: u64) {
    let ok = wait_until(PATIENCE, || {
        hb_seq(device) > above && device.state() == "open"
    });
    assert!(
        ok.is_some(),
        "device did not accept a heartbeat above {above} with its gate open: {}\n--- agent ---\n{}\n--- authority ---\n{}",
        device.status(),
        device.log(),
        fleet.authority_log()
    );
}

fn restore(fleet: &Fleet, backup: &Path) -> serde_json::Value {
    let out = fleet.cli(&["restore", "--from", backup.to_str().unwrap(), "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    out.json()
}

#[test]
fn a_restored_authority_never_reuses_a_sequence_number_a_device_has_seen() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    let mut device = fleet.device("locker-1", "locker");
    device.bring_up();
    let backup = fleet.dir.path().join("authority.backup");
    let backup_str = backup.to_str().unwrap();

    // Online backup, private, never overwritten.
    let out = fleet.cli(&["backup", "--out", backup_str]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = fleet.cli(&["backup", "--out", backup_str]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("refusing to overwrite"), "{again:?}");
    let at_backup = hb_seq(&device);

    // The fleet runs on: the device sees higher heartbeat seqs than the
    // backup holds.
    wait_accepted_above(&fleet, &device, at_backup + 3);

    // Refused while the authority runs (its connection and lease).
    let refused = fleet.cli(&["restore", "--from", backup_str]);
    assert_eq!(refused.code, 1, "{refused:?}");

    // First restore, after a crash: nobody has the file open, but the dead
    // instance's heartbeat lease has not run out (another host sharing the
    // store could be the holder): refused until it has.
    fleet.kill_authority();
    let seen = hb_seq(&device);
    let leased = fleet.cli(&["restore", "--from", backup_str]);
    assert_eq!(leased.code, 1, "{leased:?}");
    assert!(leased.stderr.contains("heartbeat lease"), "{leased:?}");
    let mut first = serde_json::Value::Null;
    let restored = wait_until(PATIENCE, || {
        let out = fleet.cli(&["restore", "--from", backup_str, "--json"]);
        if out.code == 0 {
            first = out.json();
        }
        out.code == 0
    });
    assert!(restored.is_some(), "the lease never ran out");
    let floor1 = first["seq_floor"].as_u64().unwrap();
    assert!(floor1 > seen, "floor {floor1} ≤ seen {seen}");
    assert!(first["backup_max_seq"].as_u64().unwrap() <= seen);
    fleet.start_authority();
    wait_accepted_above(&fleet, &device, floor1);
    assert!(device.permits(), "{}", device.status());

    // The same backup again: the floor moves on past the first restore's
    // seqs.
    fleet.stop_authority();
    let seen = hb_seq(&device);
    let second = restore(&fleet, &backup);
    let floor2 = second["seq_floor"].as_u64().unwrap();
    assert!(floor2 > seen, "floor {floor2} ≤ seen {seen}");
    fleet.start_authority();
    wait_accepted_above(&fleet, &device, floor2);
    assert!(device.permits(), "{}", device.status());

    // A control after the restore reaches the device (its control seq is
    // past the one the device holds from before): contain, then restore.
    let out = fleet.cli(&[
        "devices",
        "contain",
        "locker-1",
        "--reason",
        "after restore",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        device.wait_state("contained", PATIENCE).is_some(),
        "{}",
        device.status()
    );
    assert!(!device.permits());
    let out = fleet.cli(&["devices", "restore", "locker-1"]);
    assert_eq!(out.code, 0, "{out:?}");
    device.wait_open();

    // The bug this fixes: the same backup copied in as a file. The
    // authority counts on from the backup's seqs, far below what the
    // device has seen: every heartbeat is a replay to it, and its gate
    // closes when the window runs out.
    fleet.stop_authority();
    let seen = hb_seq(&device);
    let db = fleet.dir.path().join("authority.db");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::copy(&backup, &db).unwrap();
    let log_before = device.log().len();
    fleet.start_authority();
    let refused = wait_until(PATIENCE, || {
        device.log().get(log_before..).is_some_and(|new| {
            new.lines()
                .filter(|l| l.contains("heartbeat not applied") && l.contains("replay"))
                .count()
                >= 2
        })
    });
    assert!(
        refused.is_some(),
        "the device did not refuse the rolled-back heartbeats:\n{}",
        device.log().get(log_before..).unwrap_or_default()
    );
    let closed = wait_until(PATIENCE, || device.state() != "open");
    assert!(
        closed.is_some(),
        "the device kept its gate open on replayed heartbeats: {}",
        device.status()
    );
    assert_eq!(
        hb_seq(&device),
        seen,
        "the device accepted a rolled-back heartbeat seq"
    );
    // And it stays refused: none of the naive authority's heartbeats counts.
    let reopened = wait_until(Duration::from_secs(5), || hb_seq(&device) > seen);
    assert!(reopened.is_none(), "{}", device.status());
}

/// The collector's backup and restore: an online copy, refused while the
/// collector runs, installed once it is stopped. The collector issues no
/// number a device must see grow; what a restore loses (lineage received
/// after the backup) shows as a `gap` anomaly at the restored head, and no
/// device takes back a receipt (its acknowledged seq never goes down).
#[test]
fn a_restored_collector_tells_no_device_a_lower_seq_and_reports_the_lost_lineage_as_a_gap() {
    use mctc_collector::store::sqlite::SqliteStore;
    use mctc_collector::store::{AnomalyKind, Store};
    use mctc_shim::DeviceId;
    use mctc_tests::fleet::{run, wait_all_acked};

    let mut fleet = Fleet::new();
    fleet.start_authority();
    fleet.start_collector();
    let mut device = fleet.device("locker-2", "locker");
    device.bring_up();
    let at_backup = wait_all_acked(&fleet, &device);
    let config = fleet.collector_config();
    let backup = fleet.dir.path().join("collector.backup");
    let backup_str = backup.to_str().unwrap();
    let out = run(
        "mctc-collector",
        &["backup", "--config", &config, "--out", backup_str],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = run(
        "mctc-collector",
        &["backup", "--config", &config, "--out", backup_str],
    );
    assert_eq!(again.code, 1, "{again:?}");

    // More lineage, acknowledged past the backup.
    for _ in 0..5 {
        assert!(device.permits(), "{}", device.status());
    }
    let acked = wait_all_acked(&fleet, &device);
    assert!(acked > at_backup, "{acked} ≤ {at_backup}");

    let refused = run(
        "mctc-collector",
        &["restore", "--config", &config, "--from", backup_str],
    );
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("in use"), "{refused:?}");

    fleet.stop_collector();
    let out = run(
        "mctc-collector",
        &["restore", "--config", &config, "--from", backup_str],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let db = fleet.dir.path().join("collector.db");
    let id = DeviceId::new(&device.id).unwrap();
    let head = SqliteStore::open(&db).unwrap().head(&id).unwrap().unwrap();
    assert!(
        head.next_seq <= acked,
        "the restored store ends before what was acknowledged since ({} > {acked})",
        head.next_seq
    );
    fleet.start_collector();
    for _ in 0..3 {
        assert!(device.permits(), "{}", device.status());
    }
    // The lost lineage is reported, at the restored head, not hidden.
    let gap = wait_until(PATIENCE, || {
        SqliteStore::open(&db)
            .and_then(|s| s.anomalies(Some(&id)))
            .is_ok_and(|a| {
                a.iter()
                    .any(|a| a.kind == AnomalyKind::Gap && a.seq == Some(head.next_seq))
            })
    });
    assert!(
        gap.is_some(),
        "no gap anomaly at {}:\n{}",
        head.next_seq,
        fleet.collector_log()
    );
    // And the device keeps the receipt it had: nothing lower replaced it.
    let kept = device.status()["lineage"]["acked_seq"].as_u64().unwrap();
    assert!(kept >= acked, "acked seq went down: {kept} < {acked}");
    assert!(device.permits(), "{}", device.status());
}

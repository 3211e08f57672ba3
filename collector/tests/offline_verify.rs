//! `mctc-collector verify`: genuine bundles (swtpm quotes, authority-signed
//! registry record, the agent's bundle format) pass; every single-byte
//! change, truncation, dropped, duplicated or reordered record, and every
//! foreign or misdirected checkpoint fails with the right reason at the
//! right seq.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Authority, BundleBytes, Device, bundle, bundle_with};
use mctc_collector::verify::{Report, verify_bundle};
use mctc_shim::lineage::record_hash;
use mctc_shim::messages::DeviceStatus;
use mctc_shim::{AuthorityKey, RingCrypto};

fn keys(authority: &Authority) -> Vec<AuthorityKey> {
    let public = mctc_service::keys::read_public_key(&authority.key_path).unwrap();
    vec![AuthorityKey::new(&RingCrypto, public)]
}

/// Records 0..=5 with a checkpoint at 2 and 5 (a bundle ends at one).
async fn small_chain(id: &str) -> Device {
    let mut device = Device::new(id).await;
    device.decision(0);
    device.decision(1);
    device.checkpoint().await;
    device.decision(3);
    device.decision(4);
    device.checkpoint().await;
    device
}

/// A bundle of `records` whose header is consistent with them.
fn bundle_of(device: &Device, registry: &[u8], from_seq: u64, records: &[Vec<u8>]) -> BundleBytes {
    let head = record_hash(&RingCrypto, records.last().unwrap());
    bundle_with(
        &device.id,
        registry,
        &device.identity.ak_public,
        from_seq,
        &head,
        records,
    )
}

fn failure(report: &Report) -> (Option<u64>, &'static str) {
    let f = report.failure.as_ref().expect("a failure");
    assert!(!report.ok);
    (f.seq, f.reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genuine_bundle_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let mut device = small_chain("locker-1").await;
    device.decision(6);
    device.decision(7);
    device.checkpoint().await;
    let registry = authority.registry(&device, 3, DeviceStatus::Active);
    let b = bundle(&device, &registry, 0);
    let report = verify_bundle(&b.bytes, &keys(&authority), &[]);
    assert!(report.ok, "{report:?}");
    assert_eq!(report.records, 9);
    assert_eq!(report.checkpoints, 3);
    assert_eq!(report.last_seq, Some(8));
    assert_eq!(report.registry.as_ref().unwrap().version, 3);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_single_byte_change_and_every_truncation_fails_at_the_right_seq() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let device = small_chain("locker-1").await;
    let registry = authority.registry(&device, 1, DeviceStatus::Active);
    let b = bundle(&device, &registry, 0);
    let keys = keys(&authority);
    assert!(verify_bundle(&b.bytes, &keys, &[]).ok);
    let last = b.records.last().unwrap().0;

    let mut flips = 0;
    for i in 0..b.bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = b.bytes.clone();
            bad[i] ^= mask;
            let report = verify_bundle(&bad, &keys, &[]);
            assert!(!report.ok, "byte {i} ^ {mask:#04x} went unnoticed");
            let (seq, reason) = failure(&report);
            if let Some(&(k, _, _)) = b.records.iter().find(|(_, s, e)| (*s..*e).contains(&i)) {
                // A changed record fails at itself, or (if it still decodes
                // and links) at its successor's link, or (the last one) at
                // the header's head.
                assert!(
                    seq == Some(k) || seq == Some(k + 1),
                    "byte {i} of record {k}: reported {seq:?} {reason}"
                );
            } else {
                // Header bytes: the header's own checks, the chain's at the
                // first seq, the head at the last, or a changed count where
                // the records run out.
                assert!(
                    seq.is_none_or(|s| s <= last + 1),
                    "header byte {i}: reported {seq:?} {reason}"
                );
            }
            flips += 1;
        }
    }
    for len in 0..b.bytes.len() {
        let report = verify_bundle(&b.bytes[..len], &keys, &[]);
        assert!(!report.ok, "truncation to {len} bytes went unnoticed");
        if len >= b.records[0].1 {
            assert!(report.failure.unwrap().seq.is_some(), "truncation to {len}");
        }
    }
    eprintln!(
        "{flips} byte changes and {} truncations of a {}-byte bundle all rejected",
        b.bytes.len(),
        b.bytes.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_duplicated_and_reordered_records_fail_where_the_chain_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let device = small_chain("locker-1").await;
    let registry = authority.registry(&device, 1, DeviceStatus::Active);
    let keys = keys(&authority);
    let records = &device.records;
    let n = records.len();
    let head = record_hash(&RingCrypto, records.last().unwrap());
    // The header keeps naming the genuine head, as a tamperer who cannot
    // re-sign a checkpoint would leave it (a recomputed head fails too:
    // the last record must then be another checkpoint or the chain breaks).
    let with = |rs: Vec<Vec<u8>>| {
        let b = bundle_with(
            &device.id,
            &registry,
            &device.identity.ak_public,
            0,
            &head,
            &rs,
        );
        verify_bundle(&b.bytes, &keys, &[])
    };

    for k in 0..n {
        let mut rs = records.clone();
        rs.remove(k);
        let expected = if k == n - 1 {
            (Some(k as u64 - 1), "head_mismatch")
        } else {
            (Some(k as u64), "gap")
        };
        assert_eq!(failure(&with(rs)), expected, "dropping record {k}");
    }
    for k in 0..n - 1 {
        let mut rs = records.clone();
        rs.swap(k, k + 1);
        assert_eq!(failure(&with(rs)), (Some(k as u64), "gap"), "swapping {k}");
    }
    for k in 0..n {
        let mut rs = records.clone();
        rs.insert(k, records[k].clone());
        assert_eq!(
            failure(&with(rs)),
            (Some(k as u64), "duplicate"),
            "duplicating {k}"
        );
    }
    let mut rs = records.clone();
    rs.push(records[0].clone());
    assert_eq!(failure(&with(rs)).1, "reordered");
    // Dropping the tail and fixing up the header: the bundle no longer ends
    // at a checkpoint.
    let short = &records[..4];
    assert_eq!(
        failure(&verify_bundle(
            &bundle_of(&device, &registry, 0, short).bytes,
            &keys,
            &[]
        )),
        (Some(3), "unanchored")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_from_another_device_or_for_another_head_fail_at_that_seq() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let other = small_chain("locker-2").await;

    // 1. Another device's checkpoint record spliced in.
    let device = small_chain("locker-1").await;
    let registry = authority.registry(&device, 1, DeviceStatus::Active);
    let mut rs = device.records.clone();
    rs[2] = other.records[2].clone();
    let b = bundle_of(&device, &registry, 0, &rs);
    assert_eq!(
        failure(&verify_bundle(&b.bytes, &keys(&authority), &[])),
        (Some(2), "wrong_device")
    );

    // 2. This device's checkpoint carrying a quote by the other device's AK
    //    over exactly this device's qualifying data.
    let mut device = Device::new("locker-1").await;
    device.decision(0);
    device.decision(1);
    let (cp_seq, qualifying) = device.head_qualifying_data();
    let foreign = other.quote(qualifying).await;
    let head_hash = *device.head.head();
    device.checkpoint_with(cp_seq, head_hash, &foreign);
    device.decision(3);
    device.checkpoint().await;
    let registry = authority.registry(&device, 1, DeviceStatus::Active);
    let b = bundle(&device, &registry, 0);
    let report = verify_bundle(&b.bytes, &keys(&authority), &[]);
    assert_eq!(failure(&report), (Some(2), "bad_checkpoint"));
    assert!(
        report.failure.unwrap().detail.contains("signature"),
        "the quote's signature is what fails"
    );

    // 3. A checkpoint whose quote (by the right AK) commits to another head.
    let mut device = Device::new("locker-1").await;
    device.decision(0);
    device.decision(1);
    let (cp_seq, _) = device.head_qualifying_data();
    let elsewhere = device.quote(common::sha256(b"some other head")).await;
    let head_hash = *device.head.head();
    device.checkpoint_with(cp_seq, head_hash, &elsewhere);
    device.checkpoint().await;
    let registry = authority.registry(&device, 1, DeviceStatus::Active);
    let b = bundle(&device, &registry, 0);
    let report = verify_bundle(&b.bytes, &keys(&authority), &[]);
    assert_eq!(failure(&report), (Some(2), "bad_checkpoint"));
    assert!(report.failure.unwrap().detail.contains("qualifying data"));

    // 4. A checkpoint record that claims to commit to a record it does not
    //    follow (the shim's commitment check, before any quote).
    let mut device = Device::new("locker-1").await;
    device.decision(0);
    let quote = device.quote([0; 32]).await;
    device.checkpoint_with(0, [9; 32], &quote);
    device.checkpoint().await;
    let registry = authority.registry(&device, 1, DeviceStatus::Active);
    let b = bundle(&device, &registry, 0);
    assert_eq!(
        failure(&verify_bundle(&b.bytes, &keys(&authority), &[])),
        (Some(1), "bad_checkpoint")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_record_must_come_from_the_authority_and_name_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let impostor = Authority::new(dir.path(), 2);
    let device = small_chain("locker-1").await;
    let other = Device::new("locker-2").await;

    let forged = impostor.registry(&device, 1, DeviceStatus::Active);
    let b = bundle(&device, &forged, 0);
    assert_eq!(
        failure(&verify_bundle(&b.bytes, &keys(&authority), &[])),
        (None, "registry")
    );
    // Genuine, but for another device (whose AK did not sign these quotes).
    let misdirected = authority.registry(&other, 1, DeviceStatus::Active);
    let b = bundle(&device, &misdirected, 0);
    assert_eq!(
        failure(&verify_bundle(&b.bytes, &keys(&authority), &[])),
        (None, "registry")
    );
    // Genuine and for this device, but vouching for the other device's AK.
    let wrong_ak = authority.registry_for(&device.id, &other.identity, 1, DeviceStatus::Active);
    let b = bundle(&device, &wrong_ak, 0);
    assert_eq!(
        failure(&verify_bundle(&b.bytes, &keys(&authority), &[])),
        (None, "ak_mismatch")
    );
    // ... and a header that agrees with it: the quotes do not verify.
    let head = record_hash(&RingCrypto, device.records.last().unwrap());
    let b = bundle_with(
        &device.id,
        &wrong_ak,
        &other.identity.ak_public,
        0,
        &head,
        &device.records,
    );
    assert_eq!(
        failure(&verify_bundle(&b.bytes, &keys(&authority), &[])),
        (Some(2), "bad_checkpoint")
    );
    // A revoked device's lineage still verifies; the status is reported.
    let revoked = authority.registry(&device, 9, DeviceStatus::Revoked);
    let b = bundle(&device, &revoked, 0);
    let report = verify_bundle(&b.bytes, &keys(&authority), &[]);
    assert!(report.ok);
    assert_eq!(report.registry.unwrap().status, "revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_may_start_after_pruned_records_and_names_its_ak() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let device = small_chain("locker-1").await;
    let other = Device::new("locker-2").await;
    let registry = authority.registry(&device, 1, DeviceStatus::Active);
    let keys = keys(&authority);

    let tail = bundle(&device, &registry, 3);
    let report = verify_bundle(&tail.bytes, &keys, &[]);
    assert!(report.ok, "{report:?}");
    assert_eq!((report.from_seq, report.records), (Some(3), 3));

    // from_seq that does not match the first record.
    let wrong = bundle_of(&device, &registry, 2, &device.records[3..]);
    assert_eq!(
        failure(&verify_bundle(&wrong.bytes, &keys, &[])),
        (Some(2), "gap")
    );

    // The header's AK must be the registry record's.
    let head = record_hash(&RingCrypto, device.records.last().unwrap());
    let swapped = bundle_with(
        &device.id,
        &registry,
        &other.identity.ak_public,
        0,
        &head,
        &device.records,
    );
    assert_eq!(
        failure(&verify_bundle(&swapped.bytes, &keys, &[])),
        (None, "ak_mismatch")
    );
    // A header head that is not the last record's.
    let off = bundle_with(
        &device.id,
        &registry,
        &device.identity.ak_public,
        0,
        &[1; 32],
        &device.records,
    );
    assert_eq!(
        failure(&verify_bundle(&off.bytes, &keys, &[])),
        (Some(5), "head_mismatch")
    );
}

fn collector(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mctc-collector"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exits_0_1_or_2_with_one_line_and_json_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let device = small_chain("locker-1").await;
    let registry = authority.registry(&device, 1, DeviceStatus::Active);
    let b = bundle(&device, &registry, 0);
    let good = dir.path().join("good.bundle");
    std::fs::write(&good, &b.bytes).unwrap();
    let mut bytes = b.bytes.clone();
    let (_, start, _) = b.records[3];
    bytes[start + 12] ^= 0x01;
    let bad = dir.path().join("bad.bundle");
    std::fs::write(&bad, &bytes).unwrap();
    let key = path(&authority.key_path);

    let (code, out, err) = collector(&["verify", path(&good), "--authority-key", key]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("OK locker-1: 6 records (seq 0..=5), 2 checkpoints"),
        "{out}"
    );

    let (code, out, _) = collector(&["verify", path(&good), "--authority-key", key, "--json"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["checkpoints"], 2);

    let (code, _, err) = collector(&["verify", path(&bad), "--authority-key", key]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("FAILED locker-1 at seq "), "{err}");

    let (code, out, _) = collector(&["verify", path(&bad), "--authority-key", key, "--json"]);
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["ok"], false);
    assert!(json["failure"]["seq"].as_u64().is_some());

    let other = Authority::new(dir.path(), 2);
    let (code, _, err) = collector(&[
        "verify",
        path(&good),
        "--authority-key",
        path(&other.key_path),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("registry"), "{err}");

    // Usage and IO errors: exit 2, one line.
    for args in [
        vec!["verify", "/nonexistent.bundle", "--authority-key", key],
        vec!["verify", path(&good), "--authority-key", "/nonexistent.pub"],
        vec!["verify", path(&good)],
        vec!["frobnicate"],
        vec!["run", "--config", "/nonexistent.toml"],
    ] {
        let (code, _, err) = collector(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    // Two keys (rotation): either may have signed.
    let (code, _, _) = collector(&[
        "verify",
        path(&good),
        "--authority-key",
        path(&other.key_path),
        "--authority-key",
        key,
    ]);
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_and_random_multi_byte_damage_never_panic_or_pass() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let device = small_chain("locker-1").await;
    let registry = authority.registry(&device, 1, DeviceStatus::Active);
    let genuine = bundle(&device, &registry, 0).bytes;
    let keys = keys(&authority);

    let mut runner = TestRunner::new(Config {
        cases: 512,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..4096), |bytes| {
            prop_assert!(!verify_bundle(&bytes, &keys, &[]).ok);
            Ok(())
        })
        .unwrap();
    let len = genuine.len();
    runner
        .run(
            &(
                proptest::collection::vec((0..len, 1..=255u8), 1..8),
                0..=len,
            ),
            |(edits, keep)| {
                let mut bad = genuine.clone();
                for (at, mask) in &edits {
                    bad[*at] ^= mask;
                }
                bad.truncate(keep);
                // Edits may cancel out (same byte, same mask twice) and keep
                // may be the full length: only a changed bundle must fail.
                if bad != genuine {
                    prop_assert!(!verify_bundle(&bad, &keys, &[]).ok);
                }
                Ok(())
            },
        )
        .unwrap();
}

// --- Completeness: the collector's receipt. ---

/// A receipt by `signer` for record `seq` of `device` (hash as given).
fn receipt_for(
    signer: &mctc_collector::receipt::ReceiptSigner,
    device: &mctc_shim::DeviceId,
    seq: u64,
    hash: [u8; 32],
) -> Vec<u8> {
    signer
        .sign(
            &mctc_collector::receipt::ReceiptFields {
                device,
                seq,
                hash,
                checkpoint: Some(seq),
                anomaly: None,
            },
            1_764_000_000_000,
        )
        .unwrap()
}

/// A bundle of `records` (from `from_seq`) carrying `receipt`.
fn with_receipt(
    device: &Device,
    registry: &[u8],
    from_seq: u64,
    records: &[Vec<u8>],
    receipt: Option<&[u8]>,
) -> Vec<u8> {
    let parts = mctc_shim::bundle::BundleParts {
        device: device.id.as_str(),
        from_seq,
        head: record_hash(&RingCrypto, records.last().unwrap()),
        registry,
        ak_public: &device.identity.ak_public,
        receipt,
    };
    mctc_shim::bundle::encode_bundle(&parts, records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_makes_truncation_below_it_fail_and_reports_the_unacknowledged_tail() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    // Checkpoints at 2, 5 and 8.
    let mut device = small_chain("locker-1").await;
    device.decision(6);
    device.decision(7);
    device.checkpoint().await;
    let registry = authority.registry(&device, 1, DeviceStatus::Active);
    let keys = keys(&authority);
    let collectors = [common::receipt_key()];
    let signer = common::receipt_signer();
    let r = &device.records;
    let receipt = receipt_for(&signer, &device.id, 5, record_hash(&RingCrypto, &r[5]));

    // The whole bundle: complete through 5, 6..=8 unacknowledged.
    let full = with_receipt(&device, &registry, 0, r, Some(&receipt));
    let report = verify_bundle(&full, &keys, &collectors);
    assert!(report.ok, "{report:?}");
    let summary = report.receipt.as_ref().unwrap();
    assert_eq!((summary.seq, summary.unacknowledged), (5, 3));

    // Cut after the earlier checkpoint 2, header recomputed: without the
    // collector's key that still passes (authentic, not complete); with it,
    // the cut fails at the first missing seq.
    let cut = with_receipt(&device, &registry, 0, &r[..3], Some(&receipt));
    assert!(verify_bundle(&cut, &keys, &[]).ok);
    assert_eq!(
        failure(&verify_bundle(&cut, &keys, &collectors)),
        (Some(3), "truncated")
    );
    // The same cut with the receipt removed: no receipt, no completeness.
    let stripped = with_receipt(&device, &registry, 0, &r[..3], None);
    assert_eq!(
        failure(&verify_bundle(&stripped, &keys, &collectors)),
        (None, "no_receipt")
    );

    // Records missing before the receipt: the first missing seq.
    let mut thinned = r.clone();
    thinned.remove(1);
    let thinned = with_receipt(&device, &registry, 0, &thinned, Some(&receipt));
    assert_eq!(
        failure(&verify_bundle(&thinned, &keys, &collectors)),
        (Some(1), "gap")
    );

    // A bundle starting right after the receipt links to it; one starting
    // later misses the records in between.
    let after = with_receipt(&device, &registry, 6, &r[6..], Some(&receipt));
    assert!(verify_bundle(&after, &keys, &collectors).ok);
    let later = with_receipt(&device, &registry, 7, &r[7..], Some(&receipt));
    assert_eq!(
        failure(&verify_bundle(&later, &keys, &collectors)),
        (Some(6), "missing")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_by_another_key_for_another_device_or_another_record_fail() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let device = small_chain("locker-1").await;
    let registry = authority.registry(&device, 1, DeviceStatus::Active);
    let keys = keys(&authority);
    let collectors = [common::receipt_key()];
    let r = &device.records;
    let hash5 = record_hash(&RingCrypto, &r[5]);

    let rogue = mctc_collector::receipt::ReceiptSigner::from_seed(&[0x77; 32]).unwrap();
    let foreign_key = receipt_for(&rogue, &device.id, 5, hash5);
    let b = with_receipt(&device, &registry, 0, r, Some(&foreign_key));
    assert_eq!(
        failure(&verify_bundle(&b, &keys, &collectors)),
        (None, "receipt")
    );

    let other = mctc_shim::DeviceId::new("locker-2").unwrap();
    let foreign_device = receipt_for(&common::receipt_signer(), &other, 5, hash5);
    let b = with_receipt(&device, &registry, 0, r, Some(&foreign_device));
    assert_eq!(
        failure(&verify_bundle(&b, &keys, &collectors)),
        (None, "receipt")
    );

    // The collector acknowledged another record 4 than the bundle's.
    let hash4 = record_hash(&RingCrypto, &r[3]);
    let other_record = receipt_for(&common::receipt_signer(), &device.id, 4, hash4);
    let b = with_receipt(&device, &registry, 0, r, Some(&other_record));
    assert_eq!(
        failure(&verify_bundle(&b, &keys, &collectors)),
        (Some(4), "receipt_mismatch")
    );

    // The authority's key is not a collector's: an authority-signed
    // message never opens as a receipt.
    let b = with_receipt(&device, &registry, 0, r, Some(&registry));
    assert_eq!(
        failure(&verify_bundle(&b, &keys, &collectors)),
        (None, "receipt")
    );
}

#[test]
fn the_receipt_key_has_its_own_role_keygen_never_overwrites_and_export_needs_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // keygen: receipt.key (0600) and receipt.pub; never overwritten.
    let keys = dir.path().join("keys");
    let (code, out, err) = collector(&["keygen", "--out", path(&keys)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("receipt.pub"), "{out}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(keys.join("receipt.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let (code, _, err) = collector(&["keygen", "--out", path(&keys)]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");

    let config = |authority_pub: &Path, receipt_key: &Path| {
        let text = format!(
            "[broker]\nurl = \"mqtts://127.0.0.1:1\"\nca = \"ca\"\ncert = \"c\"\nkey = \"k\"\n\
             [authority]\npublic_keys = [{:?}]\n[store]\npath = {:?}\n[receipts]\nkey = {:?}\n",
            authority_pub.display().to_string(),
            dir.path().join("c.db").display().to_string(),
            receipt_key.display().to_string(),
        );
        let file = dir.path().join("collector.toml");
        std::fs::write(&file, text).unwrap();
        file
    };
    // The receipt key is refused as an authority key: each role its own.
    let same = config(&keys.join("receipt.pub"), &keys.join("receipt.key"));
    let (code, _, err) = collector(&["run", "--config", path(&same)]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    assert!(err.contains("authority key"), "{err}");
    let (code, _, err) = collector(&[
        "verify",
        "/nonexistent.bundle",
        "--authority-key",
        path(&keys.join("receipt.pub")),
        "--collector-key",
        path(&keys.join("receipt.pub")),
    ]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    assert!(err.contains("not a collector's receipt key"), "{err}");
    // A receipt key others can read is refused.
    let loose = dir.path().join("loose.key");
    std::fs::copy(keys.join("receipt.key"), &loose).unwrap();
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let authority = Authority::new(dir.path(), 1);
    let loose_config = config(&authority.key_path, &loose);
    let (code, _, err) = collector(&["run", "--config", path(&loose_config)]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");

    // An empty store: nothing to export (exit 1, one line).
    let good = config(&authority.key_path, &keys.join("receipt.key"));
    let out = dir.path().join("x.bundle");
    let (code, _, err) = collector(&[
        "export",
        "locker-1",
        "--config",
        path(&good),
        "--out",
        path(&out),
    ]);
    assert_eq!((code, err.lines().count()), (1, 1), "{err}");
    assert!(!out.exists());
}

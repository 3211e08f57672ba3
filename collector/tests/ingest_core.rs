//! The ingest core in-process (no broker): the orderings and equivocations
//! that are hard to provoke through MQTT, decided exactly. Checkpoints are
//! still genuine swtpm quotes and the store is a real SQLite database.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

mod common;

use common::{Authority, Device, batch, decode_ack, receipt_signer};
use mctc_collector::alert::ALERT_TOPIC;
use mctc_collector::ingest::{Ingest, IngestConfig, Publish};
use mctc_collector::store::sqlite::SqliteStore;
use mctc_collector::store::{AnomalyKind, DEFAULT_ANOMALY_ROWS_PER_KIND, Store};
use mctc_shim::lineage::{Body, ChainHead, Stamp};
use mctc_shim::messages::{AckAnomaly, DeviceStatus};
use mctc_shim::tpm::BootCounters;
use mctc_shim::{AuthorityKey, DeviceId, RingCrypto};
use std::time::Duration;

struct Core {
    ingest: Ingest<SqliteStore>,
    now: u64,
    _dir: tempfile::TempDir,
}

impl Core {
    fn new(authority: &Authority, config: IngestConfig) -> Core {
        Core::open(authority, tempfile::tempdir().unwrap(), config, None)
    }

    /// A core on the database in `dir` (`c.db`), waiting at most
    /// `busy_timeout` (default: the production 5 s) for another writer.
    fn open(
        authority: &Authority,
        dir: tempfile::TempDir,
        config: IngestConfig,
        busy_timeout: Option<Duration>,
    ) -> Core {
        let mut store = SqliteStore::open(&dir.path().join("c.db")).unwrap();
        if let Some(timeout) = busy_timeout {
            store = store.with_busy_timeout(timeout).unwrap();
        }
        let key = mctc_service::keys::read_public_key(&authority.key_path).unwrap();
        let keys = vec![AuthorityKey::new(&RingCrypto, key)];
        Core {
            ingest: Ingest::new(store, keys, receipt_signer(), config, "test".into()),
            now: 1_000_000,
            _dir: dir,
        }
    }

    /// Closes the database, keeping its directory.
    fn close(self) -> tempfile::TempDir {
        self._dir
    }

    fn db_path(&self) -> std::path::PathBuf {
        self._dir.path().join("c.db")
    }

    fn register(&mut self, authority: &Authority, device: &Device) -> Vec<Publish> {
        let record = authority.registry(device, 1, DeviceStatus::Active);
        self.ingest.handle(
            &format!("mctc/v1/registry/{}", device.id),
            &record,
            self.now,
        )
    }

    fn send(&mut self, device: &DeviceId, records: &[Vec<u8>]) -> Vec<Publish> {
        self.now += 10;
        self.ingest.handle(
            &format!("mctc/v1/dev/{device}/lineage"),
            &batch(device, records),
            self.now,
        )
    }

    fn tick_after(&mut self, ms: u64) -> Vec<Publish> {
        self.now += ms;
        self.ingest.tick(self.now)
    }

    fn kinds(&self, device: &DeviceId) -> Vec<(AnomalyKind, Option<u64>)> {
        let mut all: Vec<_> = self
            .ingest
            .store()
            .anomalies(Some(device))
            .unwrap()
            .into_iter()
            .map(|a| (a.kind, a.seq))
            .collect();
        all.reverse();
        all
    }

    fn head(&self, device: &DeviceId) -> Option<u64> {
        self.ingest
            .store()
            .head(device)
            .unwrap()
            .and_then(|h| h.through_seq())
    }
}

/// The ack among `out` (exactly one) as (through, anomaly, at).
fn ack(out: &[Publish]) -> (Option<u64>, Option<AckAnomaly>, Option<u64>) {
    let acks: Vec<_> = out
        .iter()
        .filter(|p| p.topic.ends_with("/lineage/ack"))
        .map(|p| decode_ack(&p.topic, &p.payload))
        .collect();
    assert_eq!(acks.len(), 1, "{out:?}");
    (acks[0].through_seq, acks[0].anomaly, acks[0].at_seq)
}

fn alerts(out: &[Publish]) -> Vec<String> {
    out.iter()
        .filter(|p| p.topic == ALERT_TOPIC)
        .map(|p| {
            assert!(p.retain);
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
            v["kind"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn stamp(reset: u32, restart: u32, mono_ms: u64) -> Stamp {
    Stamp {
        boot: BootCounters { reset, restart },
        mono_ms,
        wall_ms: None,
    }
}

fn note<'a>() -> Body<'a> {
    Body::AgentStart(mctc_shim::lineage::AgentStart {
        sw_version: mctc_shim::wire::Token("1.0"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_versions_of_a_waiting_record_are_a_fork_and_the_one_that_chains_wins() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let mut device = Device::new("pos-1").await;
    device.write(6, 3).await;
    // Another record 4, built on the genuine record 3.
    let mut alt = ChainHead::resume(
        device.id.clone(),
        3,
        mctc_shim::lineage::record_hash(&RingCrypto, &device.records[3]),
    );
    let mut buf = [0u8; 2048];
    let other4 = alt
        .append(&RingCrypto, stamp(1, 0, 5_000), note(), &mut buf)
        .unwrap()
        .bytes
        .to_vec();

    let mut core = Core::new(&authority, IngestConfig::default());
    core.register(&authority, &device);
    let out = core.send(&device.id, &device.records[4..6]);
    assert_eq!(ack(&out), (None, None, None));
    let out = core.send(&device.id, std::slice::from_ref(&other4));
    assert_eq!(ack(&out), (None, Some(AckAnomaly::Conflict), Some(4)));
    assert_eq!(alerts(&out), vec!["fork"]);
    // The hole fills: the genuine 4 and 5 chain and are stored.
    let out = core.send(&device.id, &device.records[0..4]);
    assert_eq!(ack(&out), (Some(5), None, None));
    assert_eq!(core.kinds(&device.id), vec![(AnomalyKind::Fork, Some(4))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_record_that_does_not_link_is_dropped_so_the_real_one_can_come() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let mut device = Device::new("pos-1").await;
    device.write(6, 0).await;
    let mut stray = ChainHead::resume(device.id.clone(), 4, [0x55; 32]);
    let mut buf = [0u8; 2048];
    let bad5 = stray
        .append(&RingCrypto, stamp(1, 0, 9_000), note(), &mut buf)
        .unwrap()
        .bytes
        .to_vec();

    let mut core = Core::new(&authority, IngestConfig::default());
    core.register(&authority, &device);
    core.send(&device.id, &[bad5]);
    let out = core.send(&device.id, &device.records[0..5]);
    assert_eq!(
        ack(&out),
        (Some(4), Some(AckAnomaly::LinkMismatch), Some(5))
    );
    assert_eq!(alerts(&out), vec!["link_mismatch"]);
    assert!(core.ingest.store().pending_summary().unwrap().is_empty());
    let out = core.send(&device.id, &device.records[5..6]);
    assert_eq!(ack(&out), (Some(5), None, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_checks_carry_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let mut device = Device::new("pos-1").await;
    device.append_stamped(stamp(2, 1, 500), note());
    device.append_stamped(stamp(2, 1, 600), note());
    let mut core = Core::new(&authority, IngestConfig::default());
    core.register(&authority, &device);
    assert_eq!(
        ack(&core.send(&device.id, &device.records)),
        (Some(1), None, None)
    );

    // Same boot, earlier monotonic time, in a later batch: a break.
    let mut rewind = device.head.clone();
    let mut buf = [0u8; 2048];
    let back = rewind
        .append(&RingCrypto, stamp(2, 1, 550), note(), &mut buf)
        .unwrap()
        .bytes
        .to_vec();
    let out = core.send(&device.id, &[back]);
    assert_eq!(
        ack(&out),
        (Some(1), Some(AckAnomaly::ClockRegression), Some(2))
    );

    // Boot counters going backwards: alerted, but the chain is intact and
    // the record is stored and acked.
    let older_boot = device.append_stamped(stamp(1, 7, 10), note());
    let out = core.send(&device.id, &[older_boot]);
    assert_eq!(ack(&out), (Some(2), None, None));
    assert_eq!(alerts(&out), vec!["boot_regression"]);
    assert_eq!(
        core.kinds(&device.id),
        vec![
            (AnomalyKind::ClockRegression, Some(2)),
            (AnomalyKind::BootRegression, Some(2)),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_flagged_once_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let mut device = Device::new("pos-1").await;
    device.write(10, 0).await;
    let config = IngestConfig {
        gap_grace_ms: 1_000,
        ..IngestConfig::default()
    };
    let mut core = Core::new(&authority, config);
    core.register(&authority, &device);
    core.send(&device.id, &device.records[0..3]);
    core.send(&device.id, &device.records[6..10]);
    assert!(core.tick_after(500).is_empty(), "within the grace period");
    let out = core.tick_after(600);
    assert_eq!(ack(&out), (Some(2), Some(AckAnomaly::Gap), Some(3)));
    assert_eq!(alerts(&out), vec!["gap"]);
    assert!(core.tick_after(2_000).is_empty(), "flagged once");
    assert_eq!(core.head(&device.id), Some(2));
    assert_eq!(
        ack(&core.send(&device.id, &device.records[3..6])),
        (Some(9), None, None)
    );
    assert!(core.tick_after(2_000).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_devices_are_held_within_bounds_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let mut device = Device::new("pos-1").await;
    device.write(12, 4).await;
    let config = IngestConfig {
        held_batches: 2,
        ..IngestConfig::default()
    };
    let mut core = Core::new(&authority, config);
    // Three batches held with room for two: the oldest is dropped.
    for chunk in device.records.chunks(4) {
        let out = core.send(&device.id, chunk);
        assert!(
            out.iter().all(|p| p.topic == ALERT_TOPIC),
            "not acked: {out:?}"
        );
    }
    assert_eq!(
        core.kinds(&device.id),
        vec![(AnomalyKind::UnknownDevice, None)]
    );
    let out = core.register(&authority, &device);
    // Replayed: batches 4..8 and 8..12 wait for the dropped 0..4.
    let acks: Vec<_> = out
        .iter()
        .filter(|p| p.topic.ends_with("/ack"))
        .map(|p| decode_ack(&p.topic, &p.payload).through_seq)
        .collect();
    assert_eq!(acks, vec![None, None]);
    assert_eq!(
        ack(&core.send(&device.id, &device.records[0..4])),
        (Some(11), None, None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_left_waiting_at_the_head_by_another_writer_are_drained_by_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let mut device = Device::new("pos-1").await;
    device.write(6, 3).await;
    let mut core = Core::new(&authority, IngestConfig::default());
    core.register(&authority, &device);
    assert_eq!(
        ack(&core.send(&device.id, &device.records[0..3])),
        (Some(2), None, None)
    );
    // Another collector instance filed records 3..6 as pending after this
    // one had looked (the race two instances on one database can have).
    let db = rusqlite::Connection::open(core._dir.path().join("c.db")).unwrap();
    for (seq, bytes) in device.records.iter().enumerate().skip(3) {
        db.execute(
            "INSERT INTO pending (device, seq, bytes, received_ms) VALUES (?1, ?2, ?3, 0)",
            rusqlite::params![device.id.as_str(), seq as i64, bytes],
        )
        .unwrap();
    }
    let out = core.tick_after(10);
    assert_eq!(ack(&out), (Some(5), None, None));
    assert!(alerts(&out).is_empty());
    assert!(core.ingest.store().pending_summary().unwrap().is_empty());
    assert!(core.tick_after(10).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_payloads_on_any_topic_never_panic_and_never_move_a_head() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let mut device = Device::new("pos-1").await;
    device.write(4, 2).await;
    let mut core = Core::new(&authority, IngestConfig::default());
    core.register(&authority, &device);
    assert_eq!(
        ack(&core.send(&device.id, &device.records)),
        (Some(3), None, None)
    );
    let genuine = batch(&device.id, &device.records);

    let topics = [
        format!("mctc/v1/dev/{}/lineage", device.id),
        format!("mctc/v1/registry/{}", device.id),
        "mctc/v1/dev/pos-2/lineage".to_owned(),
        "mctc/v1/fleet/heartbeat".to_owned(),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 256,
        ..Config::default()
    });
    let core = std::cell::RefCell::new(core);
    runner
        .run(
            &(
                0..topics.len(),
                proptest::collection::vec(any::<u8>(), 0..2048),
                proptest::collection::vec((0..genuine.len(), 1..=255u8), 1..4),
            ),
            |(topic, random, edits)| {
                let mut core = core.borrow_mut();
                core.ingest.handle(&topics[topic], &random, 1);
                let mut damaged = genuine.clone();
                for (at, mask) in &edits {
                    damaged[*at] ^= mask;
                }
                core.ingest.handle(&topics[0], &damaged, 1);
                prop_assert_eq!(core.head(&device.id), Some(3));
                Ok(())
            },
        )
        .unwrap();
    // Still serving. (A damaged copy may have left a record waiting at
    // seq 6 or later; once the head reaches it, it fails and is dropped,
    // and the ack names it: the head itself is what must be right.)
    let mut core = core.into_inner();
    device.write(2, 0).await;
    assert_eq!(ack(&core.send(&device.id, &device.records[4..])).0, Some(5));
}

/// A hostile device (its own certificate, so its own topic) sends a
/// thousand batches, each with a different undecodable record, and junk too
/// large to be a batch. The store keeps the first rows of the kind and
/// counts the rest; monitors get one alert at once and one summary per
/// interval, not a thousand; an honest device in between is served, and
/// the hostile device's genuine lineage still lands afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_device_cannot_fill_the_store_or_the_alert_topic() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let mut evil = Device::new("pos-evil").await;
    evil.write(4, 0).await;
    let mut honest = Device::new("pos-honest").await;
    honest.write(4, 0).await;
    let config = IngestConfig {
        // The thousand batches take 10 s of the core's clock.
        alert_interval_ms: 60_000,
        ..IngestConfig::default()
    };
    let mut core = Core::new(&authority, config);
    core.register(&authority, &evil);
    core.register(&authority, &honest);

    let mut alerted = Vec::new();
    let mut acks = Vec::new();
    for i in 0..1000u32 {
        let junk = [vec![0xa1], i.to_be_bytes().to_vec()].concat();
        let out = core.send(&evil.id, &[junk]);
        acks.extend(out.iter().filter(|p| p.topic.ends_with("/ack")).cloned());
        alerted.extend(alerts(&out));
        if i == 500 {
            let out = core.send(&honest.id, &honest.records);
            assert_eq!(ack(&out), (Some(3), None, None));
        }
    }
    for len in [65_537, 300_000] {
        let out = core.ingest.oversized(&evil.id, len, core.now);
        acks.extend(out.iter().filter(|p| p.topic.ends_with("/ack")).cloned());
        alerted.extend(alerts(&out));
    }
    assert_eq!(alerted, vec!["undecodable"], "one alert at once");
    // One anomaly ack, not a thousand: each would make the agent resend
    // everything unacknowledged (amplification).
    assert_eq!(
        ack(&acks),
        (None, Some(AckAnomaly::Undecodable), Some(0)),
        "one anomaly ack for the same head, kind and seq"
    );
    let kept = core.ingest.store().anomalies(Some(&evil.id)).unwrap();
    assert_eq!(kept.len() as u64, DEFAULT_ANOMALY_ROWS_PER_KIND);
    // The first ones are kept (with their evidence), the rest counted.
    assert!(kept.iter().any(|a| a.detail.contains("does not decode")));
    // The summary when the interval ends counts everything after the first.
    let out = core.tick_after(50_000);
    // (Repeats of one batch-level anomaly, the second oversized payload at
    // the same head, are written at the tick.)
    let overflow = core
        .ingest
        .store()
        .anomaly_overflow(Some(&evil.id))
        .unwrap();
    assert_eq!(overflow.len(), 1);
    assert_eq!(overflow[0].count, 1002 - DEFAULT_ANOMALY_ROWS_PER_KIND);
    let summaries: Vec<serde_json::Value> = out
        .iter()
        .filter(|p| p.topic == ALERT_TOPIC)
        .map(|p| serde_json::from_slice(&p.payload).unwrap())
        .collect();
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    assert_eq!(summaries[0]["count"], 1001);
    assert_eq!(summaries[0]["device"], "pos-evil");
    assert!(
        core.tick_after(60_000)
            .iter()
            .all(|p| p.topic != ALERT_TOPIC)
    );
    // Nothing of the honest device was disturbed; the hostile device's
    // genuine lineage (resent once it behaves) is stored and acked.
    assert!(core.kinds(&honest.id).is_empty());
    let out = core.send(&evil.id, &evil.records);
    assert_eq!(ack(&out), (Some(3), None, None));
}

/// The same junk again and again at one head costs one write and one
/// anomaly ack per interval, not one per message: repeats are counted in
/// memory and written at the next tick, every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_junk_is_counted_without_a_write_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let device = Device::new("pos-junk").await;
    let mut core = Core::new(&authority, IngestConfig::default());
    core.register(&authority, &device);
    let topic = format!("mctc/v1/dev/{}/lineage", device.id);
    let mut acks = Vec::new();
    for _ in 0..500 {
        core.now += 1;
        let out = core.ingest.handle(&topic, &[0xff; 64], core.now);
        acks.extend(out.into_iter().filter(|p| p.topic.ends_with("/ack")));
    }
    // Answered once per interval (each anomaly ack makes an agent resend).
    assert_eq!(ack(&acks), (None, Some(AckAnomaly::Undecodable), Some(0)));
    let count = |core: &Core| {
        let rows = core.ingest.store().anomalies(Some(&device.id)).unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        rows[0].count
    };
    assert_eq!(count(&core), 1, "only the first was written at once");
    core.tick_after(100);
    assert_eq!(count(&core), 500, "the repeats are written at the tick");
    // After the interval a repeat is written at once again.
    core.tick_after(IngestConfig::default().alert_interval_ms);
    core.now += 1;
    let out = core.ingest.handle(&topic, &[0xff; 64], core.now);
    assert_eq!(ack(&out), (None, Some(AckAnomaly::Undecodable), Some(0)));
    assert_eq!(count(&core), 501);
}

/// Anomaly acks are rationed per device (each makes an agent resend all it
/// has not had acknowledged): one a second, alternating kinds included;
/// progress is acked regardless, without the anomaly when rationed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomaly_acks_are_rationed_and_progress_is_always_acked() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let mut device = Device::new("pos-acks").await;
    device.write(4, 0).await;
    let mut other = Device::new("pos-other").await;
    other.write(1, 0).await;
    let mut core = Core::new(&authority, IngestConfig::default());
    core.register(&authority, &device);
    let topic = format!("mctc/v1/dev/{}/lineage", device.id);
    let acks = |out: &[Publish]| out.iter().filter(|p| p.topic.ends_with("/ack")).count();

    core.now += 10;
    let out = core.ingest.handle(&topic, b"junk", core.now);
    assert_eq!(ack(&out), (None, Some(AckAnomaly::Undecodable), Some(0)));
    // Another anomaly within the second: recorded, not answered.
    let out = core.send(&device.id, &[other.records[0].clone()]);
    assert_eq!(acks(&out), 0, "{out:?}");
    // Progress within the second: acked, without the anomaly.
    let out = core.send(&device.id, &[device.records[0].clone(), vec![0xa0]]);
    assert_eq!(ack(&out), (Some(0), None, None));
    // A second later, another anomaly is answered.
    core.now += 1_000;
    let out = core.send(&device.id, &[other.records[0].clone()]);
    assert_eq!(ack(&out), (Some(0), Some(AckAnomaly::WrongDevice), Some(1)));
    let out = core.send(&device.id, &device.records[1..]);
    assert_eq!(ack(&out), (Some(3), None, None));
    let kinds = core.kinds(&device.id);
    assert_eq!(
        kinds,
        vec![
            (AnomalyKind::Undecodable, Some(0)),
            (AnomalyKind::WrongDevice, Some(0)),
            (AnomalyKind::Undecodable, Some(1)),
            (AnomalyKind::WrongDevice, Some(1)),
        ]
    );
}

/// The signed receipt among `out` (exactly one ack, and it is signed).
fn receipt(out: &[Publish], device: &DeviceId) -> mctc_shim::Receipt<'static> {
    let acks: Vec<_> = out
        .iter()
        .filter(|p| p.topic.ends_with("/lineage/ack"))
        .collect();
    assert_eq!(acks.len(), 1, "{out:?}");
    let bytes: &'static [u8] = acks[0].payload.clone().leak();
    mctc_shim::verify_receipt(bytes, &[common::receipt_key()], &RingCrypto, device)
        .unwrap()
        .receipt()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ack_is_a_receipt_naming_the_stored_hash_and_the_newest_verified_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let mut device = Device::new("pos-1").await;
    // Checkpoints at 2 and 5.
    device.write(8, 3).await;
    let mut core = Core::new(&authority, IngestConfig::default());
    core.register(&authority, &device);

    // Nothing stored yet (only a record above the head): the unsigned ack,
    // which claims nothing.
    let out = core.send(&device.id, &device.records[1..2]);
    assert!(!decode_ack(&out[0].topic, &out[0].payload).signed);

    let out = core.send(&device.id, &device.records[0..4]);
    let r = receipt(&out, &device.id);
    assert_eq!((r.seq, r.checkpoint), (3, Some(2)));
    assert_eq!(
        r.hash.0,
        mctc_shim::lineage::record_hash(&RingCrypto, &device.records[3])
    );
    assert_eq!(r.time_ms, core.now);
    let out = core.send(&device.id, &device.records[4..8]);
    let r = receipt(&out, &device.id);
    assert_eq!((r.seq, r.checkpoint), (7, Some(5)));

    // The collector's own export: records 0..=5 (the newest verified
    // checkpoint) with a receipt for 5 signed now; it verifies offline with
    // the collector's key, and a cut copy of it does not.
    let export = core
        .ingest
        .export(&device.id, core.now + 1)
        .unwrap()
        .unwrap();
    assert_eq!(export.records.len(), 6);
    let parts = mctc_shim::bundle::BundleParts {
        device: device.id.as_str(),
        from_seq: 0,
        head: export.head,
        registry: &export.registry.signed,
        ak_public: &export.registry.ak_public,
        receipt: Some(&export.receipt),
    };
    let key = mctc_service::keys::read_public_key(&authority.key_path).unwrap();
    let keys = [AuthorityKey::new(&RingCrypto, key)];
    let bytes = mctc_shim::bundle::encode_bundle(&parts, &export.records);
    let report = mctc_collector::verify::verify_bundle(&bytes, &keys, &[common::receipt_key()]);
    assert!(report.ok, "{report:?}");
    let summary = report.receipt.unwrap();
    assert_eq!((summary.seq, summary.unacknowledged), (5, 0));
    assert_eq!(summary.time_ms, core.now + 1);

    let cut = &export.records[..3];
    let parts = mctc_shim::bundle::BundleParts {
        head: mctc_shim::lineage::record_hash(&RingCrypto, cut.last().unwrap()),
        ..parts
    };
    let report = mctc_collector::verify::verify_bundle(
        &mctc_shim::bundle::encode_bundle(&parts, cut),
        &keys,
        &[common::receipt_key()],
    );
    let failure = report.failure.unwrap();
    assert_eq!((failure.seq, failure.reason), (Some(3), "truncated"));

    // Nothing to export for a device without a verified checkpoint.
    let unknown = DeviceId::new("pos-2").unwrap();
    assert!(core.ingest.export(&unknown, core.now).unwrap().is_none());
}

/// A busy database is the collector's transient failure: the batch gets no
/// ack and no anomaly while another writer holds the lock, is retried at
/// the next ticks and acked once the lock is gone; retries are bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_database_is_retried_and_never_answered_with_an_anomaly() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let mut device = Device::new("pos-1").await;
    device.write(6, 3).await;
    let busy = Some(Duration::from_millis(50));
    let mut core = Core::open(
        &authority,
        tempfile::tempdir().unwrap(),
        IngestConfig::default(),
        busy,
    );
    core.register(&authority, &device);
    assert_eq!(
        ack(&core.send(&device.id, &device.records[0..3])),
        (Some(2), None, None)
    );

    // Another connection holds the write lock (BEGIN IMMEDIATE).
    let other = rusqlite::Connection::open(core.db_path()).unwrap();
    other.execute_batch("BEGIN IMMEDIATE;").unwrap();
    let out = core.send(&device.id, &device.records[3..6]);
    assert!(out.is_empty(), "no ack, no alert while busy: {out:?}");
    assert_eq!(core.ingest.retry_pending(), 1);
    // Still busy at the next tick: kept, still nothing sent.
    assert!(core.tick_after(10).is_empty());
    assert_eq!(core.ingest.retry_pending(), 1);
    other.execute_batch("ROLLBACK;").unwrap();
    let out = core.tick_after(10);
    assert_eq!(ack(&out), (Some(5), None, None), "acked by the retry");
    assert!(alerts(&out).is_empty());
    assert_eq!(core.ingest.retry_pending(), 0);
    assert!(
        core.kinds(&device.id).is_empty(),
        "the busy database is never recorded as the device's anomaly"
    );
    let counters = core.ingest.counters();
    assert_eq!(
        (
            counters.transient_failures,
            counters.retried,
            counters.failures,
            counters.sender_faults
        ),
        (2, 1, 0, 0),
        "{counters:?}"
    );

    // Junk while the lock is held: the device's fault, but the store cannot
    // record it, so nothing is answered; after three tries it is given up.
    other.execute_batch("BEGIN IMMEDIATE;").unwrap();
    core.now += 10;
    let lineage = format!("mctc/v1/dev/{}/lineage", device.id);
    assert!(core.ingest.handle(&lineage, b"junk", core.now).is_empty());
    assert!(core.tick_after(10).is_empty());
    assert_eq!(core.ingest.retry_pending(), 1);
    assert!(core.tick_after(10).is_empty());
    assert_eq!(core.ingest.retry_pending(), 0, "given up after 3 tries");
    other.execute_batch("ROLLBACK;").unwrap();
    assert!(core.tick_after(10).is_empty(), "nothing left to retry");
    assert!(core.kinds(&device.id).is_empty());
    let counters = core.ingest.counters();
    assert_eq!(
        (
            counters.transient_failures,
            counters.abandoned,
            counters.sender_faults
        ),
        (5, 1, 0),
        "{counters:?}"
    );
    // The same junk once the database answers: the sender's fault.
    let out = core.ingest.handle(&lineage, b"junk", core.now);
    assert_eq!(ack(&out), (Some(5), Some(AckAnomaly::Undecodable), Some(6)));
    assert_eq!(core.ingest.counters().sender_faults, 1);
}

/// A corrupt database is the collector's lasting failure: logged as ours,
/// never retried, and the device is answered nothing (no anomaly for what
/// the collector cannot read), whatever it sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_database_is_our_failure_and_the_device_is_told_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), 1);
    let mut device = Device::new("pos-1").await;
    device.write(6, 3).await;
    let mut core = Core::new(&authority, IngestConfig::default());
    core.register(&authority, &device);
    assert_eq!(
        ack(&core.send(&device.id, &device.records[0..3])),
        (Some(2), None, None)
    );
    let db = core.close();
    mctc_tests::collector::corrupt_table(&db.path().join("c.db"), "heads");
    let mut core = Core::open(&authority, db, IngestConfig::default(), None);

    let out = core.send(&device.id, &device.records[3..6]);
    assert!(
        out.is_empty(),
        "nothing acked from a corrupt store: {out:?}"
    );
    // Junk from the device: its fault, but no anomaly ack either, since
    // the collector cannot say where its chain stands.
    core.now += 10;
    let lineage = format!("mctc/v1/dev/{}/lineage", device.id);
    assert!(core.ingest.handle(&lineage, b"junk", core.now).is_empty());
    assert_eq!(
        core.ingest.retry_pending(),
        0,
        "a corrupt file is not retried"
    );
    assert!(core.tick_after(10).is_empty());
    assert!(core.kinds(&device.id).is_empty());
    let counters = core.ingest.counters();
    assert_eq!(
        (
            counters.failures,
            counters.transient_failures,
            counters.sender_faults
        ),
        (2, 0, 0),
        "{counters:?}"
    );
}

//! `mctc-collector run` against a real Mosquitto (TLS, client certificates,
//! the shipped ACL), with lineage written by the shim's `ChainHead` and
//! checkpoints quoted by real swtpm instances.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

mod common;

use std::time::{Duration, Instant};

use common::{Ack, Authority, Client, Collector, Device, batch, decode_ack};
use mctc_shim::DeviceId;
use mctc_shim::lineage::ChainHead;
use mctc_shim::messages::{AckAnomaly, DeviceStatus};
use mctc_tests::Broker;

const ALERTS: &str = "mctc/v1/collector/alerts";
const WAIT: Duration = Duration::from_secs(20);

fn lineage_topic(id: &DeviceId) -> String {
    format!("mctc/v1/dev/{id}/lineage")
}

fn ack_topic(id: &DeviceId) -> String {
    format!("mctc/v1/dev/{id}/lineage/ack")
}

fn registry_topic(id: &DeviceId) -> String {
    format!("mctc/v1/registry/{id}")
}

/// A broker, the authority's key and publisher, a running collector and a
/// monitor listening to alerts.
struct Fleet {
    authority: Authority,
    authority_client: Client,
    monitor: Client,
    collector: Collector,
    broker: Broker,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// Starts everything; `ready` (a device with its registry record
    /// published before the collector starts) proves the subscriptions are
    /// up once the collector logs that it accepted the record.
    async fn start(ready: &Device, extra_ingest: &str) -> Fleet {
        let broker = Broker::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let authority = Authority::new(dir.path(), 1);
        let authority_client = Client::connect(&broker, "mctc-authority", &[]).await;
        authority_client
            .publish(
                &registry_topic(&ready.id),
                authority.registry(ready, 1, DeviceStatus::Active),
                true,
            )
            .await;
        let monitor = Client::connect(&broker, "mctc-monitor", &[ALERTS]).await;
        let collector = Collector::start(&broker, &[&authority.key_path], extra_ingest);
        collector.wait_log("registry record accepted", WAIT);
        Fleet {
            authority,
            authority_client,
            monitor,
            collector,
            broker,
            _dir: dir,
        }
    }

    async fn register(&self, device: &Device, version: u64, status: DeviceStatus) {
        self.authority_client
            .publish(
                &registry_topic(&device.id),
                self.authority.registry(device, version, status),
                true,
            )
            .await;
    }

    /// Connects as the device, subscribed to its acks.
    async fn device_client(&self, device: &Device) -> Client {
        Client::connect(&self.broker, device.id.as_str(), &[&ack_topic(&device.id)]).await
    }

    /// Waits for an alert of `kind` about `device`.
    async fn alert(&mut self, device: &DeviceId, kind: &str) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some((topic, payload, _)) = self.monitor.next(Duration::from_millis(200)).await {
                assert_eq!(topic, ALERTS);
                let alert: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                if alert["device"] == device.as_str() && alert["kind"] == kind {
                    return alert;
                }
            }
        }
        panic!(
            "no {kind} alert for {device}:\n{}",
            self.collector.proc.log()
        );
    }
}

async fn send(client: &Client, device: &DeviceId, records: &[Vec<u8>]) {
    client
        .publish(&lineage_topic(device), batch(device, records), false)
        .await;
}

async fn send_all(client: &Client, device: &Device, per_batch: usize) {
    for chunk in device.records.chunks(per_batch) {
        send(client, &device.id, chunk).await;
    }
}

/// Reads acks until one says `through` (returns it) or the wait ends.
async fn ack_through(client: &mut Client, through: Option<u64>) -> Ack {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((topic, payload, _)) = client.next(Duration::from_millis(200)).await {
            let ack = decode_ack(&topic, &payload);
            if ack.through_seq == through {
                return ack;
            }
            last = Some(ack);
        }
    }
    panic!("no ack through {through:?}; last ack {last:?}");
}

/// Every ack received within `window`.
async fn acks_within(client: &mut Client, window: Duration) -> Vec<Ack> {
    client
        .drain(window)
        .await
        .into_iter()
        .map(|(t, p, _)| decode_ack(&t, &p))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genuine_chain_is_stored_and_acked_and_resends_change_nothing() {
    let mut device = Device::new("pos-1").await;
    device.write(200, 50).await;
    let mut fleet = Fleet::start(&device, "").await;
    let mut client = fleet.device_client(&device).await;

    send_all(&client, &device, 64).await;
    let ack = ack_through(&mut client, Some(199)).await;
    assert_eq!((ack.anomaly, ack.at_seq), (None, None));
    let stored = fleet.collector.records(&device.id);
    assert_eq!(stored.len(), 200);
    for (seq, bytes) in &stored {
        assert_eq!(bytes, &device.records[*seq as usize], "record {seq}");
    }
    assert_eq!(fleet.collector.checkpoints(&device.id), 4);

    // A full resend (the agent reconnected before seeing the acks).
    send_all(&client, &device, 64).await;
    let acks = acks_within(&mut client, Duration::from_secs(2)).await;
    assert_eq!(acks.len(), 4, "one ack per batch");
    for ack in &acks {
        assert_eq!((ack.through_seq, ack.anomaly), (Some(199), None));
    }
    assert_eq!(fleet.collector.records(&device.id).len(), 200);
    assert!(fleet.collector.anomalies(&device.id).is_empty());

    // Killed and restarted: the store survives, a resend is still a resend.
    fleet.collector.proc.kill();
    fleet.collector.restart();
    fleet.collector.wait_log("collector started", WAIT);
    let more = device.records.len();
    device.write(10, 0).await;
    let deadline = Instant::now() + WAIT;
    loop {
        send(&client, &device.id, &device.records[190..]).await;
        if let Some((topic, payload, _)) = client.next(Duration::from_millis(500)).await {
            let ack = decode_ack(&topic, &payload);
            assert_eq!(ack.through_seq, Some(more as u64 + 9));
            break;
        }
        assert!(Instant::now() < deadline, "no ack after restart");
    }
    assert_eq!(fleet.collector.records(&device.id).len(), 210);
    assert!(fleet.collector.anomalies(&device.id).is_empty());
    let _ = fleet.alert_free().await;
}

impl Fleet {
    /// Asserts no alert arrived (so far) and returns how many there were.
    async fn alert_free(&mut self) -> usize {
        let alerts = self.monitor.drain(Duration::from_millis(200)).await;
        assert!(alerts.is_empty(), "unexpected alerts: {alerts:?}");
        alerts.len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_batches_are_kept_until_the_hole_fills() {
    let mut device = Device::new("pos-1").await;
    device.write(192, 64).await;
    let mut fleet = Fleet::start(&device, "gap_grace_ms = 3000").await;
    let mut client = fleet.device_client(&device).await;
    let chunks: Vec<_> = device.records.chunks(64).collect();

    send(&client, &device.id, chunks[2]).await;
    send(&client, &device.id, chunks[1]).await;
    let early = acks_within(&mut client, Duration::from_millis(700)).await;
    assert_eq!(early.len(), 2);
    assert!(
        early
            .iter()
            .all(|a| a.through_seq.is_none() && a.anomaly.is_none())
    );
    send(&client, &device.id, chunks[0]).await;
    assert_eq!(ack_through(&mut client, Some(191)).await.anomaly, None);
    assert_eq!(fleet.collector.records(&device.id).len(), 192);
    assert_eq!(fleet.collector.checkpoints(&device.id), 3);
    // Past the grace period: the hole was filled in time, so no gap. This
    // sleep is the scenario (time passing without an anomaly), not a wait
    // for an event: there is no event to wait for when nothing may happen.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(fleet.collector.anomalies(&device.id).is_empty());
    fleet.alert_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_acked_only_through_the_hole_and_alerted_until_it_fills() {
    let mut device = Device::new("pos-1").await;
    device.write(30, 0).await;
    let mut fleet = Fleet::start(&device, "").await;
    let mut client = fleet.device_client(&device).await;

    send(&client, &device.id, &device.records[0..10]).await;
    send(&client, &device.id, &device.records[20..30]).await;
    assert_eq!(ack_through(&mut client, Some(9)).await.anomaly, None);
    let alert = fleet.alert(&device.id, "gap").await;
    assert_eq!(alert["seq"], 10);
    // The sweep also tells the device where the hole is (after the plain
    // acks of the two batches).
    let acks = acks_within(&mut client, Duration::from_millis(500)).await;
    let summary: Vec<_> = acks
        .iter()
        .map(|a| (a.through_seq, a.anomaly, a.at_seq))
        .collect();
    assert_eq!(
        summary,
        vec![
            (Some(9), None, None),
            (Some(9), Some(AckAnomaly::Gap), Some(10))
        ]
    );
    assert_eq!(fleet.collector.records(&device.id).len(), 10);
    assert_eq!(
        fleet.collector.anomalies(&device.id),
        vec![("gap".to_owned(), Some(10), 1)]
    );

    send(&client, &device.id, &device.records[10..20]).await;
    assert_eq!(ack_through(&mut client, Some(29)).await.anomaly, None);
    assert_eq!(fleet.collector.records(&device.id).len(), 30);

    // A record far beyond the pending window is a gap at once.
    let mut far = Device::new("pos-2").await;
    far.write(5, 0).await;
    fleet.register(&far, 1, DeviceStatus::Active).await;
    fleet.collector.wait_log("pos-2", WAIT);
    let mut far_client = fleet.device_client(&far).await;
    far.head = ChainHead::resume(far.id.clone(), 100_000, *far.head.head());
    far.decision(1);
    send(&far_client, &far.id, &far.records[5..]).await;
    let ack = ack_through(&mut far_client, None).await;
    assert_eq!((ack.anomaly, ack.at_seq), (Some(AckAnomaly::Gap), Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_is_alerted_persisted_and_retained() {
    let mut device = Device::new("pos-1").await;
    device.write(5, 0).await;
    let mut fork = device.head.clone();
    device.write(5, 0).await;
    let mut fleet = Fleet::start(&device, "").await;
    let mut client = fleet.device_client(&device).await;
    send(&client, &device.id, &device.records).await;
    ack_through(&mut client, Some(9)).await;

    // Another record 5 (same device, same predecessor, other content).
    let mut buf = [0u8; 2048];
    let other = fork
        .append(
            &mctc_shim::RingCrypto,
            mctc_shim::lineage::Stamp {
                boot: mctc_shim::tpm::BootCounters {
                    reset: 1,
                    restart: 0,
                },
                mono_ms: 99_999,
                wall_ms: None,
            },
            mctc_shim::lineage::Body::AgentStop(mctc_shim::lineage::AgentStop {
                reason: mctc_shim::wire::Text("forked"),
            }),
            &mut buf,
        )
        .unwrap()
        .bytes
        .to_vec();
    send(&client, &device.id, std::slice::from_ref(&other)).await;
    let ack = ack_through(&mut client, Some(9)).await;
    assert_eq!(
        (ack.anomaly, ack.at_seq),
        (Some(AckAnomaly::Conflict), Some(5))
    );
    let alert = fleet.alert(&device.id, "fork").await;
    assert_eq!(alert["seq"], 5);
    assert_eq!(alert["evidence_sha256"], hex(&common::sha256(&other)));
    assert_eq!(
        fleet.collector.anomalies(&device.id),
        vec![("fork".to_owned(), Some(5), 1)]
    );
    // The stored record is untouched.
    assert_eq!(fleet.collector.records(&device.id)[5].1, device.records[5]);

    // Retained: a monitor connecting later still sees it.
    let mut late = Client::connect(&fleet.broker, "mctc-monitor", &[ALERTS]).await;
    let (_, payload, retained) = late.next(WAIT).await.unwrap();
    assert!(retained);
    let alert: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        (alert["kind"].as_str(), alert["seq"].as_u64()),
        (Some("fork"), Some(5))
    );

    // The same fork again is counted, not alerted again, and not answered
    // again within the alert interval (every anomaly ack makes an agent
    // resend all it has not had acknowledged).
    send(&client, &device.id, &[other]).await;
    let counted = mctc_tests::wait_until(WAIT, || {
        fleet.collector.anomalies(&device.id) == vec![("fork".to_owned(), Some(5), 2)]
    });
    assert!(
        counted.is_some(),
        "{:?}",
        fleet.collector.anomalies(&device.id)
    );
    assert!(
        acks_within(&mut client, Duration::from_millis(300))
            .await
            .is_empty()
    );
    fleet.alert_free().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_checkpoints_stop_the_chain_at_the_checkpoint() {
    let other = Device::new("pos-9").await;

    // A quote by another device's AK over this device's qualifying data.
    let mut device = Device::new("pos-1").await;
    device.write(4, 0).await;
    let (seq, qualifying) = device.head_qualifying_data();
    let foreign = other.quote(qualifying).await;
    let head = *device.head.head();
    device.checkpoint_with(seq, head, &foreign);
    device.write(3, 0).await;

    // A quote by the right AK committing to another head.
    let mut second = Device::new("pos-2").await;
    second.write(4, 0).await;
    let (seq2, _) = second.head_qualifying_data();
    let elsewhere = second.quote(common::sha256(b"not the head")).await;
    let head2 = *second.head.head();
    second.checkpoint_with(seq2, head2, &elsewhere);

    let mut fleet = Fleet::start(&device, "").await;
    fleet.register(&second, 1, DeviceStatus::Active).await;
    fleet.collector.wait_log("pos-2", WAIT);
    let mut client = fleet.device_client(&device).await;
    send(&client, &device.id, &device.records).await;
    let ack = ack_through(&mut client, Some(3)).await;
    assert_eq!(
        (ack.anomaly, ack.at_seq),
        (Some(AckAnomaly::BadCheckpoint), Some(4))
    );
    let alert = fleet.alert(&device.id, "bad_checkpoint").await;
    assert!(
        alert["detail"].as_str().unwrap().contains("signature"),
        "{alert}"
    );
    assert_eq!(fleet.collector.records(&device.id).len(), 4);

    let mut client2 = fleet.device_client(&second).await;
    send(&client2, &second.id, &second.records).await;
    let ack = ack_through(&mut client2, Some(3)).await;
    assert_eq!(
        (ack.anomaly, ack.at_seq),
        (Some(AckAnomaly::BadCheckpoint), Some(4))
    );
    let alert = fleet.alert(&second.id, "bad_checkpoint").await;
    assert!(
        alert["detail"]
            .as_str()
            .unwrap()
            .contains("qualifying data"),
        "{alert}"
    );
    assert_eq!(fleet.collector.checkpoints(&second.id), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_payloads_are_dropped_and_other_devices_served() {
    let mut a = Device::new("pos-1").await;
    a.write(10, 5).await;
    let mut b = Device::new("pos-2").await;
    b.write(10, 5).await;
    let mut fleet = Fleet::start(&a, "").await;
    fleet.register(&b, 1, DeviceStatus::Active).await;
    fleet.collector.wait_log("pos-2", WAIT);
    let mut client_a = fleet.device_client(&a).await;
    let mut client_b = fleet.device_client(&b).await;

    let topic = lineage_topic(&a.id);
    client_a.publish(&topic, vec![0xff; 100], false).await;
    client_a.publish(&topic, vec![], false).await;
    client_a
        .publish(&topic, vec![0x5b; 100 * 1024], false)
        .await;
    // A well-formed batch naming the other device, on this device's topic.
    client_a
        .publish(&topic, batch(&b.id, &b.records), false)
        .await;
    // A batch whose second record is garbage.
    client_a
        .publish(
            &topic,
            batch(&a.id, &[a.records[0].clone(), vec![0xa0]]),
            false,
        )
        .await;

    let acks = acks_within(&mut client_a, Duration::from_secs(2)).await;
    let anomalies: Vec<_> = acks
        .iter()
        .map(|x| (x.through_seq, x.anomaly, x.at_seq))
        .collect();
    assert_eq!(
        anomalies,
        // Anomaly acks are rationed (every one makes an agent resend): one
        // a second per device, the same one once per interval. The rest is
        // counted, not answered; progress is still acked.
        vec![
            (None, Some(AckAnomaly::Undecodable), Some(0)),
            (Some(0), None, None),
        ]
    );
    // Every one is recorded.
    let recorded = mctc_tests::wait_until(WAIT, || {
        fleet.collector.anomalies(&a.id)
            == vec![
                ("undecodable".to_owned(), Some(0), 3),
                ("wrong_device".to_owned(), Some(0), 1),
                ("undecodable".to_owned(), Some(1), 1),
            ]
    });
    assert!(recorded.is_some(), "{:?}", fleet.collector.anomalies(&a.id));
    // The other device is served, and so is this one with good input.
    send(&client_b, &b.id, &b.records).await;
    assert_eq!(ack_through(&mut client_b, Some(9)).await.anomaly, None);
    send(&client_a, &a.id, &a.records).await;
    assert_eq!(ack_through(&mut client_a, Some(9)).await.anomaly, None);
    assert_eq!(fleet.collector.records(&a.id).len(), 10);
    assert_eq!(fleet.collector.records(&b.id).len(), 10);
    assert!(
        fleet.collector.proc.try_status().is_none(),
        "collector died"
    );
    assert!(fleet.collector.anomalies(&b.id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_records_decide_trust_newest_wins_and_revoked_devices_are_kept() {
    let beacon = Device::new("pos-0").await;
    let mut device = Device::new("pos-1").await;
    device.write(20, 10).await;
    let mut fleet = Fleet::start(&beacon, "").await;
    let mut client = fleet.device_client(&device).await;

    // No registry record yet: not acked, flagged once, held.
    send(&client, &device.id, &device.records[..10]).await;
    assert!(
        acks_within(&mut client, Duration::from_millis(800))
            .await
            .is_empty()
    );
    fleet.alert(&device.id, "unknown_device").await;

    // A record signed by someone else is not a registry record.
    let impostor = Authority::new(fleet._dir.path(), 7);
    fleet
        .authority_client
        .publish(
            &registry_topic(&device.id),
            impostor.registry(&device, 5, DeviceStatus::Active),
            true,
        )
        .await;
    send(&client, &device.id, &device.records[10..]).await;
    assert!(
        acks_within(&mut client, Duration::from_millis(800))
            .await
            .is_empty()
    );

    // The genuine record: the held batches are replayed and acked.
    fleet.register(&device, 2, DeviceStatus::Active).await;
    let ack = ack_through(&mut client, Some(19)).await;
    assert_eq!(ack.anomaly, None);
    assert_eq!(fleet.collector.records(&device.id).len(), 20);

    // Revoked (a newer version): kept with its status; lineage still collected.
    fleet.register(&device, 3, DeviceStatus::Revoked).await;
    // An older version arriving late changes nothing.
    fleet.register(&device, 1, DeviceStatus::Active).await;
    device.write(5, 0).await;
    let registry = || -> (i64, i64) {
        rusqlite::Connection::open(&fleet.collector.db)
            .unwrap()
            .query_row(
                "SELECT version, status FROM registry WHERE device = ?1",
                [device.id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    assert!(
        mctc_tests::wait_until(WAIT, || registry() == (3, 3)).is_some(),
        "registry at (version, status) {:?}",
        registry()
    );
    // The late v1 was seen and ignored (not merely not yet read).
    fleet
        .collector
        .wait_log("older registry record ignored", WAIT);
    send(&client, &device.id, &device.records[20..]).await;
    assert_eq!(ack_through(&mut client, Some(24)).await.anomaly, None);
    let db = rusqlite::Connection::open(&fleet.collector.db).unwrap();
    let version: i64 = db
        .query_row(
            "SELECT version FROM registry WHERE device = ?1",
            [device.id.as_str()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, 3);
    assert_eq!(
        fleet.collector.anomalies(&device.id),
        vec![("unknown_device".to_owned(), None, 2)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_are_ingested_quickly() {
    const N: usize = 10_000;
    let mut device = Device::new("pos-1").await;
    let built = Instant::now();
    device.write(N, 100).await;
    let build_time = built.elapsed();
    // 157 batches at once, not ack-clocked as an agent sends them: above the
    // default per-device burst, which is not what this measures.
    let mut fleet = Fleet::start(&device, "device_burst = 1000").await;
    let mut client = fleet.device_client(&device).await;

    let started = Instant::now();
    send_all(&client, &device, 64).await;
    let ack = ack_through(&mut client, Some(N as u64 - 1)).await;
    let elapsed = started.elapsed();
    assert_eq!(ack.anomaly, None);
    assert_eq!(fleet.collector.records(&device.id).len(), N);
    assert_eq!(fleet.collector.checkpoints(&device.id), (N / 100) as u64);
    let rate = N as f64 / elapsed.as_secs_f64();
    eprintln!(
        "ingested {N} records ({} checkpoints) in {:.2} s: {rate:.0} records/s \
         (chain with swtpm quotes built in {:.2} s)",
        N / 100,
        elapsed.as_secs_f64(),
        build_time.as_secs_f64()
    );
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    fleet.alert_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_watchdog_and_stopping_and_sigterm_exits_0() {
    use std::os::unix::net::UnixDatagram;

    let device = Device::new("pos-1").await;
    let fleet = Fleet::start(&device, "").await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut command = std::process::Command::new(mctc_tests::bin_path("mctc-collector").unwrap());
    // A second instance on the same database (with its own client id).
    let config = std::fs::read_to_string(&fleet.collector.config).unwrap();
    let second = dir.path().join("second.toml");
    std::fs::write(
        &second,
        config.replace("mctc-collector-test-", "mctc-collector-second-"),
    )
    .unwrap();
    command
        .args(["run", "--config", second.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000");
    let mut proc =
        mctc_tests::Proc::spawn_command("mctc-collector", command, &dir.path().join("second.log"))
            .unwrap();

    let mut seen = String::new();
    let deadline = Instant::now() + WAIT;
    while !(seen.contains("READY=1") && seen.matches("WATCHDOG=1").count() >= 3) {
        assert!(Instant::now() < deadline, "notifications so far: {seen:?}");
        let mut buf = [0u8; 256];
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
    }
    proc.signal(rustix::process::Signal::TERM).unwrap();
    let status = proc.wait_timeout(WAIT).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", proc.log());
    let mut rest = [0u8; 256];
    let mut stopping = false;
    while let Ok(n) = socket.recv(&mut rest) {
        stopping |= std::str::from_utf8(&rest[..n])
            .unwrap()
            .contains("STOPPING=1");
    }
    assert!(stopping, "STOPPING=1 sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_load_and_one_database() {
    const N: usize = 2_000;
    let mut device = Device::new("pos-1").await;
    device.write(N, 100).await;
    let mut fleet = Fleet::start(&device, "gap_grace_ms = 3000").await;
    // The second instance: same database and share group, its own client id.
    let config = std::fs::read_to_string(&fleet.collector.config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let second_config = dir.path().join("second.toml");
    std::fs::write(
        &second_config,
        config.replace("mctc-collector-test-", "mctc-collector-second-"),
    )
    .unwrap();
    let mut command = std::process::Command::new(mctc_tests::bin_path("mctc-collector").unwrap());
    command
        .args(["run", "--config", second_config.to_str().unwrap()])
        .env("MCTC_LOG", "debug");
    let second =
        mctc_tests::Proc::spawn_command("mctc-collector", command, &dir.path().join("second.log"))
            .unwrap();
    // The registry record is already in the shared database, so the second
    // instance has nothing to log about it; "subscribed" is logged once the
    // broker granted its subscriptions (the link's `Subscribed`).
    assert!(
        mctc_tests::wait_until(WAIT, || second.log().contains("subscribed to lineage")).is_some(),
        "{}",
        second.log()
    );
    let mut client = fleet.device_client(&device).await;
    send_all(&client, &device, 64).await;
    ack_through(&mut client, Some(N as u64 - 1)).await;
    let stored = fleet.collector.records(&device.id);
    assert_eq!(stored.len(), N);
    assert!(
        stored
            .iter()
            .enumerate()
            .all(|(i, (seq, bytes))| *seq == i as u64 && *bytes == device.records[i])
    );
    assert!(
        fleet.collector.anomalies(&device.id).is_empty(),
        "{:?}",
        fleet.collector.anomalies(&device.id)
    );
    // The second instance took its share (Mosquitto hands shared
    // subscriptions out in turn; a batch it got ahead of the other
    // instance's commit is held as pending and appended by whichever instance
    // handles the next batch), and no write failed.
    assert!(
        second.log().contains("lineage batch handled"),
        "{}",
        second.log()
    );
    for log in [fleet.collector.proc.log(), second.log()] {
        assert!(!log.contains("store failed"), "{log}");
    }
    fleet.alert_free().await;
}

/// A device floods its own lineage topic with payloads too large to be a
/// batch and with junk. The collector keeps its one broker session, drops
/// the excess before decoding (counted, reported once per device and
/// interval, not per message), records what it admitted as one anomaly
/// row, and serves another device throughout; the flooding device's
/// genuine lineage, resent as an agent resends, lands once it slows down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_device_is_rate_limited_before_decoding_and_nobody_else_waits() {
    const FLOOD: usize = 200;
    let mut a = Device::new("pos-1").await;
    a.write(10, 5).await;
    let mut b = Device::new("pos-2").await;
    b.write(10, 5).await;
    let fleet = Fleet::start(
        &a,
        "device_burst = 8\ndevice_batches_per_sec = 2\nalert_interval_ms = 1000",
    )
    .await;
    fleet.register(&b, 1, DeviceStatus::Active).await;
    fleet.collector.wait_log("pos-2", WAIT);
    let mut client_a = fleet.device_client(&a).await;
    let mut client_b = fleet.device_client(&b).await;

    let topic = lineage_topic(&a.id);
    for i in 0..FLOOD {
        // Above the batch limit and below the broker's packet limit, so
        // the broker delivers it; and small junk in between.
        let payload = if i % 2 == 0 {
            vec![0x5b; 100 * 1024]
        } else {
            vec![0xff; 100]
        };
        client_a.publish(&topic, payload, false).await;
        if i == FLOOD / 2 {
            send(&client_b, &b.id, &b.records).await;
        }
    }
    assert_eq!(ack_through(&mut client_b, Some(9)).await.anomaly, None);
    // Every admitted message is answered (an undecodable ack at the head);
    // the rest was dropped before decoding.
    let log_has_totals = |log: &str| {
        log.lines()
            .rev()
            .filter(|l| l.contains("lineage dropped before decoding") && l.contains("pos-1"))
            .filter_map(|l| {
                let field = |name: &str| -> Option<u64> {
                    let (_, rest) = l.split_once(&format!("{name}="))?;
                    rest.split_whitespace().next()?.parse().ok()
                };
                Some((field("total_rate_limited")?, field("total_oversize")?))
            })
            .next()
    };
    let mut totals = None;
    let accounted = mctc_tests::wait_until(WAIT, || {
        totals = log_has_totals(&fleet.collector.proc.log());
        totals.is_some_and(|(limited, _)| limited > 0)
            && fleet
                .collector
                .anomalies(&a.id)
                .first()
                .is_some_and(|(_, _, count)| {
                    *count + totals.map_or(0, |(limited, _)| limited) == FLOOD as u64
                })
    });
    let log = fleet.collector.proc.log();
    assert!(
        accounted.is_some(),
        "drops {totals:?}, anomalies {:?}:\n{log}",
        fleet.collector.anomalies(&a.id)
    );
    let (limited, oversize) = totals.unwrap();
    let anomalies = fleet.collector.anomalies(&a.id);
    assert_eq!(anomalies.len(), 1, "{anomalies:?}");
    assert_eq!(anomalies[0].0, "undecodable");
    let admitted = anomalies[0].2;
    eprintln!(
        "{FLOOD} flood messages: {admitted} admitted ({oversize} oversize), {limited} rate-limited"
    );
    assert!(
        limited >= FLOOD as u64 - 16,
        "{limited} of {FLOOD} rate-limited"
    );
    assert!(oversize >= 1 && oversize <= admitted, "{oversize} oversize");
    let acks = acks_within(&mut client_a, Duration::from_millis(500)).await;
    assert!(acks.len() as u64 <= admitted, "{} acks", acks.len());
    // Reported per interval, not per message.
    let lines = log
        .lines()
        .filter(|l| l.contains("lineage dropped before decoding"))
        .count();
    assert!((1..=10).contains(&lines), "{lines} drop lines");
    // One broker session from start to end.
    assert_eq!(log.matches("broker session up").count(), 1, "{log}");
    assert!(!log.contains("broker session down"), "{log}");
    assert!(fleet.collector.anomalies(&b.id).is_empty());

    // Recovery: the device behaves and resends until acked, as agents do.
    let deadline = Instant::now() + WAIT;
    loop {
        send(&client_a, &a.id, &a.records).await;
        let acks = acks_within(&mut client_a, Duration::from_millis(600)).await;
        if acks
            .iter()
            .any(|x| x.through_seq == Some(9) && x.anomaly.is_none())
        {
            break;
        }
        assert!(Instant::now() < deadline, "never acked after the flood");
    }
    assert_eq!(fleet.collector.records(&a.id).len(), 10);
    assert_eq!(fleet.collector.records(&b.id).len(), 10);
}

/// A database another process holds locked is the collector's transient
/// failure, not the device's: the running collector logs it as busy, sends
/// nothing while it lasts (no ack, no anomaly), and acks the batch by
/// itself once the lock is gone; the device never resent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_database_delays_the_ack_and_is_never_the_devices_anomaly() {
    let mut device = Device::new("pos-1").await;
    device.write(6, 3).await;
    let mut fleet = Fleet::start(&device, "").await;
    let mut client = fleet.device_client(&device).await;
    send(&client, &device.id, &device.records[0..3]).await;
    ack_through(&mut client, Some(2)).await;

    let other = rusqlite::Connection::open(&fleet.collector.db).unwrap();
    other.execute_batch("BEGIN IMMEDIATE;").unwrap();
    send(&client, &device.id, &device.records[3..6]).await;
    // After the busy timeout the worker reports the failure as ours.
    fleet
        .collector
        .wait_log("database busy; nothing acknowledged", WAIT);
    let during = acks_within(&mut client, Duration::from_millis(300)).await;
    assert!(during.is_empty(), "answered while busy: {during:?}");
    other.execute_batch("ROLLBACK;").unwrap();
    let ack = ack_through(&mut client, Some(5)).await;
    assert_eq!((ack.anomaly, ack.at_seq), (None, None));
    assert_eq!(fleet.collector.records(&device.id).len(), 6);
    assert!(fleet.collector.anomalies(&device.id).is_empty());
    let _ = fleet.alert_free().await;
    let log = fleet.collector.proc.log();
    assert!(
        !log.contains("store failed"),
        "not a lasting failure:\n{log}"
    );
}

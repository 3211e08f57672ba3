//! Issue 13, part 2, end to end: an attacker holding one device's
//! certificate floods that device's own lineage topic with 300 KB
//! payloads (the ones that used to end the collector's MQTT session, once
//! per publish), 100 KB payloads and small junk, while two real agents
//! keep deciding. Real broker (TLS, the shipped ACL), real authority,
//! collector and agents.
//!
//! Proven: the collector keeps its one broker session throughout (its log
//! and the broker's); the flood is dropped and counted (before decoding:
//! the drop report; what was admitted: the `undecodable` anomaly counts,
//! bounded rows); the other device's lineage keeps being acknowledged
//! without a single resend and arrives complete; the flooded device's own
//! lineage, rate-limited during the flood, arrives complete afterwards.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use mctc_collector::store::sqlite::SqliteStore;
use mctc_collector::store::{AnomalyKind, Store};
use mctc_shim::lineage::{Body, Record, VerdictCode};
use mctc_shim::{DeviceId, Message};
use mctc_tests::fleet::{Burst, Device, Fleet, MqttClient, wait_all_acked};
use mctc_tests::wait_until;

/// Small junk payloads; far more than the default burst (1024 batches), so
/// the per-device rate limit must act.
const JUNK: usize = 12_000;
/// Large payloads per size.
const LARGE: usize = 20;

/// Every answered permit is stored at the collector as that permit, and
/// the stored chain reaches `through`.
fn check_permits(db: &Path, device: &Device, through: u64, permits: &[(u64, String)]) {
    let store = SqliteStore::open(db).unwrap();
    let id = DeviceId::new(&device.id).unwrap();
    let head = store.head(&id).unwrap().expect("a stored chain");
    assert!(
        head.next_seq > through,
        "{}: head {}",
        device.id,
        head.next_seq
    );
    assert!(!permits.is_empty(), "{}: no permits answered", device.id);
    for (seq, reference) in permits {
        let bytes = store
            .record(&id, *seq)
            .unwrap()
            .unwrap_or_else(|| panic!("{}: permit {seq} ({reference}) lost", device.id));
        match Record::decode(&bytes).unwrap().body {
            Body::Decision(d) => {
                assert_eq!(d.verdict, VerdictCode::Permit, "seq {seq}");
                assert_eq!(d.reference.map(|r| r.0), Some(reference.as_str()));
            }
            other => panic!("{}: seq {seq} holds {other:?}", device.id),
        }
    }
}

/// The last `total_rate_limited` and `total_oversize` the collector logged.
fn drop_totals(log: &str, device: &str) -> Option<(u64, u64)> {
    log.lines()
        .rev()
        .filter(|l| l.contains("lineage dropped before decoding"))
        .filter(|l| l.contains(&format!("device={device}")))
        .filter_map(|l| {
            let field = |name: &str| -> Option<u64> {
                let (_, rest) = l.split_once(&format!(" {name}="))?;
                rest.split_whitespace().next()?.parse().ok()
            };
            Some((field("total_rate_limited")?, field("total_oversize")?))
        })
        .next()
}

/// Undecodable anomalies of `device` at the collector: kept rows' counts
/// plus those counted beyond the bound; and the number of rows.
fn undecodable(db: &Path, device: &str) -> (u64, usize) {
    let store = SqliteStore::open(db).unwrap();
    let id = DeviceId::new(device).unwrap();
    let rows: Vec<_> = store
        .anomalies(Some(&id))
        .unwrap()
        .into_iter()
        .filter(|a| a.kind == AnomalyKind::Undecodable)
        .collect();
    let overflow: u64 = store
        .anomaly_overflow(Some(&id))
        .unwrap()
        .iter()
        .filter(|o| o.kind == AnomalyKind::Undecodable)
        .map(|o| o.count)
        .sum();
    (
        rows.iter().map(|a| a.count).sum::<u64>() + overflow,
        rows.len(),
    )
}

fn resends(device: &Device) -> usize {
    device.log().matches("no lineage ack; resending").count()
}

/// Owns the fault "device floods its own lineage topic"
/// (`xtask/src/chaos/owners.rs`).
#[test]
fn a_device_flooding_its_lineage_topic_cannot_knock_the_collector_off_or_stall_others() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    fleet.start_collector();
    let mut victim = fleet.device("flood-victim", "locker");
    victim.bring_up();
    let mut honest = fleet.device("flood-honest", "locker");
    honest.bring_up();
    wait_all_acked(&fleet, &victim);
    wait_all_acked(&fleet, &honest);
    let db = fleet.dir.path().join("collector.db");
    let honest_resends = resends(&honest);

    let honest_burst = Burst::start(&honest, 2);
    let victim_burst = Burst::start(&victim, 2);
    assert!(wait_until(Duration::from_secs(30), || honest_burst.count() >= 50).is_some());
    let honest_acked_before = honest.status()["lineage"]["acked_seq"].as_u64().unwrap();

    // The attack, each size from its own connection: a broker that refuses
    // a packet over its max_packet_size disconnects the sender, and a new
    // clean session drops whatever that client still had queued. Each
    // phase ends with a marker; the attacker reads its own topic, so the
    // marker coming back means the broker took everything before it.
    let topic = format!("mctc/v1/dev/{}/lineage", victim.id);
    // A device may not read its own lineage topic: an observer sees what
    // the broker took.
    let observer = MqttClient::connect(
        &fleet.broker,
        mctc_tests::OBSERVER,
        "flood-observer",
        &[&topic],
    );
    let started = Instant::now();
    let mut large_refused = false;
    for (client_id, count, payload) in [
        ("attacker-300k", LARGE, vec![0x5b; 300 * 1000]),
        ("attacker-100k", LARGE, vec![0xa5; 100 * 1000]),
        ("attacker-junk", JUNK, vec![0xff; 64]),
    ] {
        let attacker = MqttClient::connect(&fleet.broker, &victim.id, client_id, &[]);
        for _ in 0..count {
            attacker.publish(&topic, &payload, false);
        }
        let marker = format!("end of {client_id}").into_bytes();
        attacker.publish(&topic, &marker, false);
        let reconnected = || {
            fleet
                .broker
                .log()
                .matches(&format!(" as {client_id} "))
                .count()
                > 1
        };
        let echoed = || observer.received_on(&topic).contains(&marker);
        let ended = wait_until(Duration::from_secs(60), || echoed() || reconnected());
        assert!(
            ended.is_some(),
            "{client_id}: the broker neither took nor refused the flood"
        );
        if !echoed() {
            // Only a broker whose packet limit is below 300 KB may refuse.
            assert!(
                payload.len() > mctc_service::link::BROKER_MAX_PACKET,
                "{client_id}: refused by the broker"
            );
            large_refused = true;
        }
    }
    let attack_secs = started.elapsed().as_secs_f64();

    // The honest device's lineage keeps being acknowledged during and after
    // the flood, with no resend needed.
    let moved = wait_until(Duration::from_secs(30), || {
        honest.status()["lineage"]["acked_seq"]
            .as_u64()
            .is_some_and(|acked| acked > honest_acked_before + 50)
    });
    assert!(
        moved.is_some(),
        "honest lineage stalled at {honest_acked_before}: {}",
        honest.status()
    );

    // Dropped and counted: everything the broker delivered (the 100 KB,
    // the junk and the markers; the 300 KB too unless the broker refused
    // them) is either rate-limited before decoding or admitted, recorded as
    // an undecodable anomaly and answered. (The victim's own agent adds its
    // genuine batches to the rate-limited count, hence at least.)
    let must_arrive = (LARGE + JUNK + 2) as u64 + if large_refused { 0 } else { LARGE as u64 + 1 };
    let mut seen = (None, (0, 0));
    let counted = wait_until(Duration::from_secs(60), || {
        let totals = drop_totals(&fleet.collector_log(), &victim.id);
        let admitted = undecodable(&db, &victim.id);
        seen = (totals, admitted);
        totals.is_some_and(|(limited, _)| limited + admitted.0 >= must_arrive)
    });
    assert!(
        counted.is_some(),
        "flood not accounted for: drops {:?}, undecodable {:?}\n{}",
        seen.0,
        seen.1,
        fleet.collector_log()
    );
    let (limited, oversize) = seen.0.unwrap();
    let (admitted, rows) = seen.1;
    assert!(oversize >= 1, "no oversize drop counted");
    assert!(limited >= 1, "nothing rate-limited");
    assert!(
        rows <= mctc_collector::store::DEFAULT_ANOMALY_ROWS_PER_KIND as usize,
        "{rows} anomaly rows"
    );

    let honest_permits = honest_burst.stop();
    let victim_permits = victim_burst.stop();

    // Nothing lost: both devices' answered permits are at the collector,
    // the flooded one's too, once its resends got through.
    let honest_through = wait_all_acked(&fleet, &honest);
    let victim_through = wait_all_acked(&fleet, &victim);
    check_permits(&db, &honest, honest_through, &honest_permits);
    check_permits(&db, &victim, victim_through, &victim_permits);
    let store = SqliteStore::open(&db).unwrap();
    let honest_id = DeviceId::new(&honest.id).unwrap();
    let honest_anomalies = store.anomalies(Some(&honest_id)).unwrap();
    assert!(honest_anomalies.is_empty(), "{honest_anomalies:?}");
    assert_eq!(
        resends(&honest),
        honest_resends,
        "the honest device had to resend:\n{}",
        honest.log()
    );

    // One collector session from start to end, as the collector and the
    // broker saw it.
    let log = fleet.collector_log();
    assert_eq!(log.matches("broker session up").count(), 1, "{log}");
    assert!(!log.contains("broker session down"), "{log}");
    let broker_log = fleet.broker.log();
    assert_eq!(
        broker_log.matches(" as mctc-collector-").count(),
        1,
        "the collector connected more than once:\n{broker_log}"
    );
    let drop_lines = log.matches("lineage dropped before decoding").count();
    eprintln!(
        "attack: {LARGE} × 300 KB, {LARGE} × 100 KB, {JUNK} × 64 B in {attack_secs:.1} s; \
         collector: {limited} rate-limited, {oversize} oversize, {admitted} undecodable \
         ({rows} rows), {drop_lines} drop report lines; 300 KB refused by the broker: \
         {large_refused}; honest: {} permits, victim: {} permits",
        honest_permits.len(),
        victim_permits.len()
    );
    assert!(drop_lines <= 20, "{drop_lines} drop report lines");
}

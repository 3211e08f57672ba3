//! Two authority instances on one database behind a shared subscription:
//! both serve devices, no nonce is ever accepted twice, only one publishes
//! the heartbeat and the other takes over when it dies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use mctc_shim::artifact::Claims;
use mctc_shim::gate::verify_heartbeat;
use mctc_shim::messages::{EnrollStatus, NoncePurpose, RefusalCode};
use mctc_shim::topics::{DeviceTopic, HEARTBEAT};
use mctc_shim::{Message, RingCrypto, Signed};

const ROUNDS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_load_without_double_issuing_a_nonce() {
    let mut fleet = Fleet::new();
    let limits =
        "[limits]\nrequest_burst = 200\nrequests_per_minute = 60000\nmax_outstanding_nonces = 64";
    let a = fleet.write_config("a.toml", &format!("{limits}\n"));
    let b = fleet.write_config("b.toml", &format!("{limits}\n"));
    // Instance names go before the first table.
    for (path, name) in [(&a, "a"), (&b, "b")] {
        let text = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, format!("instance = \"{name}\"\n{text}")).unwrap();
    }
    let ia = fleet.start_with(&a);
    let ib = fleet.start_with(&b);

    let mut devices = Vec::new();
    for i in 0..3 {
        let name = format!("locker-{i}");
        let mut device = Device::new(&fleet, &name).await;
        fleet.add(&name, "locker", &["--ek-sha256", &device.ek_sha256_hex()]);
        assert_eq!(device.enroll().await, EnrollStatus::Ok);
        devices.push(device);
    }

    // Every device attests ROUNDS times, all devices at once.
    let started = Instant::now();
    let rounds: Vec<_> = devices
        .into_iter()
        .map(|mut device| {
            tokio::spawn(async move {
                let mut nonces = Vec::new();
                let mut evidence = Vec::new();
                for _ in 0..ROUNDS {
                    let nonce = device.nonce().await;
                    let e = device.evidence(nonce, &[0, 7]).await;
                    device.submit(e.clone()).await.artifact();
                    nonces.push(nonce);
                    evidence.push(e);
                }
                (device, nonces, evidence)
            })
        })
        .collect();
    let mut results = Vec::new();
    for r in rounds {
        results.push(r.await.unwrap());
    }
    let elapsed = started.elapsed();
    let issued = results.len() * ROUNDS;
    eprintln!(
        "{issued} nonce+quote+artifact round trips over two instances in {elapsed:?} ({:.1}/s)",
        issued as f64 / elapsed.as_secs_f64()
    );

    let mut all = HashSet::new();
    for (_, nonces, _) in &results {
        for n in nonces {
            assert!(all.insert(*n), "a nonce was issued twice");
        }
    }
    let served = |i: usize| fleet.log(i).matches("artifact issued").count();
    assert_eq!(served(ia) + served(ib), issued);
    assert!(
        served(ia) > 0 && served(ib) > 0,
        "a: {}, b: {}",
        served(ia),
        served(ib)
    );

    // Every piece of evidence replayed: whichever instance gets it, the
    // nonce is gone.
    for (device, _, evidence) in &mut results {
        for e in evidence.iter().take(3) {
            assert_eq!(
                device.submit(e.clone()).await.refusal().reason,
                RefusalCode::StaleNonce
            );
        }
    }

    // A burst of nonce requests, spread over both instances: all distinct.
    let (device, _, _) = &mut results[0];
    for _ in 0..20 {
        device
            .send(
                DeviceTopic::NonceRequest,
                device.nonce_request(NoncePurpose::FreshOp),
            )
            .await;
    }
    let mut burst = HashSet::new();
    for _ in 0..20 {
        let bytes = device.next(DeviceTopic::Nonce, ANSWER).await.unwrap();
        let n = mctc_shim::messages::Nonce::decode(&bytes).unwrap().nonce.0;
        assert!(burst.insert(n) && !all.contains(&n));
    }
    // Throughput: BATCH nonce requests at once, then BATCH pieces of
    // evidence at once (quotes made in between), both instances serving.
    const BATCH: usize = 40;
    let started = Instant::now();
    for _ in 0..BATCH {
        device
            .send(
                DeviceTopic::NonceRequest,
                device.nonce_request(NoncePurpose::Renew),
            )
            .await;
    }
    let mut batch = Vec::new();
    for _ in 0..BATCH {
        let bytes = device.next(DeviceTopic::Nonce, ANSWER).await.unwrap();
        batch.push(mctc_shim::messages::Nonce::decode(&bytes).unwrap().nonce.0);
    }
    let nonce_time = started.elapsed();
    let mut quotes = Vec::new();
    for n in &batch {
        quotes.push(device.evidence(*n, &[0, 7]).await);
    }
    let started = Instant::now();
    for q in quotes {
        device.send(DeviceTopic::Evidence, q).await;
    }
    for _ in 0..BATCH {
        let bytes = device.next(DeviceTopic::Artifact, ANSWER).await.unwrap();
        device.open_answer(&bytes).artifact();
    }
    let evidence_time = started.elapsed();
    eprintln!(
        "throughput over two instances: {BATCH} nonces in {nonce_time:?} ({:.0}/s), {BATCH} artifacts in {evidence_time:?} ({:.0}/s)",
        BATCH as f64 / nonce_time.as_secs_f64(),
        BATCH as f64 / evidence_time.as_secs_f64()
    );

    // Two evidence messages for one nonce in flight at once: one artifact.
    let nonce = device.nonce().await;
    let e = device.evidence(nonce, &[0, 7]).await;
    device.send(DeviceTopic::Evidence, e.clone()).await;
    device.send(DeviceTopic::Evidence, e).await;
    let mut artifacts = 0;
    let mut stale = 0;
    for _ in 0..2 {
        let bytes = device.next(DeviceTopic::Artifact, ANSWER).await.unwrap();
        match device.open_answer(&bytes) {
            Answer::Artifact(a) => {
                assert_eq!(
                    Claims::open(&a, &fleet.keys(), &RingCrypto)
                        .unwrap()
                        .nonce
                        .0,
                    nonce
                );
                artifacts += 1;
            }
            Answer::Refusal(r) => {
                assert_eq!(r.reason, RefusalCode::StaleNonce);
                stale += 1;
            }
        }
    }
    assert_eq!((artifacts, stale), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_publishes_the_heartbeat_and_another_takes_over() {
    let mut fleet = Fleet::new();
    let mut monitor = fleet.client("mctc-monitor", &[HEARTBEAT]).await;
    let observed = fleet.write_config("observed.toml", "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let first = fleet.start_with(&observed);
    let second = fleet.start_with(&observed);

    // Over ~4 s: about one heartbeat a second, not two, strictly increasing.
    let mut seqs = Vec::new();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        if let Some(bytes) = monitor.next_on(HEARTBEAT, Duration::from_millis(200)).await {
            let hb = verify_heartbeat(&bytes, &fleet.keys(), &RingCrypto).unwrap();
            seqs.push(hb.message().seq);
        }
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!((3..=6).contains(&seqs.len()), "one publisher: {seqs:?}");

    // The lease holder dies; the other instance keeps the fleet alive within
    // the shortest device window (3 s).
    let taken = "heartbeat lease taken";
    let (leader, follower) = if fleet.log(first).contains(taken) {
        (first, second)
    } else {
        (second, first)
    };
    assert!(fleet.log(leader).contains(taken));
    assert!(!fleet.log(follower).contains(taken), "only one leader");

    // /metrics and the retained service status say the same.
    let mut status = fleet
        .client("mctc-monitor", &[mctc_service::status::ALL_STATUS_TOPICS])
        .await;
    assert_eq!(leader_gauge(&fleet, leader), 1, "{}", fleet.log(leader));
    assert_eq!(leader_gauge(&fleet, follower), 0);
    let says = statuses_until(&mut status, |s| {
        said(s, &fleet, leader) == Some((true, true))
            && said(s, &fleet, follower) == Some((true, false))
    })
    .await;
    assert!(says.is_some(), "statuses never named the leader");

    fleet.kill(leader);
    let last = *seqs.last().unwrap();
    monitor.clear(HEARTBEAT);
    let killed = Instant::now();
    let mut gap = None;
    while killed.elapsed() < Duration::from_secs(6) {
        if let Some(bytes) = monitor.next_on(HEARTBEAT, Duration::from_millis(100)).await {
            let hb = verify_heartbeat(&bytes, &fleet.keys(), &RingCrypto).unwrap();
            if hb.message().seq > last {
                gap = Some(killed.elapsed());
                break;
            }
        }
    }
    let gap = gap.expect("heartbeats resumed");
    eprintln!("heartbeat failover after {gap:?}");
    assert!(gap < Duration::from_millis(3000), "{gap:?}");
    assert!(fleet.log(follower).contains(taken));
    // The new leader says so; the dead one's Last Will says it is gone.
    let says = statuses_until(&mut status, |s| {
        said(s, &fleet, leader) == Some((false, false))
            && said(s, &fleet, follower) == Some((true, true))
    })
    .await;
    assert!(says.is_some(), "statuses never followed the failover");
    assert_eq!(leader_gauge(&fleet, follower), 1);
}

/// `mctc_authority_heartbeat_leader` of instance `index`, scraped.
fn leader_gauge(fleet: &Fleet, index: usize) -> i64 {
    let log = fleet.log(index);
    let addr = mctc_tests::scrape::addr_from_log(&log).expect("metrics address");
    let answer = mctc_tests::scrape::get_metrics(addr).expect("a scrape");
    assert_eq!(answer.status, 200);
    mctc_tests::scrape::value(&answer.body, "mctc_authority_heartbeat_leader", "") as i64
}

/// The latest status of each topic, as (online, leader).
type Statuses = std::collections::HashMap<String, (bool, bool)>;

/// (online, leader) of instance `index` in `statuses`.
fn said(statuses: &Statuses, fleet: &Fleet, index: usize) -> Option<(bool, bool)> {
    let log = fleet.log(index);
    let instance = log
        .split("client_id=\"mctc-authority-")
        .nth(1)?
        .split('"')
        .next()?;
    statuses
        .get(&format!("mctc/v1/service/authority/{instance}/status"))
        .copied()
}

/// Reads status messages until `done` holds for the latest of each topic
/// (or 30 s pass).
async fn statuses_until(client: &mut Client, done: impl Fn(&Statuses) -> bool) -> Option<Statuses> {
    let mut latest = Statuses::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if done(&latest) {
            return Some(latest);
        }
        if let Some((topic, payload, _)) = client.next(Duration::from_millis(200)).await {
            let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            latest.insert(topic, (json["state"] == "online", json["leader"] == true));
        }
    }
    done(&latest).then_some(latest)
}

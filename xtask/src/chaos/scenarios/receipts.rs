//! Forged lineage acknowledgements (issue 13, part 3): with the collector
//! down, someone holding a broker key that may write the device's
//! `lineage/ack` topic (the device's own no longer may; the collector's
//! broker certificate without its receipt key) publishes acks claiming
//! everything is acknowledged: the old unsigned ack,
//! receipts signed by a key of their own, and a genuine receipt replayed.
//! Before receipts the agent believed them, pruned, and kept trading with
//! nothing collected. Now it must prune nothing, so its store fills and the
//! gate denies at the quota; once the collector is back every record
//! reaches it, the gate reopens, the device prunes again on the genuine
//! receipts and the collector saw no anomaly.
//!
//! This row owns the fault for `cargo xtask test` (`chaos/owners.rs`); the
//! agent's `receipts.rs` keeps the receipts no row forges (another
//! device's, a seq never written, another record) and the bundle checks.

use std::time::{Duration, Instant};

use mctc_shim::lineage::{Body, Record};
use mctc_shim::messages::LineageAck;
use mctc_shim::wire::{Bytes, Version};
use mctc_shim::{DeviceId, Message, Receipt, RingCrypto, RingSigner};
use mctc_tests::fleet::MqttClient;

use super::{Outcome, reason, recover_and_account, watch};
use crate::chaos::broken::{Broken, Context};
use crate::chaos::probe::{self, Probe};
use crate::chaos::rig::{Dev, RECOVERY, Rig, ms};

/// The acks a forger publishes claiming everything through `seq`; with
/// `checkpoint`, also a receipt that names the device's newest checkpoint
/// by its true hash (read from the device's disk), so only the signature
/// is wrong.
fn forged(
    device: &DeviceId,
    seq: u64,
    checkpoint: Option<(u64, [u8; 32])>,
    rogue: &RingSigner,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let unsigned = LineageAck {
        v: Version::CURRENT,
        device: device.clone(),
        through_seq: Some(seq),
        anomaly: None,
        at_seq: None,
    };
    let mut buf = [0u8; 2048];
    if let Ok(bytes) = unsigned.encode(&mut buf) {
        out.push(bytes.to_vec());
    }
    let receipt = Receipt {
        v: Version::CURRENT,
        device: device.clone(),
        seq,
        hash: Bytes([0; 32]),
        time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        checkpoint: Some(seq),
        anomaly: None,
        at_seq: None,
        log_checkpoint: None,
        inclusion_proof: None,
    };
    if let Ok(bytes) = receipt.sign(rogue, &RingCrypto, &mut buf) {
        out.push(bytes.to_vec());
    }
    if let Some((at, hash)) = checkpoint {
        let exact = Receipt {
            seq: at,
            hash: Bytes(hash),
            checkpoint: Some(at),
            ..receipt
        };
        if let Ok(bytes) = exact.sign(rogue, &RingCrypto, &mut buf) {
            out.push(bytes.to_vec());
        }
    }
    out
}

/// The newest checkpoint record on the device's disk: (seq, record hash).
fn last_checkpoint(dev: &Dev) -> Option<(u64, [u8; 32])> {
    let disk = dev.disk().ok()?;
    disk.records.iter().rev().find_map(|r| {
        matches!(Record::decode(&r.bytes).ok()?.body, Body::Checkpoint(_))
            .then_some((r.seq, r.hash))
    })
}

fn lineage_u64(status: &serde_json::Value, key: &str) -> Option<u64> {
    status["lineage"][key].as_u64()
}

pub fn forged_acks(rig: &mut Rig) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let anomalies_before = rig.collected(&rig.main).map_or(0, |c| c.anomalies.len());
    let dev = &rig.main;
    let device = DeviceId::new(dev.id()).context("device id")?;
    let topic = dev.topic("lineage/ack");
    // The broker no longer lets the device's own certificate write its ack
    // topic (tests/tests/broker_smoke.rs); the forger holds one that may
    // (the collector's broker certificate, without its receipt key). A
    // reader captures a genuine receipt to replay later.
    let forger = MqttClient::connect(&rig.fleet.broker, "mctc-collector", "chaos-ack-forger", &[]);
    let reader = MqttClient::connect(
        &rig.fleet.broker,
        mctc_tests::OBSERVER,
        "chaos-ack-reader",
        &[topic.as_str()],
    );
    let rogue = RingSigner::from_seed(&[0x66; 32]).context("rogue key")?;
    let probe = watch(dev, "forged-acks");
    let captured = mctc_tests::wait_until(Duration::from_secs(10), || {
        reader
            .received_on(&topic)
            .iter()
            .any(|p| p.first() == Some(&0xd2))
    });
    let genuine = reader
        .received_on(&topic)
        .into_iter()
        .find(|p| p.first() == Some(&0xd2));
    out.require(captured.is_some() && genuine.is_some(), || {
        "no genuine receipt seen before the fault".into()
    });

    let cut = Instant::now();
    let mark = super::log_mark(&rig.main);
    rig.fleet.kill_collector();
    let dev = &rig.main;
    let before = dev.status();
    let first_before = dev.disk().ok().and_then(|d| d.first_seq());
    let rejected_before = lineage_u64(&before, "rejected_receipts").unwrap_or(0);
    let burst: Vec<Probe> = (0..8)
        .map(|i| Probe::start(&dev.device.socket, &format!("forged-acks-{i}")))
        .collect();
    let mut published = 0u64;
    let mut signed = 0u64;
    let mut polls = 0u32;
    let mut checkpoint = last_checkpoint(dev);
    let full = mctc_tests::wait_until(Duration::from_secs(90), || {
        let status = dev.status();
        let next = lineage_u64(&status, "next_seq").unwrap_or(1);
        // The disk is read (and its chain verified) every 20th round only.
        polls += 1;
        if polls % 20 == 0 {
            checkpoint = last_checkpoint(dev).or(checkpoint);
        }
        for ack in forged(&device, next.saturating_sub(1), checkpoint, &rogue)
            .into_iter()
            .chain(genuine.clone())
        {
            forger.publish(&topic, &ack, false);
            published += 1;
            // COSE_Sign1 (tag 18): a receipt, which the agent counts.
            signed += u64::from(ack.first() == Some(&0xd2));
        }
        status["lineage"]["health"] == "quota-reached"
    });
    let full_at = Instant::now();
    let why = reason(dev);
    // Past the quota the forger goes on; nothing may be permitted.
    for _ in 0..20 {
        let next = lineage_u64(&dev.status(), "next_seq").unwrap_or(1);
        for ack in forged(&device, next.saturating_sub(1), checkpoint, &rogue) {
            forger.publish(&topic, &ack, false);
        }
        // Paces the forger (the fault), ten rounds a second.
        super::sleep_ms(100);
    }
    let status = dev.status();
    let first_after = dev.disk().ok().and_then(|d| d.first_seq());
    let logged = dev
        .device
        .log()
        .get(mark..)
        .is_some_and(|l| l.contains("lineage receipt rejected"));
    let rejected = lineage_u64(&status, "rejected_receipts").unwrap_or(0) - rejected_before;
    let mut seen_burst = Vec::new();
    for b in burst {
        seen_burst.extend(b.stop());
    }
    drop(forger);
    // What the collector held when it went down: a genuine receipt can
    // name nothing beyond it (one still in flight at the kill may land).
    let held = rig.collected(&rig.main).map(|c| c.next_seq());
    rig.fleet.start_collector();
    let back = Instant::now();
    let dev = &rig.main;
    let seen = probe.observations();
    out.forbid_permits(&seen, full_at, back);
    out.forbid_permits(&seen_burst, full_at, back);
    // The request that found the store full was refused for it (later
    // ones get the closed gate's deny).
    let refused_for_lineage = seen
        .iter()
        .chain(&seen_burst)
        .any(|o| o.sent >= cut && o.denied_for("lineage-unavailable"));
    out.require(full.is_some(), || {
        "the quota never filled: forged acks got lineage pruned".into()
    });
    out.require(why == "lineage-unavailable", || {
        format!("closed for `{why}`")
    });
    out.require(first_after == first_before, || {
        format!("pruned on forged acks: first record on disk {first_before:?} → {first_after:?}")
    });
    let acked = lineage_u64(&status, "acked_seq");
    let pruned = lineage_u64(&status, "pruned_through");
    out.require(
        matches!(&held, Ok(next) if acked.is_none_or(|a| a < *next))
            && pruned.is_none_or(|p| acked.is_some_and(|a| p <= a)),
        || format!("acknowledged beyond what the collector held ({held:?}): {status}"),
    );
    // Every forged or replayed receipt is counted (QoS 0 under load may
    // lose some on the way: half of them at least).
    out.require(rejected > 0 && rejected >= signed / 2, || {
        format!("{rejected} of {signed} forged or replayed receipts counted as rejected")
    });
    out.require(logged, || "no `lineage receipt rejected` logged".into());
    out.require(refused_for_lineage, || {
        "no request refused `lineage-unavailable` at the quota".into()
    });
    out.close_ms = full.map(|_| ms(full_at - cut));
    out.observed = format!(
        "{published} forged acks published, {rejected} receipts rejected, nothing pruned; closed at the quota ({why}) after {} ms",
        ms(full_at - cut)
    );
    let burst_permits = probe::permits(&seen_burst);
    recover_and_account(&mut out, rig, dev, probe, back);
    let acc = rig.account_permits(dev, &burst_permits);
    out.accounted(&acc);
    // The genuine receipts prune again, and the drain raised no anomaly
    // at the collector (a gap or a duplicate would be one).
    let pruned_again = mctc_tests::wait_until(RECOVERY, || {
        dev.disk()
            .ok()
            .and_then(|d| d.first_seq())
            .is_some_and(|first| Some(first) > first_after)
    });
    out.require(pruned_again.is_some(), || {
        format!("nothing pruned on the genuine receipts: {}", dev.status())
    });
    match rig.collected(dev) {
        Ok(collected) => {
            let new = collected
                .anomalies
                .get(anomalies_before..)
                .unwrap_or_default();
            out.require(new.is_empty(), || {
                format!("anomalies at the collector after the drain: {new:?}")
            });
        }
        Err(e) => out.fail(format!("collector database: {e}")),
    }
    out.observed.push_str(&format!(
        "; {} permits accounted at the collector, no anomaly; pruned again on genuine receipts",
        acc.permits
    ));
    Ok(out)
}

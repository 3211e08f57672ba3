//! Forged lineage acknowledgements (issue 13, part 3): with the collector
//! down, someone holding a broker key that may write the device's
//! `lineage/ack` topic (the device's own no longer may; the collector's
//! broker certificate without its receipt key) publishes acks claiming
//! everything is acknowledged: the old unsigned ack,
//! receipts signed by a key of their own, and a genuine receipt replayed.
//! Before receipts the agent believed them, pruned, and kept trading with
//! nothing collected. Now it must prune nothing, so its store fills and the
//! gate denies at the quota; once the collector is back every record
//! reaches it and the gate reopens.

use std::time::{Duration, Instant};

use mctc_shim::messages::LineageAck;
use mctc_shim::wire::{Bytes, Version};
use mctc_shim::{DeviceId, Message, Receipt, RingCrypto, RingSigner};
use mctc_tests::fleet::MqttClient;

use super::{Outcome, reason, recover_and_account, watch};
use crate::chaos::broken::{Broken, Context};
use crate::chaos::probe::{self, Probe};
use crate::chaos::rig::{Rig, ms};

/// The acks a forger publishes claiming everything through `seq`.
fn forged(device: &DeviceId, seq: u64, rogue: &RingSigner) -> Vec<Vec<u8>> {
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
    out
}

fn lineage_u64(status: &serde_json::Value, key: &str) -> Option<u64> {
    status["lineage"][key].as_u64()
}

pub fn forged_acks(rig: &mut Rig) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
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
    rig.fleet.kill_collector();
    let dev = &rig.main;
    let before = dev.status();
    let first_before = dev.disk().ok().and_then(|d| d.first_seq());
    let rejected_before = lineage_u64(&before, "rejected_receipts").unwrap_or(0);
    let burst: Vec<Probe> = (0..8)
        .map(|i| Probe::start(&dev.device.socket, &format!("forged-acks-{i}")))
        .collect();
    let mut published = 0u64;
    let full = mctc_tests::wait_until(Duration::from_secs(90), || {
        let status = dev.status();
        let next = lineage_u64(&status, "next_seq").unwrap_or(1);
        for ack in forged(&device, next.saturating_sub(1), &rogue)
            .into_iter()
            .chain(genuine.clone())
        {
            forger.publish(&topic, &ack, false);
            published += 1;
        }
        status["lineage"]["health"] == "quota-reached"
    });
    let full_at = Instant::now();
    let why = reason(dev);
    // Past the quota the forger goes on; nothing may be permitted.
    for _ in 0..20 {
        let next = lineage_u64(&dev.status(), "next_seq").unwrap_or(1);
        for ack in forged(&device, next.saturating_sub(1), &rogue) {
            forger.publish(&topic, &ack, false);
        }
        // Paces the forger (the fault), ten rounds a second.
        super::sleep_ms(100);
    }
    let status = dev.status();
    let first_after = dev.disk().ok().and_then(|d| d.first_seq());
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
    out.require(rejected > 0, || "no forged receipt was counted".into());
    out.close_ms = full.map(|_| ms(full_at - cut));
    out.observed = format!(
        "{published} forged acks published, {rejected} receipts rejected, nothing pruned; closed at the quota ({why}) after {} ms",
        ms(full_at - cut)
    );
    let burst_permits = probe::permits(&seen_burst);
    recover_and_account(&mut out, rig, dev, probe, back);
    let acc = rig.account_permits(dev, &burst_permits);
    out.accounted(&acc);
    out.observed.push_str(&format!(
        "; {} permits accounted at the collector",
        acc.permits
    ));
    Ok(out)
}

//! Issue 13, part 5: an answer to evidence quoted before a close. The
//! platform drifts while a renewal is in flight; the answer to the
//! pre-drift evidence (signed with the authority's key, exactly as the
//! authority would have issued it) arrives after the close and must not
//! reopen the gate.
//!
//! To hold the renewal in flight, the real authority is killed while
//! heartbeats keep coming (signed with its key, seqs continuing its own),
//! so nothing but the drift closes the gate: the device's renewal quotes
//! the artifact's `next_nonce` and waits for an answer that only the
//! scenario gives.
//!
//! This row owns the fault for `cargo xtask test` (`chaos/owners.rs`): it
//! replaced the agent's end-to-end test `stale_evidence.rs`, whose lineage
//! check (nothing opened between the drift close and the reboot, the
//! containment recorded) it makes against the collector's copy.

use std::time::{Duration, Instant};

use mctc_shim::lineage::{Body, CloseCode, Record};
use mctc_shim::messages::{Evidence, Heartbeat};
use mctc_shim::wire::Message;
use mctc_shim::{RingCrypto, RingSigner, Signed};
use mctc_tests::fleet::{MqttClient, sha256};
use mctc_tests::wait_until;

use super::messages::{HEARTBEAT, Repeater, keys};
use super::{Outcome, closes, first_close_reason, log_mark, recover_and_account, watch};
use crate::chaos::broken::{Broken, Context};
use crate::chaos::forge::{self, ArtifactSpec};
use crate::chaos::lineage;
use crate::chaos::rig::{DRIFT_MS, HB_MS, Rig, SLACK, TTL_MS, ms, reboot};

/// What the agent logs when an artifact-topic message matches no
/// outstanding evidence (the stale answer, once the close dropped it).
const DROPPED: [&str; 3] = [
    "while no evidence is outstanding",
    "answers no outstanding nonce",
    "artifact not installed",
];

pub fn renewal_answer_after_drift(rig: &mut Rig, signer: &RingSigner) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let keys = keys(signer);
    let (seq, epoch) = rig
        .main
        .spy
        .received_on(HEARTBEAT)
        .iter()
        .filter_map(|b| Heartbeat::open(b, &keys, &RingCrypto).ok())
        .map(|h| (h.seq, h.epoch))
        .max()
        .unwrap_or((0, 0));
    let probe = watch(&rig.main, "stale");
    rig.fleet.kill_authority();
    let killed = Instant::now();
    let hb_ms = u32::try_from(HB_MS).unwrap_or(3_000);
    let beat_signer = forge::authority_signer(&rig.fleet.dir.path().join("keys/authority.key"))
        .context("the authority's key")?;
    let heartbeats = Repeater::start(rig, HEARTBEAT, move |i| {
        forge::heartbeat(seq + 1 + i, epoch, hb_ms, &beat_signer).unwrap_or_default()
    });

    // The renewal's evidence, held: nobody answers it.
    let evidence_topic = rig.main.topic("evidence");
    let held = wait_until(Duration::from_millis(TTL_MS) + SLACK, || {
        !rig.main.spy.since(&evidence_topic, killed).is_empty()
    });
    let Some((_, bytes)) = held.and_then(|_| rig.main.spy.since(&evidence_topic, killed).pop())
    else {
        heartbeats.stop();
        rig.fleet.start_authority();
        out.fail("no renewal evidence while the authority was down");
        return Ok(out);
    };
    let evidence = Evidence::decode(&bytes).context("evidence")?;
    let mut composite = Vec::new();
    for value in evidence.pcr_values.iter() {
        composite.extend_from_slice(&value.0);
    }

    // Drift while it is in flight.
    let mark = log_mark(&rig.main);
    let seq_at_drift = rig.main.status()["lineage"]["next_seq"]
        .as_u64()
        .unwrap_or(0);
    let cut = Instant::now();
    rig.main
        .device
        .swtpm
        .extend_pcr(7, b"chaos: drift under a renewal")
        .context("extend PCR 7")?;
    let drift = Duration::from_millis(DRIFT_MS);
    let closed = closes(&probe, cut, drift + SLACK);
    let why = first_close_reason(&rig.main, mark).unwrap_or_default();

    // The answer to the pre-drift evidence, after the close.
    let now = forge::unix_now();
    let spec = ArtifactSpec {
        sub: rig.main.id().to_owned(),
        nonce: evidence.nonce.0,
        boot: rig.main.boot().context("boot counters")?,
        pcr_mask: evidence.pcr_mask,
        pcr_digest: sha256(&[&composite]),
        iat: now,
        exp: now + TTL_MS / 1000 + 1,
        ttl_ms: u32::try_from(TTL_MS).unwrap_or(4_000),
        hb_ms,
        hb_seq: rig.main.status()["heartbeat_seq"].as_u64().unwrap_or(0),
        epoch,
    };
    let answer = forge::artifact(&spec, signer).context("forge the stale answer")?;
    // Written with the authority's broker identity (the spy only reads).
    let forger = MqttClient::connect(
        &rig.fleet.broker,
        "mctc-authority",
        "chaos-stale-forger",
        &[],
    );
    let answered = Instant::now();
    forger.publish(&rig.main.topic("artifact"), &answer, false);
    let dropped = wait_until(Duration::from_secs(5), || {
        let log = rig.main.device.log();
        let new = log.get(mark..).unwrap_or("");
        DROPPED.iter().any(|d| new.contains(d)) || new.contains("gate opened")
    });
    // An observation window, not a wait for an event: a gate the answer
    // had reopened would be re-closed by the next drift check, so the log
    // is read after four of them.
    std::thread::sleep(drift * 4);
    let log = rig.main.device.log();
    let reopened = log.get(mark..).unwrap_or("").contains("gate opened");
    let in_flight_ms = ms(answered.saturating_duration_since(cut));

    // Recovery: the real authority back, which contains the drifted
    // device; a reboot and the fleet manager's restore reopen it.
    heartbeats.stop();
    rig.fleet.start_authority();
    let contained = wait_until(Duration::from_secs(15), || {
        rig.main.device.state() == "contained"
    });
    reboot(&rig.fleet, &mut rig.main, true)?;
    let back = Instant::now();
    out.forbid_permits(&probe.observations(), cut + drift + SLACK, back);
    out.closed_after(&probe.observations(), cut);
    out.require(closed.is_some(), || {
        "the drift did not close the gate".into()
    });
    out.require(why == "drift-pcr", || format!("closed for `{why}`"));
    out.require(dropped.is_some(), || {
        "the agent did not handle the stale answer".into()
    });
    out.require(!reopened, || {
        "the answer to pre-drift evidence reopened the gate".into()
    });
    out.require(contained.is_some(), || {
        "the authority did not contain the device".into()
    });
    out.observed = format!(
        "closed ({why}); the answer to the pre-drift evidence, {in_flight_ms} ms after the drift, dropped; contained"
    );
    recover_and_account(&mut out, rig, &rig.main, probe, back);
    // What the lineage says, as the collector holds it (caught up by now):
    // the drift close, the containment, and nothing opened before the
    // reboot's start.
    let story = lineage::read_collector_records(&rig.collector_db(), rig.main.id(), seq_at_drift)
        .and_then(|records| no_reopen_after_drift(&records));
    if let Err(e) = story {
        out.fail(format!("lineage at the collector: {e}"));
    }
    Ok(out)
}

/// What a record means for the story of this row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    DriftClose,
    Opened,
    Contained,
    Start,
    Other,
}

fn step(body: &Body<'_>) -> Step {
    match body {
        Body::GateClosed(c) if c.reason == CloseCode::Drift => Step::DriftClose,
        Body::GateOpened(_) | Body::ArtifactInstalled(_) => Step::Opened,
        Body::GateContained(_) => Step::Contained,
        Body::AgentStart(_) => Step::Start,
        _ => Step::Other,
    }
}

/// In `records` (from before the drift on): a `GateClosed(drift)`, then up
/// to the next `AgentStart` a `GateContained` and no `GateOpened` or
/// `ArtifactInstalled`.
fn no_reopen_after_drift(records: &[(u64, Vec<u8>)]) -> Result<(), String> {
    let steps = records
        .iter()
        .map(|(seq, bytes)| {
            Record::decode(bytes)
                .map(|r| (*seq, step(&r.body)))
                .map_err(|e| format!("record {seq}: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    story_holds(&steps)
}

fn story_holds(steps: &[(u64, Step)]) -> Result<(), String> {
    let close = steps
        .iter()
        .position(|(_, s)| *s == Step::DriftClose)
        .ok_or("no drift close recorded")?;
    let after = &steps[close..];
    let restart = after
        .iter()
        .position(|(_, s)| *s == Step::Start)
        .ok_or("the reboot's start is not recorded")?;
    let between = &after[..restart];
    let opened: Vec<u64> = between
        .iter()
        .filter(|(_, s)| *s == Step::Opened)
        .map(|(seq, _)| *seq)
        .collect();
    if !opened.is_empty() {
        return Err(format!("opened on pre-drift evidence at seqs {opened:?}"));
    }
    if !between.iter().any(|(_, s)| *s == Step::Contained) {
        return Err("the containment is not recorded".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Step::*;

    fn numbered(steps: &[Step]) -> Vec<(u64, Step)> {
        steps
            .iter()
            .copied()
            .zip(10..)
            .map(|(s, n)| (n, s))
            .collect()
    }

    #[test]
    fn the_story_needs_the_close_the_containment_and_no_opening_before_the_reboot() {
        assert!(
            story_holds(&numbered(&[
                Opened, Other, DriftClose, Other, Contained, Start, Opened
            ]))
            .is_ok()
        );
        let reopened = story_holds(&numbered(&[DriftClose, Opened, Contained, Start])).unwrap_err();
        assert!(reopened.contains("[11]"), "{reopened}");
        assert!(story_holds(&numbered(&[DriftClose, Other, Start, Contained])).is_err());
        assert!(story_holds(&numbered(&[Opened, Contained, Start])).is_err());
        assert!(story_holds(&numbered(&[DriftClose, Contained])).is_err());
    }
}

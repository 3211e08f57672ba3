//! Issue 13, part 2: a device's key holder floods that device's own
//! lineage topic with payloads the broker delivers but no batch can be
//! (300 KB, 100 KB) and with junk, faster than any agent sends. Before,
//! each 300 KB publish ended the collector's MQTT session and everyone's
//! lineage stalled.
//!
//! The row passes only if the collector keeps its one session (nothing in
//! its log about a session going down or up during the row), the flood is
//! dropped and counted before decoding (the collector's drop report names
//! the device, oversize and rate-limited), the main device's gate stays
//! open with every permit at the collector, and the flooded device's own
//! lineage, rate-limited during the flood, arrives complete afterwards.

use std::time::{Duration, Instant};

use mctc_tests::fleet::MqttClient;
use mctc_tests::wait_until;

use super::{Outcome, recover_and_account, watch};
use crate::chaos::broken::Broken;
use crate::chaos::probe::{self, Probe};
use crate::chaos::rig::{LINEAGE, RECOVERY, Rig, ms};

/// Each payload from its own connection: a broker that refuses a packet
/// over its limit disconnects the sender and its queue is lost.
const FLOOD: [(&str, usize, usize); 3] = [
    ("chaos-flood-300k", 20, 300 * 1000),
    ("chaos-flood-100k", 20, 100 * 1000),
    ("chaos-flood-junk", 12_000, 64),
];

/// Sums a `name=N` field over the lines of `text` about `device`.
fn field_sum(text: &str, needle: &str, device: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.contains(needle) && l.contains(&format!("device={device} ")))
        .filter_map(|l| {
            let (_, rest) = l.split_once(&format!(" {name}="))?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

pub fn lineage_flood(rig: &mut Rig) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let mut victim = rig.device("flood", LINEAGE, Vec::new());
    victim.start()?;
    victim.must_open()?;
    let victim_id = victim.id().to_owned();
    let log_mark = rig.fleet.collector_log().len();
    let probe = watch(&rig.main, "flood-main");
    let victim_probe = Probe::start(&victim.device.socket, "flood-victim");

    let topic = victim.topic("lineage");
    // A device may not read its own lineage topic: an observer sees what
    // the broker took.
    let observer = MqttClient::connect(
        &rig.fleet.broker,
        mctc_tests::OBSERVER,
        "chaos-flood-observer",
        &[&topic],
    );
    let start = Instant::now();
    let mut delivered = 0usize;
    let mut refused = Vec::new();
    for (client_id, count, size) in FLOOD {
        let payload = vec![0xa5; size];
        let attacker = MqttClient::connect(&rig.fleet.broker, &victim_id, client_id, &[]);
        for _ in 0..count {
            attacker.publish(&topic, &payload, false);
        }
        let marker = format!("end of {client_id}").into_bytes();
        attacker.publish(&topic, &marker, false);
        let broker_refused = || {
            rig.fleet
                .broker
                .log()
                .matches(&format!(" as {client_id} "))
                .count()
                > 1
        };
        let echoed = || observer.received_on(&topic).contains(&marker);
        let ended = wait_until(RECOVERY, || echoed() || broker_refused());
        if echoed() {
            delivered += count;
        } else if ended.is_some() && size > 64 {
            // Above the broker's max_packet_size: refused there, the
            // sender disconnected; the collector never sees it.
            refused.push(size);
        } else {
            out.fail(format!(
                "{client_id}: the broker neither delivered nor refused the flood"
            ));
        }
    }
    let flood_ms = ms(start.elapsed());

    // Counted: the drop reports come at once, then once per interval.
    let needle = "lineage dropped before decoding";
    let mut counted = (0, 0);
    let reported = wait_until(Duration::from_secs(40), || {
        let log = rig.fleet.collector_log();
        let new = log.get(log_mark..).unwrap_or("");
        counted = (
            field_sum(new, needle, &victim_id, "rate_limited"),
            field_sum(new, needle, &victim_id, "oversize"),
        );
        counted.0 > 0 && counted.1 > 0
    });
    let back = Instant::now();
    let log = rig.fleet.collector_log();
    let new = log.get(log_mark..).unwrap_or("");
    let sessions = new.matches("broker session").count();
    let drop_lines = new.matches(needle).count();
    out.require(reported.is_some(), || {
        format!(
            "flood not counted (rate-limited {}, oversize {})",
            counted.0, counted.1
        )
    });
    out.require(sessions == 0, || {
        format!("the collector's broker session changed {sessions} time(s) during the flood")
    });
    out.require(drop_lines <= 20, || {
        format!("{drop_lines} drop report lines: not once per interval")
    });
    let seen = probe.observations();
    let denies = seen
        .iter()
        .filter(|o| o.sent >= start && o.sent < back && !o.is_permit())
        .count();
    out.require(denies == 0, || {
        format!("{denies} denies on the main device during another device's flood")
    });
    out.observed = format!(
        "{delivered} flood messages delivered in {flood_ms} ms{}; collector: {} rate-limited, \
         {} oversize before decoding, {drop_lines} report lines, session kept; main gate open",
        if refused.is_empty() {
            String::new()
        } else {
            format!(" ({} sizes refused at the broker)", refused.len())
        },
        counted.0,
        counted.1
    );
    recover_and_account(&mut out, rig, &rig.main, probe, back);
    // The flooded device's own lineage: rate-limited during the flood,
    // complete at the collector once it is over.
    let victim_seen = victim_probe.stop();
    let acc = rig.account_permits(&victim, &probe::permits(&victim_seen));
    out.accounted(&acc);
    out.observed.push_str(&format!(
        "; flooded device: {} permits all collected",
        acc.permits
    ));
    victim.device.kill();
    Ok(out)
}

//! The broker's authorization under attack: stolen certificates trying to
//! join the services' shared-subscription groups (issue 13, attack 1).

use std::time::{Duration, Instant};

use mctc_tests::fleet::MqttClient;

use super::{Outcome, recover_and_account, watch};
use crate::chaos::broken::Broken;
use crate::chaos::rig::{Rig, TTL_MS};
use mctc_tests::wait_until;

/// Twenty connections with the device's own certificate (its key file
/// read off the terminal), the monitor's, and one the fleet never granted
/// try to join the authority's and the collector's groups, and stay
/// connected for two artifact lifetimes. Every subscription must be
/// refused, the gate must never deny, renewals and lineage must go on.
pub fn share_group_hijack(rig: &mut Rig) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let broker = &rig.fleet.broker;
    let mut identities = Vec::new();
    for cn in [rig.main.id(), "mctc-monitor", "chaos-stranger"] {
        match broker.identity(cn) {
            Ok(identity) => identities.push(identity),
            Err(e) => {
                out.fail(format!("certificate for {cn}: {e}"));
                return Ok(out);
            }
        }
    }
    let probe = watch(&rig.main, "hijack");
    let cti_before = rig.main.status()["artifact"]["cti"].clone();
    let artifacts_before = rig.main.artifacts_seen().len();
    let start = Instant::now();
    let mut attackers = Vec::new();
    let mut let_in = 0;
    for i in 0..20 {
        match MqttClient::try_connect_with(
            broker,
            &identities[i % identities.len()],
            &format!("chaos-hijacker-{i}"),
            &mctc_tests::SERVICE_GROUP_FILTERS,
        ) {
            Ok(client) => {
                let_in += mctc_tests::SERVICE_GROUP_FILTERS.len() - client.refused().len();
                attackers.push(client);
            }
            Err(e) => out.fail(format!("attacker {i} could not connect: {e}")),
        }
    }
    // The attackers stay while the device renews twice: each renewal is a
    // round of messages they could have stolen from the groups.
    let renewed = wait_until(Duration::from_millis(3 * TTL_MS), || {
        rig.main.artifacts_seen().len() >= artifacts_before + 2
    });
    out.require(renewed.is_some(), || {
        format!("fewer than two renewals in {} ms", 3 * TTL_MS)
    });
    let attacked_ms = start.elapsed().as_millis();
    let stolen: usize = attackers.iter().map(|a| a.received().len()).sum();
    drop(attackers);
    let status = rig.main.status();
    let back = Instant::now();
    let denies = probe
        .observations()
        .iter()
        .filter(|o| o.sent >= start && !o.is_permit())
        .count();
    out.require(let_in == 0, || {
        format!("{let_in} group subscription(s) granted to attackers")
    });
    out.require(stolen == 0, || {
        format!("attackers received {stolen} messages")
    });
    out.require(denies == 0, || format!("{denies} denies during the attack"));
    out.require(status["artifact"]["cti"] != cti_before, || {
        format!("no renewal during the attack: {status}")
    });
    out.observed = format!(
        "20 connections, {} group filters each: all refused; gate open for {} ms, renewed twice",
        mctc_tests::SERVICE_GROUP_FILTERS.len(),
        attacked_ms
    );
    recover_and_account(&mut out, rig, &rig.main, probe, back);
    Ok(out)
}

//! Faults of the fleet side: the broker, the authority, the collector.

use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use super::{Outcome, closes, reason, recover_and_account, silence_noticed, sleep_ms, watch};
use crate::chaos::broken::{Broken, Context};
use crate::chaos::probe::Probe;
use crate::chaos::rig::{HB_MS, RECOVERY, Rig, SLACK, ms};

fn hb() -> Duration {
    Duration::from_millis(HB_MS)
}

fn signal_broker(rig: &Rig, signal: Signal) -> Result<(), Broken> {
    let pid = rig
        .fleet
        .broker
        .pid()
        .and_then(|p| Pid::from_raw(i32::try_from(p).ok()?))
        .context("no broker process")?;
    kill_process(pid, signal).context("signal the broker")
}

/// The broker killed and started again within the heartbeat window.
pub fn broker_restarted(rig: &mut Rig) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let session = rig.main.status()["session"].as_u64().unwrap_or(0);
    let probe = watch(&rig.main, "broker-restart");
    let cut = Instant::now();
    rig.fleet.broker.kill();
    // The fault: the broker stays down for a second.
    sleep_ms(1_000);
    rig.fleet.broker.start_again().context("broker start")?;
    let back = Instant::now();
    let reconnected = mctc_tests::wait_until(RECOVERY, || {
        let status = rig.main.status();
        status["connected"] == true && status["session"].as_u64().unwrap_or(0) > session
    });
    let seen_so_far = probe.observations();
    // Permits are allowed for one heartbeat window after the last heartbeat
    // (the device cannot hear a revocation meanwhile, by design); past it,
    // none while the broker was down.
    out.forbid_permits(&seen_so_far, cut + hb() + SLACK, back);
    let closed = crate::chaos::probe::first_deny_after(&seen_so_far, cut);
    out.close_ms = closed.map(ms);
    out.observed = format!(
        "{}; reconnected {}",
        if closed.is_some() {
            "closed"
        } else {
            "stayed open (outage < hb_ms)"
        },
        reconnected.map_or("never".to_owned(), |d| format!(
            "{} ms after restart",
            ms(d)
        ))
    );
    out.require(reconnected.is_some(), || {
        "the agent did not reconnect".into()
    });
    recover_and_account(&mut out, rig, &rig.main, probe, back);
    Ok(out)
}

/// The broker alive but answering nothing (SIGSTOP) for longer than the
/// heartbeat window.
pub fn broker_unreachable(rig: &mut Rig) -> Result<Outcome, Broken> {
    silence(
        rig,
        "broker-stop",
        |rig| signal_broker(rig, Signal::STOP),
        |rig| signal_broker(rig, Signal::CONT),
    )
}

/// The authority killed (heartbeats stop), later started again.
pub fn authority_killed(rig: &mut Rig) -> Result<Outcome, Broken> {
    silence(
        rig,
        "authority-kill",
        |rig| {
            rig.fleet.kill_authority();
            Ok(())
        },
        |rig| {
            rig.fleet.start_authority();
            Ok(())
        },
    )
}

/// The fleet falls silent (`cut_off`) for longer than the heartbeat window:
/// the gate must close within it, stay closed, and reopen once `restore`d.
fn silence(
    rig: &mut Rig,
    name: &str,
    cut_off: impl FnOnce(&mut Rig) -> Result<(), Broken>,
    restore: impl FnOnce(&mut Rig) -> Result<(), Broken>,
) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let probe = watch(&rig.main, name);
    let cut = Instant::now();
    cut_off(rig)?;
    let closed = closes(&probe, cut, hb() + SLACK + SLACK);
    // The fault holds: silent a while after the close.
    sleep_ms(1_500);
    let why = reason(&rig.main);
    restore(rig)?;
    let back = Instant::now();
    out.forbid_permits(&probe.observations(), cut + hb() + SLACK, back);
    out.closed_after(&probe.observations(), cut);
    out.require(closed.is_some(), || "the gate did not close".into());
    out.require(silence_noticed(&why), || format!("closed for `{why}`"));
    out.observed = format!("closed ({why})");
    recover_and_account(&mut out, rig, &rig.main, probe, back);
    Ok(out)
}

/// The collector down until the device's lineage quota is full: the gate
/// stays open while the backlog fits, closes at the quota without dropping
/// a record, and reopens once the collector drained the backlog, with
/// every record delivered exactly once (no anomaly at the collector: a
/// duplicate or a gap would be one).
pub fn collector_down(rig: &mut Rig) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let anomalies_before = rig.collected(&rig.main).map_or(0, |c| c.anomalies.len());
    let probe = watch(&rig.main, "collector-down");
    let cut = Instant::now();
    rig.fleet.kill_collector();
    // Eight more clients make the backlog grow quickly.
    let burst: Vec<Probe> = (0..8)
        .map(|i| Probe::start(&rig.main.device.socket, &format!("backlog-{i}")))
        .collect();
    let mut max_backlog = 0;
    let full = mctc_tests::wait_until(Duration::from_secs(90), || {
        let status = rig.main.status();
        max_backlog = max_backlog.max(status["lineage"]["backlog"].as_u64().unwrap_or(0));
        status["lineage"]["health"] == "quota-reached"
    });
    let full_at = Instant::now();
    let why = reason(&rig.main);
    // The fault: the quota holds for a while; nothing may be permitted.
    sleep_ms(2_000);
    let mut seen_burst = Vec::new();
    for b in burst {
        seen_burst.extend(b.stop());
    }
    rig.fleet.start_collector();
    let back = Instant::now();
    let seen = probe.observations();
    out.forbid_permits(&seen, full_at, back);
    out.forbid_permits(&seen_burst, full_at, back);
    out.require(full.is_some(), || {
        format!("quota never reached (backlog {max_backlog})")
    });
    out.require(why == "lineage-unavailable", || {
        format!("closed for `{why}`")
    });
    let open_for = crate::chaos::probe::first_deny_after(&seen, cut);
    out.close_ms = full.map(|_| ms(full_at - cut));
    out.observed = format!(
        "open {} ms with a growing backlog (max {max_backlog} records), then closed at the quota ({why})",
        open_for.map_or(0, ms)
    );
    let burst_permits = crate::chaos::probe::permits(&seen_burst);
    recover_and_account(&mut out, rig, &rig.main, probe, back);
    let acc = rig.account_permits(&rig.main, &burst_permits);
    out.accounted(&acc);
    match rig.collected(&rig.main) {
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
        "; {} permits accounted, delivered once",
        acc.permits
    ));
    Ok(out)
}

//! Faults of the fleet side: the broker, the authority, the collector.
//! These rows own their faults for `cargo xtask test` (`chaos/owners.rs`).

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

/// The broker killed for longer than the heartbeat window, then started
/// again: the agent sees the connection gone at once, the gate stays open
/// while the window lasts (by design the device cannot hear a revocation
/// meanwhile, and need not), closes within it, and reopens after a
/// reconnect through the backoff, counted as one new session.
pub fn broker_killed(rig: &mut Rig) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let session = rig.main.status()["session"].as_u64().unwrap_or(0);
    let probe = watch(&rig.main, "broker-kill");
    let cut = Instant::now();
    rig.fleet.broker.kill();
    let disconnected =
        mctc_tests::wait_until(SLACK + SLACK, || rig.main.status()["connected"] == false);
    let closed = closes(&probe, cut, hb() + SLACK + SLACK);
    let closed_at = Instant::now();
    // The fault holds: the broker stays down a while after the close.
    sleep_ms(1_500);
    let during = rig.main.status();
    let why = during["reason"].as_str().unwrap_or("?").to_owned();
    let denied_closed = probe.denied_for_since(closed_at, "closed");
    rig.fleet.broker.start_again().context("broker start")?;
    let back = Instant::now();
    let reconnected = mctc_tests::wait_until(RECOVERY, || {
        let status = rig.main.status();
        status["connected"] == true && status["session"].as_u64().unwrap_or(0) > session
    });
    let after = rig.main.status()["session"].as_u64().unwrap_or(0);
    let seen = probe.observations();
    out.forbid_permits(&seen, cut + hb() + SLACK, back);
    out.forbid_reopening(&seen, cut, back);
    let open_for = out.closed_after(&seen, cut);
    out.require(disconnected.is_some(), || {
        "the agent did not see the connection gone".into()
    });
    out.require(closed.is_some(), || "the gate did not close".into());
    out.require(silence_noticed(&why), || format!("closed for `{why}`"));
    out.require(during["connected"] == false, || {
        format!("connected while the broker was down: {during}")
    });
    out.require(denied_closed, || "no deny answered `closed`".into());
    out.require(reconnected.is_some(), || {
        "the agent did not reconnect".into()
    });
    out.require(after == session + 1, || {
        format!("session {session} → {after}: one reconnect is one new session")
    });
    out.observed = format!(
        "disconnected; open {} ms, closed ({why}); reconnected {} after restart, session {session} → {after}",
        open_for.map_or(0, ms),
        reconnected.map_or("never".to_owned(), |d| format!("{} ms", ms(d)))
    );
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
    let closed_at = Instant::now();
    // The fault holds: silent a while after the close.
    sleep_ms(1_500);
    let why = reason(&rig.main);
    // The closed gate's own deny, not a lineage or containment one.
    let denied_closed = probe.denied_for_since(closed_at, "closed");
    restore(rig)?;
    let back = Instant::now();
    out.forbid_permits(&probe.observations(), cut + hb() + SLACK, back);
    out.forbid_reopening(&probe.observations(), cut, back);
    out.closed_after(&probe.observations(), cut);
    out.require(closed.is_some(), || "the gate did not close".into());
    out.require(silence_noticed(&why), || format!("closed for `{why}`"));
    out.require(denied_closed, || "no deny answered `closed`".into());
    out.observed = format!("closed ({why})");
    recover_and_account(&mut out, rig, &rig.main, probe, back);
    Ok(out)
}

/// The collector down until the device's lineage quota is full: the gate
/// stays open while the backlog fits, closes at the quota without dropping
/// or pruning a record (its denies say `lineage-unavailable`), and reopens
/// once the collector drained the backlog, with every record delivered
/// exactly once (no anomaly at the collector: a duplicate or a gap would
/// be one); then the device prunes again on the collector's receipts and
/// keeps the newest one.
pub fn collector_down(rig: &mut Rig) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let anomalies_before = rig.collected(&rig.main).map_or(0, |c| c.anomalies.len());
    let receipt_file = rig.main.device.state_dir().join("lineage-receipt");
    let receipt_before = std::fs::read(&receipt_file).unwrap_or_default();
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
    let at_quota = rig.main.status();
    let first_at_quota = rig.main.disk().ok().and_then(|d| d.first_seq());
    // What the collector held when it went down: nothing beyond it may be
    // acknowledged, nor pruned.
    let held = rig.collected(&rig.main).map(|c| c.next_seq());
    let mut seen_burst = Vec::new();
    for b in burst {
        seen_burst.extend(b.stop());
    }
    rig.fleet.start_collector();
    let back = Instant::now();
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
        format!("quota never reached (backlog {max_backlog})")
    });
    out.require(why == "lineage-unavailable", || {
        format!("closed for `{why}`")
    });
    out.require(refused_for_lineage, || {
        "no request refused `lineage-unavailable` at the quota".into()
    });
    let acked = at_quota["lineage"]["acked_seq"].as_u64();
    let pruned = at_quota["lineage"]["pruned_through"].as_u64();
    out.require(
        matches!(&held, Ok(next) if acked.is_none_or(|a| a < *next))
            && pruned.is_none_or(|p| acked.is_some_and(|a| p <= a))
            // Every record not acknowledged is still on disk.
            && first_at_quota.is_some_and(|first| acked.map_or(first == 0, |a| first <= a + 1)),
        || {
            format!(
                "acknowledged or pruned beyond what the collector held ({held:?}): first on disk {first_at_quota:?}, {}",
                at_quota["lineage"]
            )
        },
    );
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
    // Drained: healthy again, pruning on the genuine receipts, the newest
    // receipt kept in the state directory.
    let pruned = mctc_tests::wait_until(RECOVERY, || {
        rig.main.status()["lineage"]["health"] == "ok"
            && rig
                .main
                .disk()
                .ok()
                .and_then(|d| d.first_seq())
                .is_some_and(|first| Some(first) > first_at_quota)
    });
    out.require(pruned.is_some(), || {
        format!(
            "no pruning after the drain (first record on disk {first_at_quota:?}): {}",
            rig.main.status()
        )
    });
    let receipt_after = std::fs::read(&receipt_file).unwrap_or_default();
    out.require(
        !receipt_after.is_empty() && receipt_after != receipt_before,
        || "no new lineage receipt persisted after the drain".into(),
    );
    out.observed.push_str(&format!(
        "; {} permits accounted, delivered once; pruned again after the drain",
        acc.permits
    ));
    Ok(out)
}

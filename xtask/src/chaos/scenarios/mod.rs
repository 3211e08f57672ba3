//! The fault matrix: one function per fault, each returning what it
//! observed. A scenario probes the gate continuously while it injects its
//! fault, judges the probe's answers against the window in which the gate
//! must deny, waits for recovery once the fault ends, and accounts for
//! every permit it saw in the device's lineage and at the collector.

pub mod agent;
pub mod broker;
pub mod fleet;
pub mod input;
pub mod messages;
pub mod platform;
pub mod receipts;
pub mod stale;

use std::time::{Duration, Instant};

use super::probe::{self, Observation, Probe};
use super::rig::{Accounting, Dev, RECOVERY, Rig, SLACK, ms};
use mctc_tests::wait_until;

/// What a scenario saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub observed: String,
    /// Fault injected → first answer that was not a permit.
    pub close_ms: Option<u64>,
    /// Permits answered whose record is missing on disk or at the collector.
    pub lost: u64,
    pub failures: Vec<String>,
}

impl Outcome {
    pub fn fail(&mut self, why: impl Into<String>) {
        self.failures.push(why.into());
    }

    pub fn require(&mut self, ok: bool, why: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(why());
        }
    }

    /// Adds a lineage accounting (lost permits, problems).
    pub fn accounted(&mut self, acc: &Accounting) {
        self.lost += acc.lost;
        for problem in &acc.problems {
            self.fail(problem.clone());
        }
    }

    /// Fails for every permit asked at or after `from` and answered by
    /// `until`: the window in which the gate had to deny.
    pub fn forbid_permits(&mut self, seen: &[Observation], from: Instant, until: Instant) {
        let bad = probe::permits_between(seen, from, until);
        if let Some(first) = bad.first() {
            self.fail(format!(
                "{} permit(s) while the gate had to deny (first asked {} ms into the window)",
                bad.len(),
                ms(first.sent.saturating_duration_since(from))
            ));
        }
    }

    /// Fails for every permit asked after the first answer that was not a
    /// permit (after `fault`) and answered by `until`: once closed by the
    /// fault, the gate stays closed until the fault is over. (Also makes
    /// the deny window count when a close came early.)
    pub fn forbid_reopening(&mut self, seen: &[Observation], fault: Instant, until: Instant) {
        if let Some(first) = seen.iter().find(|o| o.sent >= fault && !o.is_permit()) {
            let bad = probe::permits_between(seen, first.sent, until);
            if let Some(reopened) = bad.first() {
                self.fail(format!(
                    "{} permit(s) after the gate closed, before the fault ended (first asked {} ms after the close)",
                    bad.len(),
                    ms(reopened.sent.saturating_duration_since(first.sent))
                ));
            }
        }
    }

    /// Records when the gate stopped permitting after `fault`.
    pub fn closed_after(&mut self, seen: &[Observation], fault: Instant) -> Option<Duration> {
        let closed = probe::first_deny_after(seen, fault);
        self.close_ms = closed.map(ms);
        closed
    }
}

/// Permits a probe must have seen before a fault: normal operation,
/// observed.
const BEFORE_THE_FAULT: usize = 3;

/// A probe on `dev`, once it has seen normal operation (a few permits;
/// at most [`SLACK`] if the gate is not open, which the scenario's own
/// checks then report).
pub fn watch(dev: &Dev, tag: &str) -> Probe {
    let probe = Probe::start(&dev.device.socket, tag);
    let _ = wait_until(SLACK, || probe.permits() >= BEFORE_THE_FAULT);
    probe
}

/// Waits until every probe in `probes` has been answered a permit.
pub fn all_permitting(probes: &[Probe], within: Duration) -> bool {
    wait_until(within, || probes.iter().all(|p| p.permits() > 0)).is_some()
}

/// Waits for a permit asked at or after `after`; how long it took.
pub fn recovered(probe: &Probe, after: Instant) -> Option<Duration> {
    wait_until(RECOVERY, || probe.permitted_since(after)).map(|_| after.elapsed())
}

/// Waits until a request asked at or after `after` is not permitted.
pub fn closes(probe: &Probe, after: Instant, within: Duration) -> Option<Duration> {
    wait_until(within, || probe.denied_since(after)).map(|_| after.elapsed())
}

/// The `reason` field of the status (e.g. `heartbeat-lapsed`).
pub fn reason(dev: &Dev) -> String {
    dev.status()["reason"].as_str().unwrap_or("?").to_owned()
}

/// Standard ending: the fault is over at `back`; the gate must permit
/// again, and every permit must be accounted for.
pub fn recover_and_account(
    out: &mut Outcome,
    rig: &Rig,
    dev: &Dev,
    probe: Probe,
    back: Instant,
) -> Vec<Observation> {
    let reopened = recovered(&probe, back);
    let seen = probe.stop();
    match reopened {
        Some(took) => out
            .observed
            .push_str(&format!("; reopened {} ms after", ms(took))),
        None => out.fail(format!(
            "no permit within {} s after the fault ended (status {})",
            RECOVERY.as_secs(),
            dev.status()
        )),
    }
    out.accounted(&rig.account(dev, &seen));
    seen
}

/// Whether `reason` is how a device notices the authority fell silent:
/// no heartbeat within the window, or the artifact ran out before the
/// window did (a 4 s ttl renewed at about 2 s against a 3 s window
/// refreshed every second: either can come first).
pub fn silence_noticed(reason: &str) -> bool {
    matches!(reason, "heartbeat-lapsed" | "artifact-expired")
}

/// The reason of the first `gate closed` the agent logged after byte
/// `from` of its log (the status moves on quickly: a drift close is
/// followed within milliseconds by the authority's containment).
pub fn first_close_reason(dev: &Dev, from: usize) -> Option<String> {
    let log = dev.device.log();
    log.get(from..)?
        .lines()
        .filter(|l| l.contains("gate closed"))
        .find_map(|l| {
            let (_, rest) = l.split_once("reason=")?;
            Some(rest.split_whitespace().next().unwrap_or("").to_owned())
        })
}

/// The length of the agent's log now.
pub fn log_mark(dev: &Dev) -> usize {
    dev.device.log().len()
}

/// Holds a fault for `millis` (never used to wait for something to
/// happen: that is a `wait_until` on what can be observed).
pub fn sleep_ms(millis: u64) {
    std::thread::sleep(Duration::from_millis(millis));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::probe::Answer;

    fn seen(t0: Instant, answers: &[bool]) -> Vec<Observation> {
        answers
            .iter()
            .enumerate()
            .map(|(i, permit)| {
                let sent = t0 + Duration::from_millis(10 * i as u64);
                Observation {
                    sent,
                    answered: sent + Duration::from_millis(1),
                    reference: format!("t-{i}"),
                    answer: if *permit {
                        Answer::Permit {
                            seq: i as u64,
                            cti: String::new(),
                        }
                    } else {
                        Answer::Deny {
                            reason: "closed".into(),
                        }
                    },
                }
            })
            .collect()
    }

    /// A gate that closed and opened again before the fault ended fails
    /// the row, however early it closed; one that stayed closed does not.
    #[test]
    fn a_reopening_during_the_fault_fails_the_row() {
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(1);
        let mut out = Outcome::default();
        out.forbid_reopening(&seen(t0, &[true, false, false, true, false]), t0, end);
        assert_eq!(out.failures.len(), 1, "{:?}", out.failures);
        let mut out = Outcome::default();
        out.forbid_reopening(&seen(t0, &[true, true, false, false, false]), t0, end);
        assert!(out.failures.is_empty(), "{:?}", out.failures);
        // After the fault ended, a permit is the recovery.
        let mut out = Outcome::default();
        out.forbid_reopening(
            &seen(t0, &[false, false, true]),
            t0,
            t0 + Duration::from_millis(15),
        );
        assert!(out.failures.is_empty(), "{:?}", out.failures);
    }
}

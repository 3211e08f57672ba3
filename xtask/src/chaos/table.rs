//! The fault matrix as data: one row per fault — what is injected, what
//! the design requires, what the row needs from the machine, and the
//! function that injects it, probes the gate and judges. The runner in
//! `mod.rs` filters (`--only`), skips loudly what cannot run, and turns
//! each function's typed result into a report row.
//!
//! Each fault is provoked once per `cargo xtask test`: `owners.rs` names
//! the one owner of every fault, a row here or an end-to-end test, and its
//! tests fail when an end-to-end test injects a fault a row owns. The rows
//! own the faults the agent's end-to-end tests used to provoke as well
//! (authority, broker, TPM, drift, garbage, quota, forged acks, stale
//! answer, bad configs, SIGKILL in a burst), with those tests' assertions
//! folded in. Not here: a device flooding its own lineage topic, which
//! `tests/tests/collector_flood.rs` owns (it proves more: every flood
//! message counted, anomaly rows bounded, no resend by the honest device).
//!
//! A new row: a scenario function in its own file under `scenarios/`
//! (`fn(&mut Rig, &mut Ctx) -> Result<Outcome, Broken>`) and one entry
//! here.

use super::broken::Broken;
use super::ctx::Ctx;
use super::rig::Rig;
use super::scenarios::messages::Named;
use super::scenarios::{Outcome, agent, broker, fleet, input, messages, platform, receipts, stale};

/// What a row needs beyond the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Root or passwordless `sudo -n`: tmpfs mounts, `chattr +i`.
    Root,
    /// The device under libfaketime (`ClockDevice`), set up once for the
    /// rows that use it.
    ClockDevice,
}

/// How a row runs: most give one outcome; the impostor authority serves
/// several faults in one setup and gives a row for each.
#[derive(Debug, Clone, Copy)]
pub enum Run {
    One(fn(&mut Rig, &mut Ctx) -> Result<Outcome, Broken>),
    Many(fn(&mut Rig, &mut Ctx) -> Result<Vec<Named>, Broken>),
}

#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub fault: &'static str,
    pub expected: &'static str,
    pub needs: &'static [Need],
    pub run: Run,
}

const fn row(
    fault: &'static str,
    expected: &'static str,
    run: fn(&mut Rig, &mut Ctx) -> Result<Outcome, Broken>,
) -> Scenario {
    Scenario {
        fault,
        expected,
        needs: &[],
        run: Run::One(run),
    }
}

const fn needs(mut scenario: Scenario, needs: &'static [Need]) -> Scenario {
    scenario.needs = needs;
    scenario
}

/// Every row, in the order they run (the README's reliability table).
pub const MATRIX: &[Scenario] = &[
    row(
        "config file with bad values, or none",
        "exit 2, one line, no start",
        |rig, _| input::bad_configs(rig),
    ),
    row(
        "garbage and oversized payloads on every topic",
        "dropped; all up; gate unaffected",
        |rig, ctx| input::garbage_everywhere(rig, &ctx.signer),
    ),
    row(
        "stolen certificates join the services' share groups",
        "refused; gate open; renewed; nothing lost",
        |rig, _| broker::share_group_hijack(rig),
    ),
    row(
        "gate socket flooded by many clients",
        "served; busy beyond 64; nothing lost",
        |rig, _| input::socket_flood(rig),
    ),
    row(
        "broker killed > hb_ms, restarted",
        "disconnected; deny ≤ hb_ms; reconnect, new session",
        |rig, _| fleet::broker_killed(rig),
    ),
    row(
        "broker unreachable > hb_ms (SIGSTOP)",
        "deny ≤ hb_ms; reopen",
        |rig, _| fleet::broker_unreachable(rig),
    ),
    row(
        "authority killed, restarted",
        "deny ≤ hb_ms; reopen",
        |rig, _| fleet::authority_killed(rig),
    ),
    row(
        "collector down long (backlog, quota)",
        "open, then deny at quota; drain; reopen",
        |rig, _| fleet::collector_down(rig),
    ),
    row(
        "forged lineage acks (no receipt key), collector down",
        "nothing pruned; deny at quota; all collected; reopen",
        |rig, _| receipts::forged_acks(rig),
    ),
    row("replayed heartbeat", "ignored; deny ≤ hb_ms", |rig, _| {
        messages::heartbeat_replayed(rig)
    }),
    row(
        "heartbeat signed by another key",
        "ignored; deny ≤ hb_ms",
        messages::heartbeat_rogue_key,
    ),
    row(
        "control message replayed",
        "ignored (stays open / contained)",
        |rig, ctx| messages::control_replayed(rig, &ctx.signer),
    ),
    needs(
        row(
            "wall clock jumped forward 3 h",
            "renewals expired; deny ≤ ttl",
            |rig, ctx| platform::clock_forward(rig, ctx.clock()?),
        ),
        &[Need::ClockDevice],
    ),
    needs(
        row(
            "wall clock jumped back 3 h",
            "no effect; validity ≤ ttl",
            |rig, ctx| platform::clock_backward(rig, ctx.clock()?),
        ),
        &[Need::ClockDevice],
    ),
    Scenario {
        fault: "impostor authority: bad artifacts",
        expected: "refused; deny",
        needs: &[Need::ClockDevice],
        run: Run::Many(messages::bad_artifacts),
    },
    row(
        "agent SIGKILL during bursts",
        "deny (socket gone); permits durable",
        |rig, _| agent::sigkill_in_burst(rig),
    ),
    row(
        "agent SIGSTOP > ttl, SIGCONT",
        "closed on resume before any permit",
        |rig, ctx| agent::sigstop_beyond_ttl(rig, &ctx.signer),
    ),
    needs(
        row(
            "state dir read-only (chattr +i)",
            "deny; reopen when writable",
            |rig, _| agent::state_read_only(rig),
        ),
        &[Need::Root],
    ),
    needs(
        row(
            "disk full (4 MiB tmpfs)",
            "deny; reopen when room",
            |rig, _| agent::disk_full(rig),
        ),
        &[Need::Root],
    ),
    row(
        "swtpm killed > hb_ms, back power-cycled",
        "deny ≤ drift + TPM timeout, no round; re-attest, contained",
        |rig, _| platform::tpm_killed(rig),
    ),
    row(
        "swtpm reset (resetCount+1)",
        "deny ≤ drift; contained",
        |rig, _| platform::tpm_reset(rig),
    ),
    row(
        "swtpm restart (restartCount+1)",
        "deny ≤ drift; contained",
        |rig, _| platform::tpm_restart(rig),
    ),
    row(
        "swtpm process restarted, state kept",
        "deny ≤ drift; contained",
        |rig, _| platform::tpm_process_restarted(rig),
    ),
    row(
        "PCR extended from outside",
        "deny ≤ drift; contained",
        |rig, _| platform::pcr_extended(rig),
    ),
    row(
        "measured file changed",
        "deny ≤ drift; contained, also after a restart",
        |rig, _| platform::measured_file_changed(rig),
    ),
    row(
        "renewal answered after a drift close",
        "stale answer dropped; deny; contained",
        |rig, ctx| stale::renewal_answer_after_drift(rig, &ctx.signer),
    ),
];

impl Scenario {
    /// `--only TEXT` picks the rows whose fault contains TEXT.
    pub fn selected(&self, only: Option<&str>) -> bool {
        only.is_none_or(|text| self.fault.contains(text))
    }

    pub fn needs(&self, need: Need) -> bool {
        self.needs.contains(&need)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_unique_and_root_rows_are_marked() {
        let mut faults: Vec<&str> = MATRIX.iter().map(|s| s.fault).collect();
        faults.sort_unstable();
        faults.dedup();
        assert_eq!(faults.len(), MATRIX.len());
        // The rows that mount or chattr say so.
        for s in MATRIX {
            let privileged = s.fault.contains("chattr") || s.fault.contains("tmpfs");
            assert_eq!(s.needs(Need::Root), privileged, "{}", s.fault);
        }
    }

    #[test]
    fn only_filters_on_the_fault() {
        let picked: Vec<&str> = MATRIX
            .iter()
            .filter(|s| s.selected(Some("broker")))
            .map(|s| s.fault)
            .collect();
        assert_eq!(
            picked,
            [
                "broker killed > hb_ms, restarted",
                "broker unreachable > hb_ms (SIGSTOP)"
            ]
        );
        assert!(MATRIX.iter().all(|s| s.selected(None)));
        assert!(
            MATRIX
                .iter()
                .any(|s| s.selected(Some("artifact")) && s.needs(Need::ClockDevice))
        );
    }
}

//! `cargo xtask chaos [--quick]`: the reliability suite. It stands up a
//! whole fleet on loopback from the real binaries (Mosquitto with TLS and
//! the shipped ACL, swtpm, authority, collector, agents), injects one fault
//! per row of the fault matrix while probing each gate continuously, runs
//! crash loops (agent SIGKILLed at random moments in bursts of
//! authorizations), and smoke-runs every fuzz target.
//!
//! A row passes only if the gate denied throughout the fault (no permit
//! answered in the window where the design requires a deny), every permit
//! answered is in the device's lineage and at the collector, and the gate
//! permits again once the fault is over. The suite exits non-zero if any
//! row, the crash loop or a fuzz target fails.
//!
//! Needs root (tmpfs mounts for the disk-full row, `chattr +i` for the
//! read-only row) and the system packages of `cargo xtask test` plus
//! `sqlite3` (reading the collector's database) and `libfaketime` (moving
//! one agent's wall clock without touching the machine's).

mod crash_loop;
mod forge;
mod lineage;
mod probe;
mod report;
// The fault matrix is a test suite run against a live fleet: like the
// harness it drives (mctc-tests), a broken environment stops a scenario
// loudly. `one` runs every scenario under `catch_unwind` and reports the
// panic as that row's failure; nothing here handles outside input for a
// production process.
#[expect(
    clippy::panic,
    reason = "test suite: a broken environment aborts the scenario, reported as a failed row"
)]
mod rig;
#[expect(
    clippy::panic,
    reason = "test suite: a broken environment aborts the scenario, reported as a failed row"
)]
mod scenarios;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use crate::fuzz;
use crate::packages::chaos_packages;
use crate::sys::{ensure_packages, run};
use report::Row;
use rig::Rig;
use scenarios::Outcome;
use scenarios::platform::ClockDevice;

/// `cargo xtask chaos [--quick] [--only TEXT]`.
#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// The reduced run: 100 crash loops, 3 s of fuzzing per target
    #[arg(long)]
    quick: bool,
    /// Just the rows whose fault contains TEXT (and the crash loop if TEXT
    /// is `crash`), no fuzzing: for working on one fault
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
}

impl Args {
    /// What `cargo xtask test` runs.
    pub fn quick() -> Args {
        Args {
            quick: true,
            ..Args::default()
        }
    }
}

/// Crash-loop iterations and fuzz seconds per target.
struct Plan {
    quick: bool,
    iterations: u32,
    fuzz_seconds: u64,
    only: Option<String>,
}

fn plan(args: &Args) -> Plan {
    let (iterations, fuzz_seconds) = if args.quick { (100, 3) } else { (1_000, 60) };
    Plan {
        quick: args.quick,
        iterations,
        fuzz_seconds,
        only: args.only.clone(),
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".to_owned())
}

/// Runs one scenario; a panic (a broken environment, a harness assertion)
/// is a failed row, after which the fleet is healed for the next one.
fn one(
    rig: &mut Rig,
    fault: &str,
    expected: &str,
    scenario: impl FnOnce(&mut Rig) -> Outcome,
) -> Option<Row> {
    if !wanted(fault) {
        return None;
    }
    let started = Instant::now();
    println!("--> {fault}");
    let outcome = match catch_unwind(AssertUnwindSafe(|| scenario(rig))) {
        Ok(outcome) => outcome,
        Err(payload) => {
            let mut outcome = Outcome::default();
            outcome.fail(format!("aborted: {}", panic_text(payload.as_ref())));
            outcome
        }
    };
    let row = Row::new(fault, expected, outcome, started.elapsed().as_secs_f64());
    println!("{}", row.line());
    if !row.pass {
        heal(rig);
    }
    Some(row)
}

thread_local! {
    static ONLY: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

fn wanted(fault: &str) -> bool {
    ONLY.with(|only| {
        only.borrow()
            .as_ref()
            .is_none_or(|o| fault.contains(o.as_str()))
    })
}

fn heal(rig: &mut Rig) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| rig.heal())) {
        println!(
            "!!! could not heal the fleet: {}",
            panic_text(payload.as_ref())
        );
    }
}

fn matrix(rig: &mut Rig) -> Vec<Row> {
    let key = rig.fleet.dir.path().join("keys").join("authority.key");
    let signer = match forge::authority_signer(&key) {
        Ok(signer) => signer,
        Err(e) => {
            let mut out = Outcome::default();
            out.fail(e);
            return vec![Row::new("authority key", "readable", out, 0.0)];
        }
    };
    let mut rows = Vec::new();
    let s = &signer;
    use scenarios::{agent, broker, fleet, input, messages, platform, stale};
    rows.extend(one(
        rig,
        "config file with bad values",
        "exit 2, one line, no start",
        input::bad_configs,
    ));
    rows.extend(one(
        rig,
        "garbage and oversized payloads on every topic",
        "dropped; all up; gate unaffected",
        |r| input::garbage_everywhere(r, s),
    ));
    rows.extend(one(
        rig,
        "stolen certificates join the services' share groups",
        "refused; gate open; renewed; nothing lost",
        broker::share_group_hijack,
    ));
    rows.extend(one(
        rig,
        "device floods its own lineage topic (300 KB, 100 KB, junk)",
        "collector keeps its session; flood counted; nothing lost",
        scenarios::collector_flood::lineage_flood,
    ));
    rows.extend(one(
        rig,
        "gate socket flooded by many clients",
        "served; busy beyond 64; nothing lost",
        input::socket_flood,
    ));
    rows.extend(one(
        rig,
        "broker killed and restarted",
        "≤ hb_ms open; reconnect",
        fleet::broker_restarted,
    ));
    rows.extend(one(
        rig,
        "broker unreachable > hb_ms (SIGSTOP)",
        "deny ≤ hb_ms; reopen",
        fleet::broker_unreachable,
    ));
    rows.extend(one(
        rig,
        "authority killed, restarted",
        "deny ≤ hb_ms; reopen",
        fleet::authority_killed,
    ));
    rows.extend(one(
        rig,
        "collector down long (backlog, quota)",
        "open, then deny at quota; drain; reopen",
        fleet::collector_down,
    ));
    rows.extend(one(
        rig,
        "forged lineage acks (no receipt key), collector down",
        "nothing pruned; deny at quota; all collected; reopen",
        scenarios::receipts::forged_acks,
    ));
    rows.extend(one(
        rig,
        "replayed heartbeat",
        "ignored; deny ≤ hb_ms",
        messages::heartbeat_replayed,
    ));
    rows.extend(one(
        rig,
        "heartbeat signed by another key",
        "ignored; deny ≤ hb_ms",
        |r| messages::heartbeat_rogue_key(r, s),
    ));
    rows.extend(one(
        rig,
        "control message replayed",
        "ignored (stays open / contained)",
        |r| messages::control_replayed(r, s),
    ));

    let needs_clock = ["wall clock jumped", "artifact"].iter().any(|f| {
        ONLY.with(|only| {
            only.borrow()
                .as_ref()
                .is_none_or(|o| f.contains(o.as_str()) || o.contains(f))
        })
    });
    let clock = if !needs_clock {
        None
    } else {
        match catch_unwind(AssertUnwindSafe(|| ClockDevice::new(rig))) {
            Ok(clock) => Some(clock),
            Err(payload) => {
                let mut out = Outcome::default();
                out.fail(format!("clock device: {}", panic_text(payload.as_ref())));
                rows.push(Row::new(
                    "wall clock jumped (device setup)",
                    "a device under libfaketime",
                    out,
                    0.0,
                ));
                heal(rig);
                None
            }
        }
    };
    let clock_rows = ["wall clock", "artifact"].iter().any(|f| wanted(f));
    let clock = if clock_rows { clock } else { None };
    if let Some(clock) = &clock {
        rows.extend(one(
            rig,
            "wall clock jumped forward 3 h",
            "renewals expired; deny ≤ ttl",
            |r| platform::clock_forward(r, clock),
        ));
        rows.extend(one(
            rig,
            "wall clock jumped back 3 h",
            "no effect; validity ≤ ttl",
            |r| platform::clock_backward(r, clock),
        ));
        let started = Instant::now();
        println!("--> impostor authority: bad artifacts");
        match catch_unwind(AssertUnwindSafe(|| messages::bad_artifacts(rig, clock, s))) {
            Ok(named) => {
                let each = started.elapsed().as_secs_f64() / named.len().max(1) as f64;
                for (fault, expected, outcome) in named {
                    let row = Row::new(&fault, &expected, outcome, each);
                    println!("{}", row.line());
                    rows.push(row);
                }
            }
            Err(payload) => {
                let mut out = Outcome::default();
                out.fail(format!("aborted: {}", panic_text(payload.as_ref())));
                rows.push(Row::new(
                    "forged/expired/other-device/previous-boot/replayed artifacts",
                    "refused; deny",
                    out,
                    0.0,
                ));
            }
        }
        if rows.iter().any(|r| !r.pass) {
            heal(rig);
        }
    }
    drop(clock);

    rows.extend(one(
        rig,
        "agent SIGKILL during bursts",
        "deny (socket gone); permits durable",
        agent::sigkill_in_burst,
    ));
    rows.extend(one(
        rig,
        "agent SIGSTOP > ttl, SIGCONT",
        "closed on resume before any permit",
        |r| agent::sigstop_beyond_ttl(r, s),
    ));
    rows.extend(one(
        rig,
        "state dir read-only (chattr +i)",
        "deny; reopen when writable",
        agent::state_read_only,
    ));
    rows.extend(one(
        rig,
        "disk full (4 MiB tmpfs)",
        "deny; reopen when room",
        agent::disk_full,
    ));
    rows.extend(one(
        rig,
        "swtpm killed",
        "deny; reopen after power cycle",
        platform::tpm_killed,
    ));
    rows.extend(one(
        rig,
        "swtpm reset (resetCount+1)",
        "deny ≤ drift; contained",
        platform::tpm_reset,
    ));
    rows.extend(one(
        rig,
        "swtpm restart (restartCount+1)",
        "deny ≤ drift; contained",
        platform::tpm_restart,
    ));
    rows.extend(one(
        rig,
        "swtpm process restarted, state kept",
        "deny ≤ drift; contained",
        platform::tpm_process_restarted,
    ));
    rows.extend(one(
        rig,
        "PCR extended from outside",
        "deny ≤ drift; contained",
        platform::pcr_extended,
    ));
    rows.extend(one(
        rig,
        "measured file changed",
        "deny ≤ drift; contained",
        platform::measured_file_changed,
    ));
    rows.extend(one(
        rig,
        "renewal answered after a drift close",
        "stale answer dropped; deny; contained",
        |r| stale::renewal_answer_after_drift(r, s),
    ));
    rows
}

/// `cargo xtask chaos [--quick]`.
pub fn chaos(args: &Args) -> Result<(), String> {
    let plan = plan(args);
    ONLY.with(|only| only.replace(plan.only.clone()));
    ensure_packages(&chaos_packages())?;
    run(
        "build binaries",
        "cargo",
        &[
            "build",
            "-p",
            "mctc-agent",
            "-p",
            "mctc-authority",
            "-p",
            "mctc-collector",
            "--bins",
            "--locked",
        ],
    )?;
    let started = Instant::now();
    println!("==> chaos: fault matrix");
    let mut rig = match catch_unwind(AssertUnwindSafe(Rig::new)) {
        Ok(rig) => rig,
        Err(payload) => {
            return Err(format!(
                "the fleet did not come up: {}",
                panic_text(payload.as_ref())
            ));
        }
    };
    let rows = matrix(&mut rig);
    let matrix_secs = started.elapsed().as_secs_f64();
    let crash = if plan.only.is_none() || wanted("crash") {
        println!("==> chaos: crash loop ({} iterations)", plan.iterations);
        match catch_unwind(AssertUnwindSafe(|| {
            crash_loop::run(&mut rig, plan.iterations)
        })) {
            Ok(report) => report,
            Err(payload) => crash_loop::CrashReport {
                problems: vec![format!("aborted: {}", panic_text(payload.as_ref()))],
                ..crash_loop::CrashReport::default()
            },
        }
    } else {
        crash_loop::CrashReport::skipped()
    };
    drop(rig);
    let suite_secs = started.elapsed().as_secs_f64();
    let fuzz_started = Instant::now();
    let fuzz = if plan.only.is_some() {
        Ok(Vec::new())
    } else {
        fuzz::run_fuzz_smoke(plan.fuzz_seconds)
    };
    let fuzz_secs = fuzz_started.elapsed().as_secs_f64();
    let summary = report::Summary {
        quick: plan.quick,
        rows,
        crash,
        fuzz,
        matrix_secs,
        crash_secs: suite_secs - matrix_secs,
        fuzz_secs,
        total_secs: started.elapsed().as_secs_f64(),
    };
    let text = summary.render();
    println!("\n{text}");
    if let Err(e) = summary.save() {
        println!("!!! {e}");
    }
    summary.verdict()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_runs_fewer_crash_loops_and_shorter_fuzzing() {
        let full = plan(&Args::default());
        assert!(!full.quick);
        assert_eq!((full.iterations, full.fuzz_seconds), (1_000, 60));
        let quick = plan(&Args::quick());
        assert!(quick.quick);
        assert_eq!((quick.iterations, quick.fuzz_seconds), (100, 3));
    }
}

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
//! The matrix is a table ([`table::MATRIX`]): each row names its fault,
//! the expectation and what it needs, and points at a function that
//! returns a typed result ([`Outcome`] or [`Broken`]). One seeded random
//! generator drives every random choice of the run (the crash loop's kill
//! moments, the rogue keys); the seed is printed at the start and in the
//! report, and `--seed N` replays it. Rows that need root (tmpfs mounts
//! for the disk-full row, `chattr +i` for the read-only row) are reported
//! `SKIPPED: needs root` when neither root nor `sudo -n` is available.
//! Also needs the system packages of `cargo xtask test` plus `sqlite3`
//! (reading the collector's database) and `libfaketime` (moving one
//! agent's wall clock without touching the machine's).

mod broken;
mod crash_loop;
mod ctx;
mod forge;
mod lineage;
// The one owner of each fault: a table its tests check against the
// matrix and the end-to-end tests' sources.
#[cfg(test)]
mod owners;
mod probe;
mod report;
mod rig;
mod scenarios;
mod table;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::fuzz;
use crate::packages::chaos_packages;
use crate::sys::{ensure_packages, run};
use broken::Broken;
use ctx::Ctx;
use report::Row;
use rig::{Rig, can_be_root};
use scenarios::Outcome;
use scenarios::platform::ClockDevice;
use table::{MATRIX, Need, Run, Scenario};

/// `cargo xtask chaos [--quick] [--only TEXT] [--seed N]`.
#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// The reduced run: 100 crash loops, 3 s of fuzzing per target
    #[arg(long)]
    quick: bool,
    /// Just the rows whose fault contains TEXT (and the crash loop if TEXT
    /// is `crash`), no fuzzing: for working on one fault
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
    /// Replay a run: the seed of its random choices (printed at the start
    /// of every run and in its report)
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Run the binaries already in target/debug instead of building them:
    /// `cargo xtask test` runs the suite right after `cargo test` built them
    /// (with the test build's features; building them here again would
    /// resolve features without the dev-dependencies and recompile half
    /// the tree, only to rebuild it back on the next `cargo test`).
    #[arg(skip)]
    prebuilt: bool,
}

impl Args {
    /// What `cargo xtask test` runs, on the binaries its tests step built.
    pub fn quick_prebuilt() -> Args {
        Args {
            quick: true,
            prebuilt: true,
            ..Args::default()
        }
    }
}

/// Crash-loop iterations, fuzz seconds per target and the fuzz build.
struct Plan {
    quick: bool,
    iterations: u32,
    fuzz_seconds: u64,
    fuzz_build: fuzz::Build,
    only: Option<String>,
    seed: u64,
}

fn plan(args: &Args) -> Plan {
    let (iterations, fuzz_seconds, fuzz_build) = if args.quick {
        (100, 3, fuzz::Build::Smoke)
    } else {
        (1_000, 60, fuzz::Build::Checked)
    };
    // A fresh seed per run unless one is replayed.
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    Plan {
        quick: args.quick,
        iterations,
        fuzz_seconds,
        fuzz_build,
        only: args.only.clone(),
        seed,
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".to_owned())
}

/// Runs `step`, turning a panic of the shared harness (mctc-tests panics on
/// a broken environment: that is its API for tests) into [`Broken`]. The
/// suite's own code returns `Broken` and never panics (clippy::panic is
/// not allowed in this module tree).
fn guarded<T>(step: impl FnOnce() -> Result<T, Broken>) -> Result<T, Broken> {
    catch_unwind(AssertUnwindSafe(step))
        .unwrap_or_else(|payload| Err(Broken::Harness(panic_text(payload.as_ref()))))
}

fn heal(rig: &mut Rig) {
    if let Err(e) = guarded(|| rig.heal()) {
        println!("!!! could not heal the fleet: {e}");
    }
}

fn failed_row(fault: &str, expected: &str, broken: &Broken, seconds: f64) -> Row {
    let mut outcome = Outcome::default();
    outcome.fail(format!("aborted: {broken}"));
    Row::new(fault, expected, outcome, seconds)
}

/// Runs one row of the table: skipped loudly if the machine cannot give
/// it what it needs, otherwise its outcome(s) as rows; a failed row heals
/// the fleet for the next one.
fn run_scenario(rig: &mut Rig, ctx: &mut Ctx, scenario: &Scenario, root: bool) -> Vec<Row> {
    println!("--> {}", scenario.fault);
    if scenario.needs(Need::Root) && !root {
        let row = Row::skipped(
            scenario.fault,
            scenario.expected,
            "needs root (or passwordless sudo)",
        );
        println!("!!! {}", row.line());
        return vec![row];
    }
    if scenario.needs(Need::ClockDevice) && ctx.clock.is_none() {
        match guarded(|| ClockDevice::new(rig)) {
            Ok(clock) => ctx.clock = Some(clock),
            Err(e) => {
                let row = failed_row(scenario.fault, "a device under libfaketime", &e, 0.0);
                println!("{}", row.line());
                heal(rig);
                return vec![row];
            }
        }
    }
    let started = Instant::now();
    let rows = match scenario.run {
        Run::One(run) => match guarded(|| run(rig, ctx)) {
            Ok(outcome) => vec![Row::new(
                scenario.fault,
                scenario.expected,
                outcome,
                started.elapsed().as_secs_f64(),
            )],
            Err(e) => vec![failed_row(
                scenario.fault,
                scenario.expected,
                &e,
                started.elapsed().as_secs_f64(),
            )],
        },
        Run::Many(run) => match guarded(|| run(rig, ctx)) {
            Ok(named) => {
                let each = started.elapsed().as_secs_f64() / named.len().max(1) as f64;
                named
                    .into_iter()
                    .map(|(fault, expected, outcome)| Row::new(&fault, &expected, outcome, each))
                    .collect()
            }
            Err(e) => vec![failed_row(
                scenario.fault,
                scenario.expected,
                &e,
                started.elapsed().as_secs_f64(),
            )],
        },
    };
    for row in &rows {
        println!("{}", row.line());
    }
    if rows.iter().any(Row::failed) {
        heal(rig);
    }
    rows
}

fn matrix(rig: &mut Rig, plan: &Plan, rng: fastrand::Rng) -> (Vec<Row>, fastrand::Rng) {
    let key = rig.fleet.dir.path().join("keys").join("authority.key");
    let signer = match forge::authority_signer(&key) {
        Ok(signer) => signer,
        Err(e) => {
            let mut out = Outcome::default();
            out.fail(e);
            return (vec![Row::new("authority key", "readable", out, 0.0)], rng);
        }
    };
    let mut ctx = Ctx {
        signer,
        clock: None,
        rng,
    };
    let root = can_be_root();
    if !root {
        println!(
            "!!! chaos: not root and no passwordless sudo: the rows that need root will be SKIPPED"
        );
    }
    let selected: Vec<&Scenario> = MATRIX
        .iter()
        .filter(|s| s.selected(plan.only.as_deref()))
        .collect();
    let mut rows = Vec::new();
    for (i, scenario) in selected.iter().enumerate() {
        rows.extend(run_scenario(rig, &mut ctx, scenario, root));
        // The clock device is a whole agent and swtpm: stop it as soon as
        // no later row needs it.
        if !selected[i + 1..].iter().any(|s| s.needs(Need::ClockDevice)) {
            ctx.clock = None;
        }
    }
    (rows, ctx.rng)
}

fn build_binaries() -> Result<(), String> {
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
    )
}

/// `cargo xtask chaos [--quick] [--only TEXT] [--seed N]`.
pub fn chaos(args: &Args) -> Result<(), String> {
    let plan = plan(args);
    ensure_packages(&chaos_packages())?;
    if !args.prebuilt {
        build_binaries()?;
    }
    let started = Instant::now();
    println!(
        "==> chaos: seed {} (replay: cargo xtask chaos{} --seed {})",
        plan.seed,
        if plan.quick { " --quick" } else { "" },
        plan.seed
    );
    println!("==> chaos: fault matrix");
    let mut rig = guarded(Rig::new).map_err(|e| format!("the fleet did not come up: {e}"))?;
    let (rows, mut rng) = matrix(&mut rig, &plan, fastrand::Rng::with_seed(plan.seed));
    let matrix_secs = started.elapsed().as_secs_f64();
    let crash = if plan.only.as_deref().is_none_or(|o| "crash".contains(o)) {
        println!("==> chaos: crash loop ({} iterations)", plan.iterations);
        guarded(|| crash_loop::run(&mut rig, plan.iterations, &mut rng)).unwrap_or_else(|e| {
            crash_loop::CrashReport {
                problems: vec![format!("aborted: {e}")],
                ..crash_loop::CrashReport::default()
            }
        })
    } else {
        crash_loop::CrashReport::skipped()
    };
    drop(rig);
    let suite_secs = started.elapsed().as_secs_f64();
    let fuzz_started = Instant::now();
    let fuzz = if plan.only.is_some() {
        Ok(Vec::new())
    } else {
        fuzz::run_fuzz_smoke(plan.fuzz_seconds, plan.fuzz_build)
    };
    let fuzz_secs = fuzz_started.elapsed().as_secs_f64();
    let summary = report::Summary {
        quick: plan.quick,
        only: plan.only.clone(),
        seed: plan.seed,
        rows,
        crash,
        fuzz,
        fuzz_build: plan.fuzz_build,
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
        assert_eq!(
            full.fuzz_build,
            fuzz::Build::Checked,
            "the full run fuzzes under ASan"
        );
        let quick = plan(&Args::quick_prebuilt());
        assert!(quick.quick);
        assert_eq!((quick.iterations, quick.fuzz_seconds), (100, 3));
        assert_eq!(quick.fuzz_build, fuzz::Build::Smoke);
    }

    /// The seed replays: the same seed draws the same kill moments.
    #[test]
    fn a_seed_is_kept_and_replays_the_same_choices() {
        let replay = plan(&Args {
            seed: Some(42),
            ..Args::default()
        });
        assert_eq!(replay.seed, 42);
        let draw = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..8).map(|_| rng.u32(..1_200)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    /// A harness panic becomes a typed, failed row; the runner goes on.
    #[test]
    fn a_harness_panic_is_a_broken_row_not_an_abort() {
        let broken = guarded::<()>(|| panic!("swtpm did not start")).unwrap_err();
        assert!(matches!(&broken, Broken::Harness(text) if text == "swtpm did not start"));
        let row = failed_row("f", "e", &broken, 0.0);
        assert!(row.failed());
        assert!(row.failures[0].contains("swtpm did not start"));
    }
}

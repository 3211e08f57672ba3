//! `cargo xtask test`: the README's test command and what CI runs.

use std::process::Command;
use std::time::Instant;

use crate::packages::{FIRMWARE_TARGET, SYSTEM_PACKAGES};
use crate::sys::{ensure_packages, ensure_rust_target, run};

/// `cargo xtask test` takes no flags: CI and a developer run the same thing.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn test(_args: &Args) -> Result<(), String> {
    let mut steps = Steps::default();
    let result = all_steps(&mut steps);
    // On success and on failure: where the time went.
    print!("{}", steps.table());
    result?;
    println!("all checks passed");
    Ok(())
}

fn all_steps(steps: &mut Steps) -> Result<(), String> {
    steps.time("system packages", || {
        ensure_packages(SYSTEM_PACKAGES)?;
        ensure_rust_target(FIRMWARE_TARGET)
    })?;
    steps.time("format", || {
        run("format", "cargo", &["fmt", "--all", "--check"])
    })?;
    steps.time("clippy", || {
        run(
            "clippy",
            "cargo",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ],
        )
    })?;
    steps.time("cargo deny", cargo_deny)?;
    // Seconds, and it needs no build: before the long steps.
    steps.time("module cycles", || {
        crate::cycles::cycles(&crate::cycles::Args::default())
    })?;
    // End-to-end tests start the real binaries from target/debug; cargo
    // builds every bin target of a package whose integration tests it runs,
    // before running any test, so no separate build (with other features,
    // hence a second compile) is needed.
    steps.time("tests", run_tests)?;
    // The README's main command, non-interactively, on those binaries.
    steps.time("demo --check", || {
        let proof = std::env::temp_dir().join(format!("mctc-demo-check-{}", std::process::id()));
        let demo = crate::demo::check_with_built_binaries(&proof);
        let _ = std::fs::remove_dir_all(&proof);
        demo
    })?;
    // The reliability suite's reduced run: the fault matrix, 100 crash
    // loops and a fuzz smoke run of every target, against real binaries.
    steps.time("chaos --quick", || {
        crate::chaos::chaos(&crate::chaos::Args::quick_prebuilt())
    })?;
    steps.time("no_std firmware build", || {
        run(
            "no_std firmware build",
            "cargo",
            &[
                "build",
                "-p",
                "mctc-shim",
                "--no-default-features",
                "--target",
                FIRMWARE_TARGET,
                "--locked",
            ],
        )
    })
}

/// Tests running at once under cargo-nextest. Most tests wait on real
/// processes (swtpm, Mosquitto, the daemons) far more than they compute:
/// with 4 at a time the whole suite used half a core on average on the
/// 2-core machine (102 s against 189 s with 2 at a time, 280 s under `cargo
/// test`, which waits for the slowest test of each binary before the next).
const TEST_THREADS: &str = "4";

/// The packaging tests share one set of .debs built inside their process;
/// nextest would run each test in a process of its own and build them once
/// per test, so `cargo test` runs them (same features, no rebuild).
const IN_PROCESS_TESTS: &str = "deb";

/// Every test of the workspace, every failing one reported (not only the
/// first binary's). cargo-nextest where it is installed (it comes with the
/// toolchain on the project's machines), `cargo test` otherwise.
fn run_tests() -> Result<(), String> {
    let nextest = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nextest {
        println!(
            "!!! cargo-nextest is not installed: running the tests with `cargo test` (slower; \
             `cargo install cargo-nextest --locked` to get it)"
        );
        return run(
            "tests",
            "cargo",
            &["test", "--workspace", "--locked", "--no-fail-fast"],
        );
    }
    let filter = format!("not binary({IN_PROCESS_TESTS})");
    let nextest = run(
        "tests (nextest)",
        "cargo",
        &[
            "nextest",
            "run",
            "--workspace",
            "--locked",
            "--no-fail-fast",
            "--test-threads",
            TEST_THREADS,
            "-E",
            &filter,
        ],
    );
    let in_process = run(
        "tests sharing a fixture",
        "cargo",
        &[
            "test",
            "--workspace",
            "--locked",
            "--no-fail-fast",
            "--test",
            IN_PROCESS_TESTS,
        ],
    );
    // nextest does not run documentation tests.
    let doc = run(
        "doc tests",
        "cargo",
        &["test", "--workspace", "--locked", "--doc"],
    );
    nextest.and(in_process).and(doc)
}

/// Wall time of each step of `cargo xtask test`, printed as a table at
/// the end of the run (and when a step fails).
#[derive(Debug, Default)]
struct Steps {
    done: Vec<(&'static str, f64, bool)>,
}

impl Steps {
    fn time(
        &mut self,
        name: &'static str,
        step: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), String> {
        let started = Instant::now();
        let result = step();
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "<== step `{name}`: {} in {seconds:.1} s",
            if result.is_ok() { "ok" } else { "FAILED" }
        );
        self.done.push((name, seconds, result.is_ok()));
        result
    }

    fn table(&self) -> String {
        let mut out = String::from(
            "\n`cargo xtask test`, wall time per step:\n\n| step | seconds | result |\n|---|---:|---|\n",
        );
        for (name, seconds, ok) in &self.done {
            out.push_str(&format!(
                "| {name} | {seconds:.1} | {} |\n",
                if *ok { "ok" } else { "FAILED" }
            ));
        }
        let total: f64 = self.done.iter().map(|(_, s, _)| s).sum();
        out.push_str(&format!("| total | {total:.1} | |\n"));
        out
    }
}

fn cargo_deny() -> Result<(), String> {
    let installed = Command::new("cargo")
        .args(["deny", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !installed {
        crate::sys::cargo_install("cargo-deny", "^0.20")?;
    }
    // The advisory database lives on GitHub. Where GitHub is out of reach the
    // other checks still run, and the skipped one is said loudly.
    if run("cargo deny fetch", "cargo", &["deny", "fetch"]).is_ok() {
        run("cargo deny", "cargo", &["deny", "check"])
    } else {
        println!(
            "!!! cargo deny: the RustSec advisory database could not be fetched (no route to github.com);\n\
             !!! checking licenses, bans and sources only. Run `cargo deny check advisories` where GitHub is reachable."
        );
        run(
            "cargo deny",
            "cargo",
            &["deny", "check", "bans", "licenses", "sources"],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_is_timed_and_a_failure_stops_the_run_and_is_shown() {
        let mut steps = Steps::default();
        assert!(steps.time("first", || Ok(())).is_ok());
        assert!(steps.time("second", || Err("broke".to_owned())).is_err());
        let table = steps.table();
        assert!(table.contains("| first | "), "{table}");
        assert!(table.contains(" | FAILED |"), "{table}");
        assert!(table.contains("| total | "), "{table}");
        assert_eq!(steps.done.len(), 2);
    }
}

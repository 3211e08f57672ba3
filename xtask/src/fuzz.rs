//! `cargo xtask fuzz [--seconds N]`: builds every cargo-fuzz target in
//! `fuzz/` and runs each for a fixed time from its seeds, as a smoke test
//! (`cargo xtask chaos` calls [`run_fuzz_smoke`] too). New corpus entries go
//! to `fuzz/corpus/<target>/`, crash inputs to `fuzz/artifacts/<target>/`,
//! each run's libFuzzer log to `fuzz/target/smoke-logs/<target>.log`.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

use crate::sys::{root, run};

/// Seconds per target when `--seconds` is not given.
pub const DEFAULT_SECONDS: u64 = 30;

/// Inputs as long as a full lineage batch (64 KiB) plus framing, for the
/// targets that take one; the others keep libFuzzer's default (the larger
/// of 4096 bytes and the longest seed).
const LONG_INPUT_TARGETS: &[&str] = &[
    "lineage_batch",
    "lineage_recovery",
    "collector_ingest",
    "bundle",
];
const LONG_MAX_LEN: usize = 70_000;

/// A single input running longer than this is a hang, reported as a crash.
const INPUT_TIMEOUT_SECS: u64 = 10;

/// How the targets are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// cargo-fuzz's default: release with debug assertions, under
    /// AddressSanitizer. `cargo xtask fuzz` and the full chaos run.
    Checked,
    /// Development profile (debug assertions, overflow checks), no
    /// sanitizer: builds in well under half the time of [`Build::Checked`]
    /// on a clean checkout, which is what a few seconds per target in
    /// `chaos --quick` need. It still finds panics, overflows, hangs and
    /// runaway memory; what only AddressSanitizer sees (memory errors, which
    /// in this code base can only come from the C and assembly in
    /// dependencies: every crate of ours denies `unsafe`) is left to the
    /// checked runs.
    Smoke,
}

impl Build {
    /// `cargo fuzz build` flags for this build.
    fn flags(self) -> &'static [&'static str] {
        match self {
            Build::Checked => &[],
            Build::Smoke => &["--dev", "--sanitizer", "none"],
        }
    }

    /// The profile directory cargo puts the binaries in.
    fn profile_dir(self) -> &'static str {
        match self {
            Build::Checked => "release",
            Build::Smoke => "debug",
        }
    }

    /// How the report names it.
    pub fn describe(self) -> &'static str {
        match self {
            Build::Checked => "release, AddressSanitizer",
            Build::Smoke => "dev profile, no sanitizer",
        }
    }
}

/// How one target's run went.
#[derive(Debug, Clone, PartialEq)]
pub struct FuzzResult {
    /// The cargo-fuzz target.
    pub target: String,
    /// Inputs executed (libFuzzer's `stat::number_of_executed_units`).
    pub execs: u64,
    /// Executions per second (libFuzzer's `stat::average_exec_per_sec`, or
    /// executions over the wall time of the run).
    pub execs_per_sec: u64,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// The run stopped on a crash, hang, leak or out-of-memory.
    pub crashed: bool,
    /// The input libFuzzer saved for a crash, if any.
    pub crash_input: Option<PathBuf>,
    /// The run's full libFuzzer output.
    pub log: PathBuf,
}

impl FuzzResult {
    /// The result column of the table.
    pub fn outcome(&self) -> String {
        match (&self.crash_input, self.crashed) {
            (Some(input), _) => format!("CRASH {}", input.display()),
            (None, true) => format!("FAILED (see {})", self.log.display()),
            (None, false) => "ok".to_owned(),
        }
    }
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

/// How fuzz builds get the unstable flags libFuzzer needs
/// (`-Zsanitizer`): the nightly toolchain where there is one (or rustup can
/// install it), otherwise the default toolchain with `RUSTC_BOOTSTRAP=1`
/// (same flags, same compiler features; for machines whose only toolchain
/// is the stable one). Decided once, by [`ensure_tools`].
static NIGHTLY: OnceLock<bool> = OnceLock::new();

fn use_nightly() -> bool {
    *NIGHTLY.get_or_init(|| succeeds(plain_cargo(true).arg("--version")))
}

/// A cargo command in the repository root, without the toolchain and
/// target-dir choices of the `cargo xtask` invocation leaking into it: fuzz
/// builds always live in `fuzz/target`.
fn plain_cargo(nightly: bool) -> Command {
    let mut command = Command::new("cargo");
    if nightly {
        command.arg("+nightly");
    } else {
        command.env("RUSTC_BOOTSTRAP", "1");
    }
    command
        .current_dir(root())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("CARGO")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR");
    command
}

/// The cargo that builds and runs the fuzz targets (see [`NIGHTLY`]).
fn nightly_cargo() -> Command {
    plain_cargo(use_nightly())
}

/// How a developer reproduces a run by hand with the same toolchain.
fn cargo_fuzz_line() -> &'static str {
    if use_nightly() {
        "cargo +nightly fuzz"
    } else {
        "RUSTC_BOOTSTRAP=1 cargo fuzz"
    }
}

/// The host triple, which cargo-fuzz builds for by default.
fn host_triple() -> Result<String, String> {
    let output = Command::new("rustc")
        .arg("-vV")
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .map_err(|e| format!("cannot run `rustc -vV`: {e}"))?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_owned())
        .ok_or_else(|| "`rustc -vV` names no host triple".to_owned())
}

/// Where `cargo fuzz build` put `target`'s binary.
fn binary(target: &str, build: Build) -> Result<PathBuf, String> {
    let path = fuzz_dir()
        .join("target")
        .join(host_triple()?)
        .join(build.profile_dir())
        .join(target);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build it with `{} build {}`",
            path.display(),
            cargo_fuzz_line(),
            build.flags().join(" ")
        ))
    }
}

fn succeeds(command: &mut Command) -> bool {
    command
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Installs what the fuzz build needs if it is missing: cargo-fuzz, and
/// the nightly toolchain where rustup can fetch it (otherwise the stable
/// one is used with `RUSTC_BOOTSTRAP=1`, said loudly).
pub fn ensure_tools() -> Result<(), String> {
    let mut nightly = succeeds(plain_cargo(true).arg("--version"));
    if !nightly {
        nightly = run(
            "install nightly",
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )
        .is_ok()
            && succeeds(plain_cargo(true).arg("--version"));
        if !nightly {
            println!(
                "!!! fuzz: no nightly toolchain and rustup cannot fetch one; building the fuzz\n\
                 !!! targets with the default toolchain and RUSTC_BOOTSTRAP=1 (same -Z flags)."
            );
        }
    }
    let _ = NIGHTLY.set(nightly);
    if !succeeds(nightly_cargo().args(["fuzz", "--version"])) {
        crate::sys::cargo_install("cargo-fuzz", "^0.13")?;
    }
    Ok(())
}

fn output_text(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    text
}

/// The fuzz targets, as cargo-fuzz lists them.
pub fn targets() -> Result<Vec<String>, String> {
    let output = nightly_cargo()
        .args(["fuzz", "list"])
        .output()
        .map_err(|e| format!("cannot run `cargo fuzz list`: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo fuzz list` failed:\n{}",
            output_text(&output)
        ));
    }
    let targets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        return Err("`cargo fuzz list` found no targets in fuzz/".to_owned());
    }
    Ok(targets)
}

/// Builds every target once; returns the build time in seconds.
pub fn build_all(build: Build) -> Result<f64, String> {
    println!(
        "==> fuzz build ({}): {} build {}",
        build.describe(),
        cargo_fuzz_line(),
        build.flags().join(" ")
    );
    let started = Instant::now();
    let status = nightly_cargo()
        .args(["fuzz", "build"])
        .args(build.flags())
        .status()
        .map_err(|e| format!("cannot run `cargo fuzz build`: {e}"))?;
    let took = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!(
            "`cargo fuzz build` failed ({status}) after {took:.1} s"
        ));
    }
    println!("<== fuzz build: ok ({took:.1} s)");
    Ok(took)
}

/// The value after `key` on the first line that starts with it.
fn stat(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix(key))
        .find_map(|rest| rest.trim().parse().ok())
}

/// Executions from libFuzzer's final statistics, or from its `#N DONE` /
/// `Done N runs` lines when the statistics are missing.
fn executions(log: &str) -> Option<u64> {
    stat(log, "stat::number_of_executed_units:")
        .or_else(|| {
            log.lines().rev().find_map(|l| {
                let (count, rest) = l
                    .trim()
                    .strip_prefix('#')?
                    .split_once(char::is_whitespace)?;
                rest.trim_start()
                    .starts_with("DONE")
                    .then(|| count.parse().ok())?
            })
        })
        .or_else(|| {
            log.lines().rev().find_map(|l| {
                l.trim()
                    .strip_prefix("Done ")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        })
}

/// Where libFuzzer saved the failing input (`Test unit written to PATH`).
fn crash_input(log: &str) -> Option<PathBuf> {
    log.lines().find_map(|l| {
        l.split_once("Test unit written to ")
            .map(|(_, path)| PathBuf::from(path.trim()))
    })
}

/// Runs one built target for `seconds` from its seeds. The binary `cargo
/// fuzz build` made is run directly (as `cargo fuzz run` would, with the
/// same artifact directory), so that sources edited in the meantime are not
/// rebuilt into the middle of a timed run.
pub fn run_target(target: &str, seconds: u64, build: Build) -> Result<FuzzResult, String> {
    let fuzz = fuzz_dir();
    let corpus = fuzz.join("corpus").join(target);
    let seeds = fuzz.join("seeds").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    let logs = fuzz.join("target").join("smoke-logs");
    for dir in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    // cargo-fuzz's own default for AddressSanitizer runs, kept with the
    // caller's options.
    let asan = match std::env::var("ASAN_OPTIONS") {
        Ok(own) if !own.is_empty() => format!("{own}:detect_odr_violation=0"),
        _ => "detect_odr_violation=0".to_owned(),
    };
    let mut command = Command::new(binary(target, build)?);
    command.env("ASAN_OPTIONS", asan).current_dir(&fuzz).args([
        format!("-artifact_prefix={}/", artifacts.display()),
        format!("-max_total_time={seconds}"),
        format!("-timeout={INPUT_TIMEOUT_SECS}"),
        "-print_final_stats=1".to_owned(),
    ]);
    if LONG_INPUT_TARGETS.contains(&target) {
        command.arg(format!("-max_len={LONG_MAX_LEN}"));
    }
    command.arg(&corpus);
    if seeds.is_dir() {
        command.arg(&seeds);
    }
    println!("==> fuzz {target}: {seconds} s");
    let started = Instant::now();
    let output = command
        .output()
        .map_err(|e| format!("cannot run fuzz target {target}: {e}"))?;
    let took = started.elapsed().as_secs_f64();
    let text = output_text(&output);
    let log = logs.join(format!("{target}.log"));
    std::fs::write(&log, &text).map_err(|e| format!("cannot write {}: {e}", log.display()))?;

    let execs = executions(&text).unwrap_or(0);
    let execs_per_sec = stat(&text, "stat::average_exec_per_sec:")
        .filter(|r| *r > 0)
        .unwrap_or_else(|| (execs as f64 / took.max(1.0)) as u64);
    let crash_input = crash_input(&text);
    let crashed = !output.status.success() || crash_input.is_some();
    if crashed {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        println!(
            "!!! fuzz {target} failed; last lines of {}:\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    Ok(FuzzResult {
        target: target.to_owned(),
        execs,
        execs_per_sec,
        seconds: took,
        crashed,
        crash_input,
        log,
    })
}

/// Makes sure nightly and cargo-fuzz are there, builds every target once,
/// runs each for `seconds_per_target` seconds, and returns one result per
/// target (crashes are results, not errors; an error means the smoke run
/// itself could not happen).
pub fn run_fuzz_smoke(seconds_per_target: u64, build: Build) -> Result<Vec<FuzzResult>, String> {
    ensure_tools()?;
    let targets = targets()?;
    build_all(build)?;
    targets
        .iter()
        .map(|target| run_target(target, seconds_per_target, build))
        .collect()
}

/// The table `cargo xtask fuzz` prints.
pub fn table(results: &[FuzzResult]) -> String {
    let width = results
        .iter()
        .map(|r| r.target.len())
        .max()
        .unwrap_or(6)
        .max("target".len());
    let mut out = format!(
        "{:<width$}  {:>12}  {:>9}  result\n",
        "target", "execs", "execs/s"
    );
    for r in results {
        out.push_str(&format!(
            "{:<width$}  {:>12}  {:>9}  {}\n",
            r.target,
            r.execs,
            r.execs_per_sec,
            r.outcome()
        ));
    }
    out
}

/// `cargo xtask fuzz [--seconds N]`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds each target runs
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SECONDS,
          value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
}

/// `cargo xtask fuzz [--seconds N]`.
pub fn fuzz(args: &Args) -> Result<(), String> {
    let seconds = args.seconds;
    let results = run_fuzz_smoke(seconds, Build::Checked)?;
    print!("\n{}", table(&results));
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| r.crashed)
        .map(|r| r.target.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "fuzz targets failed: {} (reproduce: {} run <target> <crash input>)",
            failed.join(", "),
            cargo_fuzz_line()
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const DONE_LOG: &str = "\
#65536\tpulse  cov: 812 ft: 2301 corp: 140/9000b exec/s: 21845 rss: 60Mb
#131072\tDONE   cov: 815 ft: 2310 corp: 141/9100b lim: 4096 exec/s: 4228 rss: 61Mb
Done 131072 runs in 31 second(s)
stat::number_of_executed_units: 131072
stat::average_exec_per_sec:     4228
stat::new_units_added:          12
";

    #[test]
    fn executions_come_from_the_final_statistics() {
        assert_eq!(executions(DONE_LOG), Some(131_072));
        assert_eq!(stat(DONE_LOG, "stat::average_exec_per_sec:"), Some(4228));
    }

    #[test]
    fn without_statistics_the_done_lines_count() {
        let log = "#900\tDONE   cov: 1 ft: 1 corp: 1/1b exec/s: 30 rss: 1Mb\n";
        assert_eq!(executions(log), Some(900));
        assert_eq!(executions("Done 77 runs in 1 second(s)\n"), Some(77));
        assert_eq!(executions("INFO: Seed: 1\n"), None);
    }

    #[test]
    fn a_crash_names_its_saved_input() {
        let log = "==1== ERROR: libFuzzer: deadly signal\n\
                   artifact_prefix='/r/fuzz/artifacts/artifact/'; Test unit written to /r/fuzz/artifacts/artifact/crash-0a1b\n\
                   Base64: AAE=\n";
        assert_eq!(
            crash_input(log),
            Some(PathBuf::from("/r/fuzz/artifacts/artifact/crash-0a1b"))
        );
        assert_eq!(crash_input(DONE_LOG), None);
    }

    #[test]
    fn seconds_default_and_must_be_positive() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let parse = |v: &[&str]| {
            Cli::try_parse_from(std::iter::once("fuzz").chain(v.iter().copied()))
                .map(|c| c.args.seconds)
        };
        assert_eq!(parse(&[]).unwrap(), DEFAULT_SECONDS);
        assert_eq!(parse(&["--seconds", "60"]).unwrap(), 60);
        assert!(parse(&["--seconds", "0"]).is_err());
        assert!(parse(&["--seconds"]).is_err());
        assert!(parse(&["--quick"]).is_err());
    }

    #[test]
    fn the_table_has_a_row_per_target() {
        let result = FuzzResult {
            target: "artifact".to_owned(),
            execs: 10,
            execs_per_sec: 5,
            seconds: 2.0,
            crashed: false,
            crash_input: None,
            log: Path::new("x.log").to_path_buf(),
        };
        let table = table(&[result]);
        assert_eq!(table.lines().count(), 2);
        assert!(table.lines().nth(1).unwrap().ends_with("ok"));
    }
}

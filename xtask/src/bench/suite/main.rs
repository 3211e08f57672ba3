//! The performance suite behind `cargo xtask bench` (issue 9).
//!
//! Machines here are noisy, so every figure is a percentile over many
//! samples or a ratio to a limit measured in the same run: a raw swtpm
//! quote, raw fdatasync, raw SHA-256. Sections:
//!
//! - `limits`: the raw TPM quote (tss-esapi on swtpm);
//! - `authority`: evidence verified and artifacts issued per second on one
//!   thread (the authority library, pre-made evidence);
//! - `collector`: records verified and stored per second on one thread
//!   (the collector library and its SQLite store) ÷ raw SHA-256;
//! - `device`: one real agent on swtpm in a real fleet — footprint, idle
//!   CPU, the attestation round trip, fdatasync in its state directory,
//!   durable permits from 64 clients;
//! - `gate`: how late after a deadline the gate is seen closed;
//! - `fleet`: simulated devices (software AKs) against the real authority,
//!   collector and Mosquitto: the largest fleet renewing 60 s artifacts
//!   with p99 under 1 s.
//!
//! It is an xtask bench target so that it builds in release mode with its
//! own dependencies; `cargo xtask bench` builds the release binaries and
//! points the harness at them (`MCTC_BIN_DIR`). Run without `--bench`
//! (as `cargo test --all-targets` does) it does nothing.
#![forbid(unsafe_code)]

mod authority;
mod chain;
mod collector;
mod device;
mod fleet;
mod gate;
mod limits;
mod report;
mod soft_tpm;
mod stats;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use report::Figures;

#[derive(Debug, Default)]
struct Options {
    quick: bool,
    json: Option<PathBuf>,
    only: Option<Vec<String>>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--quick" => options.quick = true,
            "--json" => options.json = Some(args.next().ok_or("--json needs a file")?.into()),
            "--only" => {
                let list = args.next().ok_or("--only needs sections")?;
                options.only = Some(list.split(',').map(str::to_owned).collect());
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(options)
}

type Section = fn(&mut Figures, bool) -> Result<(), String>;

fn limits_section(figures: &mut Figures, quick: bool) -> Result<(), String> {
    let samples = limits::raw_quotes(if quick { 200 } else { 1000 })?;
    figures.set("tpm_quote_ms_p50", samples.p50().ok_or("no quotes")?);
    figures.note(
        "tpm_quote_ms_p50",
        format!(
            "TPM2_Quote (ECC P-256, PCRs 0,7,14) through tss-esapi on swtpm: {}",
            samples.summary()
        ),
    );
    Ok(())
}

fn authority_section(figures: &mut Figures, quick: bool) -> Result<(), String> {
    authority::measure(figures, Duration::from_secs(if quick { 3 } else { 10 }))
}

fn collector_section(figures: &mut Figures, quick: bool) -> Result<(), String> {
    collector::measure(figures, if quick { 20_000 } else { 100_000 })
}

fn device_section(figures: &mut Figures, quick: bool) -> Result<(), String> {
    device::measure(
        figures,
        device::Plan {
            idle: Duration::from_secs(if quick { 20 } else { 60 }),
            roundtrips: if quick { 100 } else { 500 },
            fsync: Duration::from_secs(if quick { 3 } else { 10 }),
            permits: Duration::from_secs(if quick { 5 } else { 20 }),
        },
    )
}

fn gate_section(figures: &mut Figures, quick: bool) -> Result<(), String> {
    gate::measure(figures, if quick { 12 } else { 100 })
}

fn fleet_section(figures: &mut Figures, quick: bool) -> Result<(), String> {
    fleet::measure(figures, &fleet::Plan::new(quick))
}

const SECTIONS: [(&str, Section); 6] = [
    ("limits", limits_section),
    ("authority", authority_section),
    ("collector", collector_section),
    ("device", device_section),
    ("gate", gate_section),
    ("fleet", fleet_section),
];

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    serde_json::json!({"cpu": cpu, "cores": cores, "kernel": kernel})
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("the performance suite runs with `cargo xtask bench` (skipped)");
        return ExitCode::SUCCESS;
    }
    let options = match parse(&args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("suite: {e}");
            return ExitCode::from(2);
        }
    };
    let mut figures = Figures::default();
    let started = Instant::now();
    let mode = if options.quick { "quick" } else { "full" };
    println!("mctc performance suite ({mode})");
    for (name, section) in SECTIONS {
        if let Some(only) = &options.only
            && !only.iter().any(|o| o == name)
        {
            continue;
        }
        println!("==> {name}");
        let t = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| section(&mut figures, options.quick)));
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(panic) => Some(
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "panicked".to_owned()),
            ),
        };
        let took = t.elapsed().as_secs_f64();
        match failure {
            None => println!("<== {name}: {took:.1} s"),
            Some(e) => {
                println!("<== {name}: FAILED after {took:.1} s: {e}");
                figures.fail(format!("{name}: {e}"));
            }
        }
    }
    figures.derive();
    let total = started.elapsed().as_secs_f64();
    println!("\n{}", figures.table());
    println!("suite: {total:.0} s ({mode}; the release builds before it are not included)");
    if let Some(path) = &options.json {
        let meta = serde_json::json!({
            "mode": mode,
            "seconds": total.round(),
            "machine": machine(),
            "command": format!("cargo xtask bench{}", if options.quick { " --quick" } else { "" }),
        });
        let text = serde_json::to_string_pretty(&figures.json(meta)).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("suite: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("suite: figures written to {}", path.display());
    }
    if figures.failures().is_empty() {
        ExitCode::SUCCESS
    } else {
        for failure in figures.failures() {
            eprintln!("suite: {failure}");
        }
        ExitCode::FAILURE
    }
}

//! `cargo xtask`: the front door for developers and operators.
//!
//! - `test`  — installs missing system packages, then fmt, clippy, cargo-deny,
//!   every test (swtpm- and Mosquitto-backed) and the no_std target build.
//! - `fuzz`  — builds the cargo-fuzz targets and smoke-runs each one.
//! - `demo`, `bench`, `chaos`, `dist` — see README.md.
#![forbid(unsafe_code)]

mod bench;
mod chaos;
mod demo;
mod dist;
mod fuzz;
mod sys;
mod test;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test               fmt, clippy -D warnings, cargo deny, all tests, no_std build
  demo [--check --out DIR]
                     run the whole system locally and walk the lifecycle
  bench [--quick] [--json FILE]
                     the performance suite
  chaos [--quick]    the fault matrix, crash loops and fuzz smoke runs
  fuzz [--seconds N] build every fuzz target and run each for N seconds (default 30)
  dist               build the .deb packages into target/dist/";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match command.as_str() {
        "test" => test::test(rest),
        "fuzz" => fuzz::fuzz(rest),
        "demo" => demo::demo(rest),
        "dist" => dist::dist(rest),
        "bench" => bench::bench(rest),
        "chaos" => chaos::chaos(rest),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

//! `cargo xtask`: the front door for developers and operators.
//!
//! - `test` — installs missing system packages, then fmt, clippy,
//!   cargo-deny, every test (swtpm- and Mosquitto-backed), the demo's walk,
//!   the chaos suite's quick run and the no_std target build.
//! - `cycles` — fails if the modules of a workspace crate import each other
//!   in a cycle (also a step of `test`).
//! - `fuzz` — builds the cargo-fuzz targets and smoke-runs each one.
//! - `demo`, `bench`, `chaos`, `dist` — see README.md.
#![forbid(unsafe_code)]

mod bench;
mod chaos;
mod cycles;
mod demo;
mod dist;
mod fuzz;
mod packages;
mod sys;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Developer and operator tasks of the mctc workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// fmt, clippy -D warnings, cargo deny, all tests, the
    /// demo's walk, chaos --quick, no_std build (what CI runs)
    Test(test::Args),
    /// Run the whole system locally and walk the lifecycle
    Demo(demo::Args),
    /// The performance suite (release builds)
    Bench(bench::Args),
    /// The fault matrix, crash loops and fuzz smoke runs
    Chaos(chaos::Args),
    /// Build every fuzz target and run each for a while
    Fuzz(fuzz::Args),
    /// Build the .deb packages into target/dist/ (debhelper, lintian)
    Dist(dist::Args),
    /// Fail if the modules of a workspace crate import each other in a cycle
    Cycles(cycles::Args),
}

fn main() -> ExitCode {
    // clap prints usage and exits 2 on a bad argument, 0 on --help.
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Test(args) => test::test(&args),
        Task::Fuzz(args) => fuzz::fuzz(&args),
        Task::Demo(args) => demo::demo(&args),
        Task::Dist(args) => dist::dist(&args),
        Task::Bench(args) => bench::bench(&args),
        Task::Chaos(args) => chaos::chaos(&args),
        Task::Cycles(args) => cycles::cycles(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(line: &str) -> Result<Task, clap::Error> {
        Cli::try_parse_from(std::iter::once("cargo xtask").chain(line.split_whitespace()))
            .map(|cli| cli.task)
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every spelling the README, the crates' READMEs and `.ci/run` use.
    #[test]
    fn documented_command_lines_parse() {
        for line in [
            "test",
            "demo",
            "demo --check --out /tmp/x",
            "bench",
            "bench --quick",
            "bench --json bench.json",
            "bench --only gate",
            "bench --quick --json out.json --only limits,fleet",
            "chaos",
            "chaos --quick",
            "chaos --only broker --quick",
            "fuzz",
            "fuzz --seconds 600",
            "dist",
            "dist --debug",
            "dist --target aarch64",
            "dist --target aarch64 --debug",
            "cycles",
            "cycles --list",
        ] {
            if let Err(e) = parse(line) {
                panic!("`cargo xtask {line}` does not parse: {e}");
            }
        }
    }

    #[test]
    fn bad_arguments_are_refused() {
        for line in [
            "",
            "nope",
            "test --quick",
            "dist extra",
            "dist --target riscv64",
            "dist --target",
            "demo --out /tmp/x",
            "bench --json",
            "bench --only limits,nope",
            "bench --fast",
            "chaos --only",
            "chaos --fast",
            "fuzz --seconds 0",
            "fuzz --seconds",
            "fuzz --quick",
        ] {
            assert!(parse(line).is_err(), "`cargo xtask {line}` was accepted");
        }
    }
}

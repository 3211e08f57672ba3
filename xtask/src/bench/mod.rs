//! `cargo xtask bench [--quick] [--json FILE]`: the performance suite.
//!
//! This front end only builds and starts things; the measuring is done by
//! the suite in `suite/` (an xtask bench target, so its heavy dependencies —
//! tss-esapi, SQLite, the authority and collector libraries — are dev
//! dependencies and never slow down or break the other `cargo xtask`
//! commands). Both the suite and the binaries it drives are release builds:
//! the figures are for what ships, not for a debug build.
//!
//! 1. install missing system packages (swtpm, Mosquitto, libtss2, SQLite);
//! 2. `cargo build --release` of mctc-agent, mctc-authority, mctc-collector;
//! 3. `cargo bench -p xtask --bench suite` with `MCTC_BIN_DIR` pointing the
//!    harness at those release binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::packages::SYSTEM_PACKAGES;
use crate::sys::{ensure_packages, root};

/// The suite's sections, in the order they run.
const SECTIONS: [&str; 6] = [
    "limits",
    "authority",
    "collector",
    "device",
    "gate",
    "fleet",
];

/// `cargo xtask bench [--quick] [--json FILE] [--only SECTION,...]`.
#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// The reduced suite (under 3 minutes once the release build is cached)
    #[arg(long)]
    quick: bool,
    /// Also write every figure to FILE
    #[arg(long, value_name = "FILE", value_parser = absolute_path)]
    json: Option<PathBuf>,
    /// Run only these sections (limits, authority, collector, device, gate, fleet)
    #[arg(long, value_name = "SECTION,...", value_parser = section_list)]
    only: Option<String>,
}

/// A comma-separated list of known sections.
fn section_list(list: &str) -> Result<String, String> {
    match list.split(',').find(|s| !SECTIONS.contains(s)) {
        Some(unknown) => Err(format!(
            "unknown section `{unknown}` (sections: {})",
            SECTIONS.join(", ")
        )),
        None => Ok(list.to_owned()),
    }
}

fn absolute_path(path: &str) -> Result<PathBuf, String> {
    absolute(Path::new(path))
}

/// The suite runs with the package directory as its working directory, so
/// a relative `--json` is resolved against the caller's directory here.
fn absolute(path: &Path) -> Result<PathBuf, String> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    std::env::current_dir()
        .map(|dir| dir.join(path))
        .map_err(|e| format!("cannot resolve {}: {e}", path.display()))
}

/// Where cargo puts release builds (honours `CARGO_TARGET_DIR`).
fn release_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root().join(dir)
            }
        })
        .unwrap_or_else(|| root().join("target"));
    target.join("release")
}

pub fn bench(options: &Args) -> Result<(), String> {
    ensure_packages(SYSTEM_PACKAGES)?;
    let started = Instant::now();
    let build = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "mctc-agent",
            "-p",
            "mctc-authority",
            "-p",
            "mctc-collector",
            "--bins",
        ])
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot start cargo: {e}"))?;
    if !build.success() {
        return Err(format!("release build of the binaries failed ({build})"));
    }
    let mut command = Command::new("cargo");
    command
        .args(["bench", "--locked", "-p", "xtask", "--bench", "suite", "--"])
        .env("MCTC_BIN_DIR", release_dir())
        .current_dir(root());
    if options.quick {
        command.arg("--quick");
    }
    if let Some(json) = &options.json {
        command.arg("--json").arg(json);
    }
    if let Some(only) = &options.only {
        command.args(["--only", only]);
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot start cargo bench: {e}"))?;
    println!(
        "bench: {:.0} s in all, including the release builds",
        started.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("the suite failed ({status})"))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(list: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(list.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn options_parse_and_resolve_the_json_path() {
        let o = parse(&["--quick", "--json", "out.json"]).unwrap();
        assert!(o.quick);
        let json = o.json.unwrap();
        assert!(json.is_absolute());
        assert!(json.ends_with("out.json"));
        let o = parse(&["--only", "limits,fleet"]).unwrap();
        assert_eq!(o.only.as_deref(), Some("limits,fleet"));
        assert!(!o.quick);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["--json"]).is_err());
        let unknown = parse(&["--only", "limits,nope"]).unwrap_err().to_string();
        assert!(unknown.contains("unknown section `nope`"), "{unknown}");
        assert!(parse(&["--fast"]).is_err());
    }
}

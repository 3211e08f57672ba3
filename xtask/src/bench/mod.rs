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

use crate::sys::{ensure_packages, root};
use crate::test::SYSTEM_PACKAGES;

const USAGE: &str = "usage: cargo xtask bench [--quick] [--json FILE] [--only SECTION,...]
  --quick          the reduced suite (under 3 minutes once the release build is cached)
  --json FILE      also write every figure to FILE
  --only SECTIONS  run only these sections (limits, authority, collector, device, gate, fleet)";

/// The suite's sections, in the order they run.
const SECTIONS: [&str; 6] = [
    "limits",
    "authority",
    "collector",
    "device",
    "gate",
    "fleet",
];

#[derive(Debug, Default)]
struct Options {
    quick: bool,
    json: Option<PathBuf>,
    only: Option<String>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--json" => {
                let file = args
                    .next()
                    .ok_or_else(|| format!("--json needs a file name\n{USAGE}"))?;
                options.json = Some(absolute(Path::new(file))?);
            }
            "--only" => {
                let list = args
                    .next()
                    .ok_or_else(|| format!("--only needs a section list\n{USAGE}"))?;
                if let Some(unknown) = list.split(',').find(|s| !SECTIONS.contains(s)) {
                    return Err(format!("unknown section `{unknown}`\n{USAGE}"));
                }
                options.only = Some(list.clone());
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(options)
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

pub fn bench(args: &[String]) -> Result<(), String> {
    let options = parse(args)?;
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
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn options_parse_and_resolve_the_json_path() {
        let o = parse(&args(&["--quick", "--json", "out.json"])).unwrap();
        assert!(o.quick);
        let json = o.json.unwrap();
        assert!(json.is_absolute());
        assert!(json.ends_with("out.json"));
        let o = parse(&args(&["--only", "limits,fleet"])).unwrap();
        assert_eq!(o.only.as_deref(), Some("limits,fleet"));
        assert!(!o.quick);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&args(&["--json"])).is_err());
        assert!(parse(&args(&["--only", "limits,nope"])).is_err());
        assert!(parse(&args(&["--fast"])).is_err());
    }
}

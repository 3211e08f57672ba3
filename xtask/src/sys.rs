//! Running commands and installing what the project needs from the system.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs `program args…` in the workspace root, streaming its output; an error
/// names the step that failed.
pub fn run(step: &str, program: &str, args: &[&str]) -> Result<(), String> {
    run_env(step, program, args, &[])
}

/// [`run`] with extra environment variables (a cross build's linker and
/// pkg-config settings).
pub fn run_env(
    step: &str,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<(), String> {
    println!("==> {step}: {program} {}", args.join(" "));
    let started = Instant::now();
    let mut command = Command::new(program);
    command.args(args).current_dir(root());
    command.envs(env.iter().copied());
    // `cargo run` (the `cargo xtask` alias) describes xtask to it in these
    // variables; ring's build script watches some of them, so an inner
    // cargo that inherited them would rebuild ring and everything above it
    // on every run, and the next `cargo xtask` build would rebuild it back.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                key.as_ref(),
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
            )
        {
            command.env_remove(key.as_ref());
        }
    }
    let status = command
        .status()
        .map_err(|e| format!("{step}: cannot start `{program}`: {e}"))?;
    let took = started.elapsed().as_secs_f64();
    if status.success() {
        println!("<== {step}: ok ({took:.1} s)");
        Ok(())
    } else {
        Err(format!("{step} failed ({status}) after {took:.1} s"))
    }
}

/// Release-profile overrides for `cargo install` of the tools the checks
/// use. Their own manifests ask for fat LTO and one codegen unit (cargo-deny
/// does), which costs minutes of compiling on a clean machine for a tool that
/// then runs for seconds; cargo's configuration outranks a manifest's profile.
const TOOL_PROFILE: &[(&str, &str)] = &[
    ("CARGO_PROFILE_RELEASE_LTO", "false"),
    ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16"),
    ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "1"),
];

/// `cargo install --locked TOOL --version VERSION`, built quickly (see
/// [`TOOL_PROFILE`]).
pub fn cargo_install(tool: &str, version: &str) -> Result<(), String> {
    run_env(
        &format!("install {tool}"),
        "cargo",
        &["install", tool, "--locked", "--version", version],
        TOOL_PROFILE,
    )
}

/// True when `program` answers `--version`.
pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the Debian packages in `packages` that are missing. As root this
/// uses apt-get directly, otherwise `sudo -n`; when neither works it says
/// exactly what to run.
pub fn ensure_packages(packages: &[&str]) -> Result<(), String> {
    if !have("dpkg-query") {
        println!(
            "==> system packages: not a Debian/Ubuntu system; make sure these are installed: {}",
            packages.join(" ")
        );
        return Ok(());
    }
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("==> system packages: all present");
        return Ok(());
    }
    println!("==> system packages: installing {}", missing.join(" "));
    let (program, prefix): (&str, Vec<&str>) = if is_root() {
        ("apt-get", vec![])
    } else if Command::new("sudo")
        .args(["-n", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
    {
        ("sudo", vec!["-n", "apt-get"])
    } else {
        return Err(format!(
            "missing system packages and no root rights to install them; run:\n  sudo apt-get install -y {}",
            missing.join(" ")
        ));
    };
    let mut update = prefix.clone();
    update.extend(["update", "-qq"]);
    run("apt-get update", program, &update)?;
    let mut install = prefix;
    install.extend(["install", "-y", "-qq", "--no-install-recommends"]);
    install.extend(missing.iter().copied());
    // Non-interactive: CI and scripted setups must never stop at a prompt.
    println!("==> apt-get install {}", missing.join(" "));
    let status = Command::new(program)
        .args(&install)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("cannot start apt-get: {e}"))?;
    if !status.success() {
        return Err(format!(
            "apt-get install {} failed ({status})",
            missing.join(" ")
        ));
    }
    Ok(())
}

/// Adds a rustup target if it is not installed yet.
pub fn ensure_rust_target(target: &str) -> Result<(), String> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        return Ok(());
    }
    run("rustup target add", "rustup", &["target", "add", target])
}

//! `cargo xtask test`: the README's test command and what CI runs.

use std::process::Command;

use crate::packages::{FIRMWARE_TARGET, SYSTEM_PACKAGES};
use crate::sys::{ensure_packages, ensure_rust_target, run};

/// `cargo xtask test` takes no flags: CI and a developer run the same thing.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn test(_args: &Args) -> Result<(), String> {
    ensure_packages(SYSTEM_PACKAGES)?;
    ensure_rust_target(FIRMWARE_TARGET)?;
    run("format", "cargo", &["fmt", "--all", "--check"])?;
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
    )?;
    cargo_deny()?;
    // Seconds, and it needs no build: before the long steps.
    crate::cycles::cycles(&crate::cycles::Args::default())?;
    // End-to-end tests start the real binaries from target/debug; cargo
    // builds every bin target of a package whose integration tests it runs,
    // before running any test, so no separate build (with other features,
    // hence a second compile) is needed.
    run("tests", "cargo", &["test", "--workspace", "--locked"])?;
    // The README's main command, non-interactively, on those binaries.
    let proof = std::env::temp_dir().join(format!("mctc-demo-check-{}", std::process::id()));
    let demo = crate::demo::check_with_built_binaries(&proof);
    let _ = std::fs::remove_dir_all(&proof);
    demo?;
    // The reliability suite's reduced run: the fault matrix, 100 crash
    // loops and a fuzz smoke run of every target, against real binaries.
    println!("==> chaos --quick");
    crate::chaos::chaos(&crate::chaos::Args::quick())?;
    println!("<== chaos --quick: ok");
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
    )?;
    println!("all checks passed");
    Ok(())
}

fn cargo_deny() -> Result<(), String> {
    let installed = Command::new("cargo")
        .args(["deny", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !installed {
        run(
            "install cargo-deny",
            "cargo",
            &["install", "cargo-deny", "--locked", "--version", "^0.20"],
        )?;
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

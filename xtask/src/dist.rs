//! `cargo xtask dist [--target aarch64] [--debug]`: the Debian packages in
//! `target/dist/`.
//!
//! Cargo builds the binaries (release; `--debug`: the dev profile, quick),
//! then `mctc-packaging deb` (packaging/) stages them with their man pages
//! and shell completions next to packaging/debian and builds the .debs with
//! debhelper (dpkg-shlibdeps, deb-systemd-helper, sysusers, tmpfiles,
//! md5sums), and lintian checks them: any error fails the command.
//!
//! `--target aarch64` cross-builds the device package (`mctc-agent`, arm64)
//! with Debian's cross compiler and the arm64 TSS libraries (dpkg
//! multiarch), and checks that the package says arm64 and its binary is an
//! AArch64 ELF.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::packages::{CROSS_ARM64_PACKAGES, DIST_PACKAGES};
use crate::sys::{ensure_packages, ensure_rust_target, root, run, run_env};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cross-build the device package for this architecture (aarch64:
    /// Debian arm64).
    #[arg(long, value_parser = ["aarch64"])]
    target: Option<String>,
    /// Package the debug build instead of release (quick; what the
    /// packaging tests do).
    #[arg(long)]
    debug: bool,
}

const AARCH64: &str = "aarch64-unknown-linux-gnu";
/// ELF e_machine of AArch64.
const EM_AARCH64: u16 = 183;

pub fn dist(args: &Args) -> Result<(), String> {
    ensure_packages(DIST_PACKAGES)?;
    let profile: &[&str] = if args.debug { &[] } else { &["--release"] };
    let profile_dir = if args.debug { "debug" } else { "release" };
    let root = root();
    let out = root.join("target/dist");
    let (bin_dir, package_args) = match args.target.as_deref() {
        Some(_) => {
            ensure_foreign_architecture("arm64")?;
            ensure_packages(CROSS_ARM64_PACKAGES)?;
            ensure_rust_target(AARCH64)?;
            let mut build = vec!["build", "--locked", "-p", "mctc-agent", "--target", AARCH64];
            build.extend(profile);
            run_env(
                "cross build (device, arm64)",
                "cargo",
                &build,
                &[
                    (
                        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
                        "aarch64-linux-gnu-gcc",
                    ),
                    // tss-esapi finds the arm64 libtss2 through pkg-config.
                    ("PKG_CONFIG_ALLOW_CROSS", "1"),
                    (
                        "PKG_CONFIG_LIBDIR",
                        "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig",
                    ),
                ],
            )?;
            (
                root.join("target").join(AARCH64).join(profile_dir),
                vec!["--arch", "arm64", "--package", "mctc-agent"],
            )
        }
        None => {
            // Two builds: the agent alone (it links libtss2 through
            // mctc-attest's `device` feature) and the fleet side without it
            // — one build of all three would unify the feature into the
            // fleet binaries.
            let mut device = vec!["build", "--locked", "-p", "mctc-agent"];
            device.extend(profile);
            run("build (device)", "cargo", &device)?;
            let mut fleet = vec![
                "build",
                "--locked",
                "-p",
                "mctc-authority",
                "-p",
                "mctc-collector",
            ];
            fleet.extend(profile);
            run("build (fleet)", "cargo", &fleet)?;
            (root.join("target").join(profile_dir), vec![])
        }
    };
    let bin_dir = bin_dir.to_str().ok_or("non-UTF-8 target directory")?;
    let out_str = out.to_str().ok_or("non-UTF-8 target directory")?;
    let mut package = vec![
        "run",
        "--quiet",
        "--locked",
        "-p",
        "mctc-packaging",
        "--",
        "deb",
        "--bin-dir",
        bin_dir,
        "--out",
        out_str,
        "--lintian",
    ];
    package.extend(package_args.iter().copied());
    run("debian packages", "cargo", &package)?;

    let arch = match args.target {
        Some(_) => "arm64".to_owned(),
        None => output("dpkg", &["--print-architecture"])?.trim().to_owned(),
    };
    let names: &[&str] = match args.target {
        Some(_) => &["mctc-agent"],
        None => &["mctc-agent", "mctc-authority", "mctc-collector"],
    };
    for name in names {
        let deb = out.join(format!("{name}_{}_{arch}.deb", env!("CARGO_PKG_VERSION")));
        check_architecture(&deb, name, &arch)?;
        println!("==> {}", deb.display());
        let depends = output("dpkg-deb", &["--field", path_str(&deb), "Depends"])?;
        println!("    Depends: {}", depends.trim());
    }
    Ok(())
}

/// The package says `arch` and its binary is built for it (for arm64: an
/// AArch64 ELF).
fn check_architecture(deb: &Path, binary: &str, arch: &str) -> Result<(), String> {
    let said = output("dpkg-deb", &["--field", path_str(deb), "Architecture"])?;
    if said.trim() != arch {
        return Err(format!(
            "{}: Architecture {} != {arch}",
            deb.display(),
            said.trim()
        ));
    }
    if arch != "arm64" {
        return Ok(());
    }
    let unpacked = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    output(
        "dpkg-deb",
        &["--extract", path_str(deb), path_str(unpacked.path())],
    )?;
    let path: PathBuf = unpacked.path().join("usr/bin").join(binary);
    let elf = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    match elf_machine(&elf) {
        Some(EM_AARCH64) => Ok(()),
        other => Err(format!(
            "{}: {binary} is not an AArch64 ELF (e_machine {other:?})",
            deb.display()
        )),
    }
}

/// e_machine of a little-endian ELF file.
fn elf_machine(elf: &[u8]) -> Option<u16> {
    if elf.get(..4)? != b"\x7fELF" || *elf.get(5)? != 1 {
        return None;
    }
    Some(u16::from_le_bytes([*elf.get(18)?, *elf.get(19)?]))
}

/// dpkg multiarch: `arch` packages installable next to the native ones.
fn ensure_foreign_architecture(arch: &str) -> Result<(), String> {
    let foreign = output("dpkg", &["--print-foreign-architectures"])?;
    if foreign.lines().any(|l| l.trim() == arch) {
        return Ok(());
    }
    let root_user = output("id", &["-u"]).is_ok_and(|id| id.trim() == "0");
    if root_user {
        run(
            "dpkg --add-architecture",
            "dpkg",
            &["--add-architecture", arch],
        )
    } else {
        run(
            "dpkg --add-architecture",
            "sudo",
            &["-n", "dpkg", "--add-architecture", arch],
        )
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or("")
}

fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_elf_machine_is_read_and_a_non_elf_refused() {
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[5] = 1;
        header[18..20].copy_from_slice(&EM_AARCH64.to_le_bytes());
        assert_eq!(elf_machine(&header), Some(EM_AARCH64));
        header[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        assert_ne!(elf_machine(&header), Some(EM_AARCH64));
        assert_eq!(elf_machine(b"#!/bin/sh\n"), None);
        assert_eq!(elf_machine(b"\x7fEL"), None);
    }
}

//! What the tasks need from the machine: Debian packages and rustup
//! targets. One list for `test`, `demo`, `bench` and `chaos` (each used to
//! import it from another task's module, which tied them in a cycle), kept
//! in step with the `apt-get install` line of `.ci/run`.

/// What the tests need from the system: swtpm and Mosquitto are started for
/// real, tss-esapi links libtss2, the authority and collector link SQLite.
pub const SYSTEM_PACKAGES: &[&str] = &[
    "swtpm",
    "swtpm-tools",
    "tpm2-tools",
    "libtss2-dev",
    "mosquitto",
    "mosquitto-clients",
    "pkg-config",
    "libsqlite3-dev",
    // systemd-analyze rates the shipped units (tests/tests/packaging.rs).
    "systemd",
    // The .debs are built by debhelper and checked by lintian
    // (packaging/tests/deb.rs, `cargo xtask dist`).
    "debhelper",
    "lintian",
    // The console's end-to-end test drives headless Chromium
    // (console/tests/browser.rs).
    "chromium",
];

/// What `cargo xtask dist` needs (also in [`SYSTEM_PACKAGES`]: the
/// packaging tests build the .debs too).
pub const DIST_PACKAGES: &[&str] = &["debhelper", "lintian"];

/// What `cargo xtask dist --target aarch64` needs beyond
/// [`DIST_PACKAGES`]: Debian's cross compiler (the linker, and C for ring)
/// and the arm64 TSS (dpkg multiarch; xtask adds the architecture). Not in
/// `.ci/run`: CI does not cross-build.
pub const CROSS_ARM64_PACKAGES: &[&str] = &[
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "binutils-aarch64-linux-gnu",
    "libtss2-dev:arm64",
];

/// What `cargo xtask chaos` needs beyond [`SYSTEM_PACKAGES`]: `sqlite3`
/// reads the collector's database, libfaketime moves one agent's wall
/// clock without touching the machine's.
pub const CHAOS_PACKAGES: &[&str] = &["sqlite3", "libfaketime"];

/// [`SYSTEM_PACKAGES`] followed by [`CHAOS_PACKAGES`].
pub fn chaos_packages() -> Vec<&'static str> {
    SYSTEM_PACKAGES
        .iter()
        .chain(CHAOS_PACKAGES)
        .copied()
        .collect()
}

/// The firmware target the shim must keep building for (no_std, no alloc).
pub const FIRMWARE_TARGET: &str = "thumbv7em-none-eabihf";

#[cfg(test)]
mod tests {
    use super::*;

    /// `.ci/run` installs the packages on a fresh machine before `cargo
    /// xtask test` runs; a package missing there would be installed by
    /// xtask with sudo in CI, or not at all.
    #[test]
    fn ci_installs_every_package_the_tasks_need() {
        let ci = std::fs::read_to_string(crate::sys::root().join(".ci").join("run")).unwrap();
        let install = ci
            .split("apt-get install")
            .nth(1)
            .and_then(|rest| rest.split("exec ").next())
            .unwrap();
        let listed: Vec<&str> = install
            .split_whitespace()
            .filter(|w| !w.starts_with('-') && *w != "\\")
            .collect();
        for package in chaos_packages() {
            assert!(listed.contains(&package), "{package} not in .ci/run");
        }
        for package in DIST_PACKAGES {
            assert!(
                SYSTEM_PACKAGES.contains(package),
                "{package} not in SYSTEM_PACKAGES"
            );
        }
    }
}

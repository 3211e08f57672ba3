//! `cargo xtask dist`: Debian packages for the device (`mctc-agent`) and the
//! fleet side (`mctc-authority`, `mctc-collector`) in `target/dist/`.
//!
//! Each package holds: the stripped release binary, its systemd unit,
//! sysusers.d and tmpfiles.d entries, the example configuration under
//! /etc/mctc/ (a conffile), a man page generated from the binary's own
//! `--help` (so it cannot drift from the CLI), and its README. The package
//! tree is assembled here and built with `dpkg-deb --root-owner-group`;
//! `Depends` comes from the shared libraries the binary actually links
//! (`ldd`, resolved to packages with `dpkg -S`).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sys::{root, run};

struct Package {
    name: &'static str,
    binary: &'static str,
    summary: &'static str,
    description: &'static str,
    /// (source relative to the workspace, destination in the package).
    files: &'static [(&'static str, &'static str)],
    /// Destinations that are conffiles.
    conffiles: &'static [&'static str],
    /// Packages needed besides the linked libraries.
    extra_depends: &'static [&'static str],
    files_section: &'static str,
}

const PACKAGES: &[Package] = &[
    Package {
        name: "mctc-agent",
        binary: "mctc-agent",
        summary: "hardware-rooted trust agent for payment terminals, lockers and gateways",
        description: "The mctc device agent attests the device's TPM state to the fleet\n authority over MQTT (mutual TLS), opens its local gate only while a\n verified, fresh, in-scope authorization artifact is held, fails closed\n when attestation, the artifact or the fleet heartbeat lapses or the\n platform drifts, and keeps a signed, hash-chained lineage of every\n decision that the fleet's collector verifies.",
        files: &[
            (
                "packaging/systemd/mctc-agent.service",
                "lib/systemd/system/mctc-agent.service",
            ),
            (
                "packaging/sysusers/mctc-agent.conf",
                "usr/lib/sysusers.d/mctc-agent.conf",
            ),
            (
                "packaging/tmpfiles/mctc-agent.conf",
                "usr/lib/tmpfiles.d/mctc-agent.conf",
            ),
            ("configs/agent.toml", "etc/mctc/agent.toml"),
            ("agent/README.md", "usr/share/doc/mctc-agent/README.md"),
            (
                "packaging/README.swtpm",
                "usr/share/doc/mctc-agent/README.swtpm",
            ),
        ],
        conffiles: &["/etc/mctc/agent.toml"],
        // The TSS loads its TCTI modules at run time (dlopen): the kernel
        // resource manager's is what a device uses.
        extra_depends: &["libtss2-tcti-device0", "systemd"],
        files_section: "/etc/mctc/agent.toml\n    Configuration (see the comments in it).\n/var/lib/mctc\n    State: the AK blob, the lineage log, the revocation marker (0700).\n/run/mctc/gate.sock\n    The gate socket (0660, group mctc-gate).",
    },
    Package {
        name: "mctc-authority",
        binary: "mctc-authority",
        summary: "mctc fleet authority: enrollment, evidence verification, artifacts",
        description: "The mctc fleet authority enrolls devices (EK/AK by credential\n activation), verifies their TPM evidence against each class's policy,\n issues short-lived signed authorization artifacts, publishes the signed\n fleet heartbeat and is the fleet manager's command line.",
        files: &[
            (
                "packaging/systemd/mctc-authority.service",
                "lib/systemd/system/mctc-authority.service",
            ),
            (
                "packaging/sysusers/mctc-authority.conf",
                "usr/lib/sysusers.d/mctc-authority.conf",
            ),
            (
                "packaging/tmpfiles/mctc-authority.conf",
                "usr/lib/tmpfiles.d/mctc-authority.conf",
            ),
            ("configs/authority.toml", "etc/mctc/authority.toml"),
            ("configs/policy.toml", "etc/mctc/policy.toml"),
            (
                "authority/README.md",
                "usr/share/doc/mctc-authority/README.md",
            ),
            (
                "configs/mosquitto/conf.d/mctc.conf",
                "usr/share/doc/mctc-authority/examples/mosquitto/mctc.conf",
            ),
            (
                "configs/mosquitto/dynamic-security.json",
                "usr/share/doc/mctc-authority/examples/mosquitto/dynamic-security.json",
            ),
        ],
        conffiles: &["/etc/mctc/authority.toml", "/etc/mctc/policy.toml"],
        extra_depends: &["systemd"],
        files_section: "/etc/mctc/authority.toml, /etc/mctc/policy.toml\n    Configuration and device-class policy.\n/var/lib/mctc-authority\n    The signing key (0600) and the SQLite database.",
    },
    Package {
        name: "mctc-collector",
        binary: "mctc-collector",
        summary: "mctc lineage collector and offline bundle verifier",
        description: "The mctc collector receives devices' hash-chained lineage over MQTT,\n verifies every record and TPM checkpoint against the AK the authority\n vouched for, stores it idempotently and acknowledges it; `verify`\n checks an exported bundle offline with only the authority's key.",
        files: &[
            (
                "packaging/systemd/mctc-collector.service",
                "lib/systemd/system/mctc-collector.service",
            ),
            (
                "packaging/sysusers/mctc-collector.conf",
                "usr/lib/sysusers.d/mctc-collector.conf",
            ),
            (
                "packaging/tmpfiles/mctc-collector.conf",
                "usr/lib/tmpfiles.d/mctc-collector.conf",
            ),
            ("configs/collector.toml", "etc/mctc/collector.toml"),
            (
                "collector/README.md",
                "usr/share/doc/mctc-collector/README.md",
            ),
        ],
        conffiles: &["/etc/mctc/collector.toml"],
        extra_depends: &["systemd"],
        files_section: "/etc/mctc/collector.toml\n    Configuration.\n/var/lib/mctc-collector\n    The SQLite database of verified lineage.",
    },
];

pub fn dist() -> Result<(), String> {
    for tool in ["dpkg-deb", "dpkg", "ldd", "readelf", "strip"] {
        if Command::new("which")
            .arg(tool)
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Err(format!(
                "`{tool}` is needed to build .deb packages (Debian/Ubuntu: dpkg, libc-bin, binutils)"
            ));
        }
    }
    // Two builds: the agent alone (it links libtss2 through mctc-attest's
    // `device` feature) and the fleet side without it — one build of all
    // three would unify the feature into the fleet binaries.
    run(
        "release build (device)",
        "cargo",
        &["build", "--release", "--locked", "-p", "mctc-agent"],
    )?;
    run(
        "release build (fleet)",
        "cargo",
        &[
            "build",
            "--release",
            "--locked",
            "-p",
            "mctc-authority",
            "-p",
            "mctc-collector",
        ],
    )?;
    let root = root();
    let out = root.join("target/dist");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let arch = output("dpkg", &["--print-architecture"])?.trim().to_owned();
    let version = env!("CARGO_PKG_VERSION");
    for package in PACKAGES {
        let deb = build_package(&root, &out, package, version, &arch)?;
        println!("==> {}", deb.display());
        let info = output("dpkg-deb", &["--info", path_str(&deb)])?;
        for line in info
            .lines()
            .filter(|l| l.trim_start().starts_with("Depends:"))
        {
            println!("    {}", line.trim());
        }
        let contents = output("dpkg-deb", &["--contents", path_str(&deb)])?;
        for line in contents.lines().filter(|l| !l.ends_with('/')) {
            let columns: Vec<&str> = line.split_whitespace().collect();
            if let (Some(mode), Some(path)) = (columns.first(), columns.last()) {
                println!("    {mode} {path}");
            }
        }
    }
    Ok(())
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

fn write(path: &Path, content: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, content).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn build_package(
    root: &Path,
    out: &Path,
    package: &Package,
    version: &str,
    arch: &str,
) -> Result<PathBuf, String> {
    let tree = out.join("pkg").join(package.name);
    if tree.exists() {
        std::fs::remove_dir_all(&tree).map_err(|e| format!("{}: {e}", tree.display()))?;
    }
    // The binary, stripped.
    let built = root.join("target/release").join(package.binary);
    let binary = tree.join("usr/bin").join(package.binary);
    let bytes = std::fs::read(&built).map_err(|e| format!("{}: {e}", built.display()))?;
    write(&binary, &bytes, 0o755)?;
    run("strip", "strip", &["--strip-all", path_str(&binary)])?;
    for (source, destination) in package.files {
        let source = root.join(source);
        let bytes = std::fs::read(&source).map_err(|e| format!("{}: {e}", source.display()))?;
        let mode = if destination.starts_with("etc/") {
            0o640
        } else {
            0o644
        };
        write(&tree.join(destination), &bytes, mode)?;
    }
    let doc = tree.join("usr/share/doc").join(package.name);
    write(
        &doc.join("copyright"),
        b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: mctc\n\nFiles: *\nLicense: Apache-2.0\n On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n",
        0o644,
    )?;
    let man = man_page(&built, package)?;
    let man_path = tree.join(format!("usr/share/man/man8/{}.8.gz", package.binary));
    write(&man_path, &gzip(&man)?, 0o644)?;

    let depends = depends(&binary, package.extra_depends)?;
    let size_kb = dir_size(&tree) / 1024;
    let control = format!(
        "Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: mctc developers <mctc@example.invalid>\nSection: admin\nPriority: optional\nInstalled-Size: {size_kb}\nDepends: {depends}\nDescription: {summary}\n {description}\n",
        name = package.name,
        summary = package.summary,
        description = package.description,
    );
    write(&tree.join("DEBIAN/control"), control.as_bytes(), 0o644)?;
    write(
        &tree.join("DEBIAN/conffiles"),
        (package.conffiles.join("\n") + "\n").as_bytes(),
        0o644,
    )?;
    let unit = format!("{}.service", package.name);
    let conf = format!("{}.conf", package.name);
    // sysusers first (the tmpfiles entries name its users), then tmpfiles;
    // configuration readable by the service's group only. The service is not
    // enabled: a device or service must be provisioned before it starts.
    let group = if package.name == "mctc-agent" {
        "mctc"
    } else {
        package.name
    };
    let postinst = format!(
        "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n    systemd-sysusers {conf}\n    systemd-tmpfiles --create {conf}\n    for f in {conffiles}; do\n        [ -f \"$f\" ] && chgrp {group} \"$f\" && chmod 0640 \"$f\"\n    done\n    if [ -d /run/systemd/system ]; then\n        systemctl --system daemon-reload >/dev/null || true\n    fi\nfi\nexit 0\n",
        conffiles = package.conffiles.join(" "),
    );
    write(&tree.join("DEBIAN/postinst"), postinst.as_bytes(), 0o755)?;
    let prerm = format!(
        "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then\n    systemctl --system stop {unit} >/dev/null 2>&1 || true\nfi\nexit 0\n"
    );
    write(&tree.join("DEBIAN/prerm"), prerm.as_bytes(), 0o755)?;
    // State (keys, lineage, databases) is never deleted by the package
    // manager, not even on purge: lineage not yet forwarded must not be lost.
    let postrm = "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then\n    systemctl --system daemon-reload >/dev/null || true\nfi\nexit 0\n";
    write(&tree.join("DEBIAN/postrm"), postrm.as_bytes(), 0o755)?;

    let deb = out.join(format!("{}_{version}_{arch}.deb", package.name));
    run(
        &format!("dpkg-deb {}", package.name),
        "dpkg-deb",
        &[
            "--root-owner-group",
            "-Zxz",
            "--build",
            path_str(&tree),
            path_str(&deb),
        ],
    )?;
    Ok(deb)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        dir_size(&path)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The Debian packages providing the shared libraries `binary` links, each
/// at least at the installed version, plus `extra`.
fn depends(binary: &Path, extra: &[&str]) -> Result<String, String> {
    let ldd = output("ldd", &[path_str(binary)])?;
    let mut packages = BTreeSet::new();
    for line in ldd.lines() {
        let Some(path) = line
            .split("=>")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        else {
            continue;
        };
        let mut candidates = vec![path.to_owned()];
        if let Ok(real) = std::fs::canonicalize(path) {
            candidates.push(real.display().to_string());
        }
        // usr-merged systems: dpkg knows the file under /lib or /usr/lib.
        let more: Vec<String> = candidates
            .iter()
            .flat_map(|c| {
                [
                    c.strip_prefix("/usr").map(str::to_owned),
                    Some(format!("/usr{c}")),
                ]
            })
            .flatten()
            .collect();
        candidates.extend(more);
        let owner = candidates.iter().find_map(|c| {
            let out = Command::new("dpkg").args(["-S", c]).output().ok()?;
            if !out.status.success() {
                return None;
            }
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split(':').next().map(|p| p.trim().to_owned())
        });
        match owner {
            Some(package) => {
                packages.insert(package);
            }
            None => {
                return Err(format!(
                    "no Debian package owns {path} (linked by {})",
                    binary.display()
                ));
            }
        }
    }
    let mut depends: Vec<String> = packages
        .into_iter()
        .map(|package| {
            let version =
                output("dpkg-query", &["-W", "-f=${Version}", &package]).unwrap_or_default();
            // Upstream version only: any Debian revision of it will do.
            let upstream = version.split('-').next().unwrap_or("").to_owned();
            if upstream.is_empty() {
                package
            } else {
                format!("{package} (>= {upstream})")
            }
        })
        .collect();
    depends.extend(extra.iter().map(|e| (*e).to_owned()));
    Ok(depends.join(", "))
}

/// roff escaping for text inside a no-fill block.
fn roff(text: &str) -> String {
    text.lines()
        .map(|line| {
            let escaped = line.replace('\\', "\\e");
            if escaped.starts_with('.') || escaped.starts_with('\'') {
                format!("\\&{escaped}")
            } else {
                escaped
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The subcommand names listed in a clap `--help` text.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect()
}

fn help_of(binary: &Path, path: &[String]) -> Result<String, String> {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    output(path_str(binary), &args)
}

/// A man page made of the binary's own help texts, one section per command.
fn man_page(binary: &Path, package: &Package) -> Result<Vec<u8>, String> {
    let top = help_of(binary, &[])?;
    let about = top.lines().next().unwrap_or(package.summary).to_owned();
    let mut page = format!(
        ".TH {upper} 8 \"\" \"mctc {version}\" \"System Administration\"\n.SH NAME\n{name} \\- {about}\n.SH SYNOPSIS\n.B {name}\n\\fICOMMAND\\fR [\\fIOPTIONS\\fR]\n.SH DESCRIPTION\n.nf\n{body}\n.fi\n.SH COMMANDS\n",
        upper = package.binary.to_uppercase(),
        version = env!("CARGO_PKG_VERSION"),
        name = package.binary,
        body = roff(&top),
    );
    let mut queue: Vec<Vec<String>> = subcommands(&top).into_iter().map(|c| vec![c]).collect();
    while let Some(path) = queue.first().cloned() {
        queue.remove(0);
        let help = help_of(binary, &path)?;
        page.push_str(&format!(
            ".SS \"{} {}\"\n.nf\n{}\n.fi\n",
            package.binary,
            path.join(" "),
            roff(&help)
        ));
        for sub in subcommands(&help) {
            let mut deeper = path.clone();
            deeper.push(sub);
            queue.push(deeper);
        }
    }
    page.push_str(&format!(
        ".SH FILES\n.nf\n{}\n.fi\n.SH EXIT STATUS\n0 success (permit, gate open), 1 refused or denied, 2 usage, configuration or environment error (a deny).\n.SH SEE ALSO\n.BR mctc-agent (8),\n.BR mctc-authority (8),\n.BR mctc-collector (8),\n/usr/share/doc/{}/README.md\n",
        roff(package.files_section),
        package.name
    ));
    Ok(page.into_bytes())
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run gzip: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("gzip stdin")?
        .write_all(bytes)
        .map_err(|e| format!("gzip: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("gzip: {e}"))?;
    if !out.status.success() {
        return Err("gzip failed".into());
    }
    Ok(out.stdout)
}

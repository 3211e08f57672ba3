//! The debhelper build: a staging tree holding `debian/` (packaging/debian
//! plus the units, sysusers and tmpfiles entries from packaging/), the
//! binaries, generated man pages and completions, example configurations
//! and READMEs; `dpkg-buildpackage -b` turns it into the .debs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, docs};

/// A package: its name is its binary's, `crate_dir` holds its README.
struct Package {
    name: &'static str,
    crate_dir: &'static str,
    /// Configuration files from configs/ it ships as examples and seeds.
    configs: &'static [&'static str],
    /// More docs (paths relative to the workspace).
    docs: &'static [&'static str],
}

const PACKAGES: &[Package] = &[
    Package {
        name: "mctc-agent",
        crate_dir: "agent",
        configs: &["agent.toml"],
        docs: &["packaging/README.swtpm"],
    },
    Package {
        name: "mctc-authority",
        crate_dir: "authority",
        configs: &["authority.toml", "policy.toml"],
        docs: &[],
    },
    Package {
        name: "mctc-collector",
        crate_dir: "collector",
        configs: &["collector.toml"],
        docs: &[],
    },
];

#[derive(Debug)]
pub struct Options {
    /// Where the binaries are (target/release, target/debug, or a cross
    /// target's directory).
    pub bin_dir: PathBuf,
    /// Debian architecture; the build machine's when `None`.
    pub arch: Option<String>,
    pub out: PathBuf,
    /// Package names; all when empty.
    pub packages: Vec<String>,
}

/// The workspace root (this crate lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds the packages; returns the .deb files (in `out`).
pub fn build(options: &Options) -> Result<Vec<PathBuf>, Error> {
    let root = root();
    let host = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let arch = options.arch.clone().unwrap_or_else(|| host.clone());
    let selected: Vec<&Package> = PACKAGES
        .iter()
        .filter(|p| options.packages.is_empty() || options.packages.iter().any(|n| n == p.name))
        .collect();
    if let Some(unknown) = options
        .packages
        .iter()
        .find(|n| !PACKAGES.iter().any(|p| p.name == n.as_str()))
    {
        return Err(Error::UnknownPackage(unknown.clone()));
    }
    let version = changelog_version(&root.join("packaging/debian/changelog"))?;
    if version != env!("CARGO_PKG_VERSION") {
        return Err(Error::Version {
            changelog: version,
            cargo: env!("CARGO_PKG_VERSION").to_owned(),
        });
    }

    let work = options.out.join(format!("build-{arch}"));
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(|e| io(&work, e))?;
    }
    let stage = work.join("mctc");
    copy_tree(&root.join("packaging/debian"), &stage.join("debian"))?;
    let debian = stage.join("debian");
    // Only the selected packages' stanzas (a cross build may have only the
    // agent's binary).
    let control = std::fs::read_to_string(debian.join("control")).map_err(|e| io(&debian, e))?;
    let kept: Vec<&str> = control
        .split("\n\n")
        .filter(|stanza| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix("Package: "))
                .is_none_or(|name| selected.iter().any(|p| p.name == name.trim()))
        })
        .collect();
    write(&debian.join("control"), kept.join("\n\n").as_bytes())?;

    for package in &selected {
        let name = package.name;
        for (from, to) in [
            (
                format!("packaging/systemd/{name}.service"),
                format!("{name}.service"),
            ),
            (
                format!("packaging/sysusers/{name}.conf"),
                format!("{name}.sysusers"),
            ),
            (
                format!("packaging/tmpfiles/{name}.conf"),
                format!("{name}.tmpfiles"),
            ),
        ] {
            copy(&root.join(from), &debian.join(to))?;
        }
        copy(&options.bin_dir.join(name), &stage.join("bin").join(name))?;
        let doc = stage.join("doc").join(name);
        copy(
            &root.join(package.crate_dir).join("README.md"),
            &doc.join("README.md"),
        )?;
        for extra in package.docs {
            let source = root.join(extra);
            let file = source.file_name().map(PathBuf::from).unwrap_or_default();
            copy(&source, &doc.join(file))?;
        }
        for config in package.configs {
            copy(
                &root.join("configs").join(config),
                &stage.join("examples").join(config),
            )?;
        }
    }
    // The broker's configuration (a drop-in for Debian's mosquitto.conf)
    // and the Grafana dashboard go with the authority (the fleet side).
    copy(
        &root.join("configs/mosquitto/conf.d/mctc.conf"),
        &stage.join("examples/mosquitto/mctc.conf"),
    )?;
    copy(
        &root.join("packaging/grafana/mctc-fleet.json"),
        &stage.join("examples/grafana/mctc-fleet.json"),
    )?;
    copy(
        &root.join("configs/mosquitto/dynamic-security.json"),
        &stage.join("examples/mosquitto/dynamic-security.json"),
    )?;
    docs::generate(&stage)?;

    let mut command = Command::new("dpkg-buildpackage");
    // -d: the build dependencies are cargo's, not Debian packages; -nc: no
    // `debian/rules clean` (nothing to clean in a fresh stage).
    command.args(["-b", "-us", "-uc", "-d", "-nc"]);
    if arch != host {
        command.arg(format!("--host-arch={arch}"));
    }
    command.current_dir(&stage);
    output(&mut command)?;

    let mut debs = Vec::new();
    for package in &selected {
        let file = format!("{}_{version}_{arch}.deb", package.name);
        let built = work.join(&file);
        let target = options.out.join(&file);
        std::fs::rename(&built, &target).map_err(|e| io(&built, e))?;
        debs.push(target);
    }
    Ok(debs)
}

/// `lintian --fail-on error` over `debs`: its report (tags, one a line).
pub fn lintian(debs: &[PathBuf]) -> Result<String, Error> {
    let mut command = Command::new("lintian");
    command.args([
        "--fail-on",
        "error",
        "--display-info",
        "--tag-display-limit",
        "0",
    ]);
    command.args(debs);
    output(&mut command)
}

/// The version of the newest entry of a Debian changelog.
fn changelog_version(path: &Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    text.lines()
        .next()
        .and_then(|l| {
            l.split_once('(')?
                .1
                .split_once(')')
                .map(|(v, _)| v.to_owned())
        })
        .ok_or_else(|| Error::Changelog(path.to_owned()))
}

fn output(command: &mut Command) -> Result<String, Error> {
    let program = format!("{:?}", command.get_program());
    let out = command.output().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(Error::Failed {
            program,
            status: out.status.to_string(),
            output: text,
        })
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|e| io(path, e))
}

/// Copies a file (keeping its mode), creating the destination's directory.
fn copy(from: &Path, to: &Path) -> Result<(), Error> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    std::fs::copy(from, to).map(|_| ()).map_err(|e| io(from, e))
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(to).map_err(|e| io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| io(from, e))? {
        let entry = entry.map_err(|e| io(from, e))?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            copy(&path, &target)?;
        }
    }
    Ok(())
}

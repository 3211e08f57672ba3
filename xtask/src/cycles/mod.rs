//! `cargo xtask cycles`: no two modules of a workspace crate import each
//! other, directly or around a loop. Every target of every workspace
//! package (library, binaries, tests, benches) is read with `syn`
//! ([`modules`]), its module graph built and its strongly connected
//! components found ([`graph`]); each component of two or more modules is
//! a cycle, printed as a path with the line that makes each step.
//!
//! Exceptions ([`verdict`]): the shim's error module by design
//! ([`DESIGN_SINKS`]), and `.ci/cycles-allowed.txt`, the cycles found when
//! the check was added, to be removed as their fixes land. An entry there
//! matches the exact set of modules of a cycle (a cycle that grows fails
//! again), and an entry that matches no cycle fails the check too, so the
//! file can only shrink.

mod error;
mod graph;
mod modules;
mod verdict;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub use error::CyclesError;
use modules::{CrateModules, Site};
pub use verdict::{Cycle, DESIGN_SINKS, TEMPORARY_FILE, judge};

use crate::sys::root;

/// `cargo xtask cycles [--list]`.
#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// Print every cycle found, allowed or not, in the allow-list's format,
    /// with the lines that make it
    #[arg(long)]
    list: bool,
}

/// The cycles of one target whose root file is `root_file`, and the
/// modules it declares without a file. The imports of `sinks` are not
/// followed.
pub fn target_cycles(
    target: &str,
    root_file: &Path,
    sinks: &[&str],
) -> Result<(Vec<Cycle>, Vec<String>), CyclesError> {
    let crate_modules = CrateModules::read(root_file)?;
    let (mut graph, sites) = crate_modules.graph();
    for sink in sinks {
        if let Some(edges) = graph.edges.get_mut(*sink) {
            edges.clear();
        }
    }
    let workspace = root();
    let mut cycles = Vec::new();
    for component in graph.cycles() {
        let path = graph.path_through(&component);
        let steps = path
            .windows(2)
            .map(|pair| {
                let site = sites.get(&(pair[0].clone(), pair[1].clone()));
                let at = site.map_or(String::new(), |s| location(s, &workspace));
                format!("{} -> {}{at}", pair[0], pair[1])
            })
            .collect();
        cycles.push(Cycle {
            target: target.to_owned(),
            modules: component,
            steps,
        });
    }
    Ok((cycles, crate_modules.missing))
}

fn location(site: &Site, workspace: &Path) -> String {
    let file = site.file.strip_prefix(workspace).unwrap_or(&site.file);
    format!("  ({}:{} `{}`)", file.display(), site.line, site.path)
}

/// Every target of every workspace package: `package (kind name)` and its
/// root file.
fn targets() -> Result<Vec<(String, PathBuf)>, CyclesError> {
    let out = Command::new("cargo")
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .map_err(|e| CyclesError::Metadata(e.to_string()))?;
    if !out.status.success() {
        return Err(CyclesError::Metadata(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| CyclesError::Metadata(e.to_string()))?;
    let mut targets = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let name = package["name"].as_str().unwrap_or("?");
        for target in package["targets"].as_array().into_iter().flatten() {
            let kind = target["kind"][0].as_str().unwrap_or("?");
            let Some(src) = target["src_path"].as_str() else {
                continue;
            };
            if kind == "custom-build" {
                continue;
            }
            let label = match kind {
                "lib" => format!("{name} (lib)"),
                _ => format!("{name} ({kind} {})", target["name"].as_str().unwrap_or("?")),
            };
            targets.push((label, PathBuf::from(src)));
        }
    }
    Ok(targets)
}

pub fn cycles(args: &Args) -> Result<(), String> {
    let started = Instant::now();
    println!("==> module cycles");
    let mut found = Vec::new();
    let mut missing = BTreeMap::new();
    let targets = targets().map_err(|e| e.to_string())?;
    for (target, file) in &targets {
        let sinks: Vec<&str> = DESIGN_SINKS
            .iter()
            .filter(|(t, _)| t == target)
            .map(|(_, module)| *module)
            .collect();
        let (cycles, without_file) =
            target_cycles(target, file, &sinks).map_err(|e| e.to_string())?;
        found.extend(cycles);
        if !without_file.is_empty() {
            missing.insert(target.clone(), without_file);
        }
    }
    found.sort();
    if args.list {
        for cycle in &found {
            println!("{}", cycle.key());
            for step in &cycle.steps {
                println!("    # {step}");
            }
        }
    }
    let allow_file = root().join(TEMPORARY_FILE);
    let temporary = match std::fs::read_to_string(&allow_file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", allow_file.display())),
    };
    let verdict = judge(found, &temporary).map_err(|e| e.to_string())?;
    for (target, modules) in &missing {
        println!("    note: {target}: no file for {}", modules.join(", "));
    }
    for (target, module) in DESIGN_SINKS {
        println!("    by design: the imports of {module} in {target} are not followed");
    }
    for cycle in &verdict.allowed_for_now {
        println!("    allowed for now ({TEMPORARY_FILE}): {}", cycle.key());
    }
    let mut problems = Vec::new();
    for cycle in &verdict.forbidden {
        let mut text = format!("module cycle in {}:", cycle.target);
        for step in &cycle.steps {
            text.push_str(&format!("\n    {step}"));
        }
        problems.push(text);
    }
    for entry in &verdict.stale {
        problems.push(format!(
            "`{entry}` in {TEMPORARY_FILE} is no longer a cycle: remove the line"
        ));
    }
    let took = started.elapsed().as_secs_f64();
    if problems.is_empty() {
        println!(
            "<== module cycles: ok ({} targets, {} cycles allowed for now, {took:.1} s)",
            targets.len(),
            verdict.allowed_for_now.len()
        );
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

#[cfg(test)]
mod tests;

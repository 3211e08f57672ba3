//! Which cycles fail the check: the design's one exception and the
//! temporary allow-list.

use std::collections::BTreeSet;

use super::error::CyclesError;

/// Modules whose own imports are not followed, by design: the shim's one
/// error type wraps the typed errors of the modules that return it
/// (`GateError`, `ChainBreak`, …), so `error` and each of them import
/// each other. Any cycle through such a module is accepted; the rest of
/// the crate must still be acyclic.
pub const DESIGN_SINKS: &[(&str, &str)] = &[("mctc-shim (lib)", "crate::error")];

/// The temporary allow-list, relative to the workspace root.
pub const TEMPORARY_FILE: &str = ".ci/cycles-allowed.txt";

/// One cycle: the target, its modules, a path around it with evidence.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cycle {
    /// `mctc-agent (lib)`.
    pub target: String,
    pub modules: BTreeSet<String>,
    /// `crate::a -> crate::b  (file:line `path`)`, one line per step.
    pub steps: Vec<String>,
}

impl Cycle {
    /// The allow-list line for this cycle.
    pub fn key(&self) -> String {
        let modules: Vec<&str> = self.modules.iter().map(String::as_str).collect();
        format!("{}: {}", self.target, modules.join(" "))
    }
}

type Entry = (String, BTreeSet<String>);

/// `package (target): module module …`.
fn parse_entry(text: &str) -> Option<Entry> {
    let (target, modules) = text.split_once(':')?;
    let modules: BTreeSet<String> = modules.split_whitespace().map(str::to_owned).collect();
    (modules.len() > 1 && target.contains('(')).then(|| (target.trim().to_owned(), modules))
}

fn read_allow_list(text: &str) -> Result<Vec<Entry>, CyclesError> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        entries.push(parse_entry(line).ok_or_else(|| CyclesError::AllowList {
            file: TEMPORARY_FILE,
            line: i + 1,
            text: line.to_owned(),
        })?);
    }
    Ok(entries)
}

/// What the check found, split by the temporary allow-list.
#[derive(Debug, Default)]
pub struct Verdict {
    pub forbidden: Vec<Cycle>,
    pub allowed_for_now: Vec<Cycle>,
    /// Temporary entries that match no cycle any more.
    pub stale: Vec<String>,
}

/// Splits `cycles` by the allow-list `temporary` (the file's text); an
/// entry matches a cycle of exactly its modules, so a cycle that grew
/// fails again.
pub fn judge(cycles: Vec<Cycle>, temporary: &str) -> Result<Verdict, CyclesError> {
    let temporary = read_allow_list(temporary)?;
    let mut verdict = Verdict::default();
    let mut used = BTreeSet::new();
    for cycle in cycles {
        let entry = (cycle.target.clone(), cycle.modules.clone());
        if temporary.contains(&entry) {
            used.insert(entry);
            verdict.allowed_for_now.push(cycle);
        } else {
            verdict.forbidden.push(cycle);
        }
    }
    for entry in temporary {
        if !used.contains(&entry) {
            let modules: Vec<&str> = entry.1.iter().map(String::as_str).collect();
            verdict
                .stale
                .push(format!("{}: {}", entry.0, modules.join(" ")));
        }
    }
    Ok(verdict)
}

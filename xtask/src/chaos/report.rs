//! The suite's result: one row per fault, the crash-loop counts, the fuzz
//! executions per target; printed, and saved as Markdown to
//! `target/chaos/last-run.md` (the README's "Reliability" section is that
//! file from the last full run).

use std::fmt::Write as _;

use super::crash_loop::CrashReport;
use super::scenarios::Outcome;
use crate::fuzz::{Build, FuzzResult};
use crate::sys::root;

/// How a row ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Not run, and why (`needs root`): said in the row, the summary line
    /// and the saved report, never counted as a pass.
    Skipped(String),
}

/// One row of the fault matrix.
#[derive(Debug)]
pub struct Row {
    pub fault: String,
    pub expected: String,
    pub observed: String,
    pub close_ms: Option<u64>,
    pub lost: u64,
    pub verdict: Verdict,
    pub seconds: f64,
    pub failures: Vec<String>,
}

impl Row {
    pub fn new(fault: &str, expected: &str, outcome: Outcome, seconds: f64) -> Row {
        Row {
            fault: fault.to_owned(),
            expected: expected.to_owned(),
            observed: outcome.observed,
            close_ms: outcome.close_ms,
            lost: outcome.lost,
            verdict: if outcome.failures.is_empty() && outcome.lost == 0 {
                Verdict::Pass
            } else {
                Verdict::Fail
            },
            seconds,
            failures: outcome.failures,
        }
    }

    /// A row that was not run.
    pub fn skipped(fault: &str, expected: &str, why: &str) -> Row {
        Row {
            fault: fault.to_owned(),
            expected: expected.to_owned(),
            observed: format!("not run: {why}"),
            close_ms: None,
            lost: 0,
            verdict: Verdict::Skipped(why.to_owned()),
            seconds: 0.0,
            failures: Vec::new(),
        }
    }

    pub fn failed(&self) -> bool {
        self.verdict == Verdict::Fail
    }

    fn close(&self) -> String {
        self.close_ms.map_or("—".to_owned(), |ms| ms.to_string())
    }

    fn result(&self) -> String {
        match &self.verdict {
            Verdict::Pass => "ok".to_owned(),
            Verdict::Fail => "FAIL".to_owned(),
            Verdict::Skipped(why) => format!("SKIPPED: {why}"),
        }
    }

    /// The progress line printed as the row finishes.
    pub fn line(&self) -> String {
        let mut line = format!(
            "[{}] {} ({:.1} s): {}; close {} ms; lost {}",
            self.result(),
            self.fault,
            self.seconds,
            self.observed,
            self.close(),
            self.lost
        );
        for failure in &self.failures {
            let _ = write!(line, "\n      - {failure}");
        }
        line
    }
}

/// Everything one run produced.
#[derive(Debug)]
pub struct Summary {
    pub quick: bool,
    /// `--only TEXT`: a partial run (never saved as the last full run).
    pub only: Option<String>,
    /// The seed of the run's one random generator (`--seed` replays it).
    pub seed: u64,
    pub rows: Vec<Row>,
    pub crash: CrashReport,
    pub fuzz: Result<Vec<FuzzResult>, String>,
    /// How the fuzz targets were built.
    pub fuzz_build: Build,
    pub matrix_secs: f64,
    pub crash_secs: f64,
    pub fuzz_secs: f64,
    pub total_secs: f64,
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

impl Summary {
    fn command(&self) -> String {
        let mut command = String::from("cargo xtask chaos");
        if self.quick {
            command.push_str(" --quick");
        }
        if let Some(only) = &self.only {
            let _ = write!(command, " --only '{only}'");
        }
        command
    }

    /// The Markdown report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let passed = self
            .rows
            .iter()
            .filter(|r| r.verdict == Verdict::Pass)
            .count();
        let skipped = self
            .rows
            .iter()
            .filter(|r| matches!(r.verdict, Verdict::Skipped(_)))
            .count();
        let skipped = if skipped == 0 {
            String::new()
        } else {
            format!(" ({skipped} SKIPPED, not passed)")
        };
        let _ = writeln!(
            out,
            "`{} --seed {}`: {passed}/{} faults passed{skipped}; matrix {:.0} s, crash loop {:.0} s, fuzz {:.0} s, total {:.0} s (binaries already built).\n",
            self.command(),
            self.seed,
            self.rows.len(),
            self.matrix_secs,
            self.crash_secs,
            self.fuzz_secs,
            self.total_secs
        );
        let _ = writeln!(
            out,
            "| # | fault | expected | observed | time to close (ms) | records lost | result |\n|---|---|---|---|---|---|---|"
        );
        for (i, row) in self.rows.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                i + 1,
                cell(&row.fault),
                cell(&row.expected),
                cell(&row.observed),
                row.close(),
                row.lost,
                row.result()
            );
        }
        let failed: Vec<&Row> = self.rows.iter().filter(|r| r.failed()).collect();
        if !failed.is_empty() {
            let _ = writeln!(out, "\nFailures:");
            for row in failed {
                for failure in &row.failures {
                    let _ = writeln!(out, "- {}: {}", row.fault, cell(failure));
                }
            }
        }
        let c = &self.crash;
        let _ = writeln!(
            out,
            "\nCrash loop: {} iterations ({} SIGKILLed while permitting), {} permits and {} denies answered, \
             {} torn tails cut on restart, {} records written, {} at the collector, records lost {}: {}.",
            c.iterations,
            c.killed_while_permitting,
            c.permits,
            c.denies,
            c.torn_tails,
            c.records,
            c.collector_records,
            c.lost,
            if c.passed() { "ok" } else { "FAIL" }
        );
        for problem in &c.problems {
            let _ = writeln!(out, "- {}", cell(problem));
        }
        match &self.fuzz {
            Ok(results) => {
                let _ = writeln!(
                    out,
                    "\nFuzz smoke run ({}):\n\n| target | executions | execs/s | result |\n|---|---|---|---|",
                    self.fuzz_build.describe()
                );
                for r in results {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} |",
                        r.target,
                        r.execs,
                        r.execs_per_sec,
                        cell(&r.outcome())
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(out, "\nFuzz smoke run could not run: {}", cell(e));
            }
        }
        out
    }

    /// The files under `target/chaos/` this run's report goes to: every run
    /// is the last run; only a whole, unreduced matrix is the last full run.
    fn report_files(&self) -> Vec<&'static str> {
        let mut names = vec!["last-run.md"];
        if !self.quick && self.only.is_none() {
            names.push("last-full-run.md");
        }
        names
    }

    /// Saves the report to `target/chaos/last-run.md` (and, for a full run,
    /// `target/chaos/last-full-run.md`).
    pub fn save(&self) -> Result<(), String> {
        let dir = root().join("target").join("chaos");
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let text = self.render();
        for name in self.report_files() {
            let path = dir.join(name);
            std::fs::write(&path, &text).map_err(|e| format!("write {}: {e}", path.display()))?;
        }
        println!("==> report saved to {}", dir.join("last-run.md").display());
        Ok(())
    }

    /// Ok only if every row, the crash loop and every fuzz target passed.
    pub fn verdict(&self) -> Result<(), String> {
        let failed: Vec<&str> = self
            .rows
            .iter()
            .filter(|r| r.failed())
            .map(|r| r.fault.as_str())
            .collect();
        let mut problems = Vec::new();
        if !failed.is_empty() {
            problems.push(format!("faults failed: {}", failed.join("; ")));
        }
        if !self.crash.passed() {
            problems.push("the crash loop failed".to_owned());
        }
        match &self.fuzz {
            Ok(results) => {
                let crashed: Vec<&str> = results
                    .iter()
                    .filter(|r| r.crashed)
                    .map(|r| r.target.as_str())
                    .collect();
                if !crashed.is_empty() {
                    problems.push(format!("fuzz targets failed: {}", crashed.join(", ")));
                }
            }
            Err(e) => problems.push(format!("fuzz smoke run: {e}")),
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(rows: Vec<Row>) -> Summary {
        Summary {
            quick: true,
            only: None,
            seed: 7,
            rows,
            crash: CrashReport {
                iterations: 3,
                ..CrashReport::default()
            },
            fuzz: Ok(Vec::new()),
            fuzz_build: Build::Smoke,
            matrix_secs: 1.0,
            crash_secs: 1.0,
            fuzz_secs: 1.0,
            total_secs: 3.0,
        }
    }

    #[test]
    fn a_row_fails_on_any_failure_or_lost_record() {
        let ok = Row::new("f", "e", Outcome::default(), 1.0);
        assert_eq!(ok.verdict, Verdict::Pass);
        let lost = Row::new(
            "f",
            "e",
            Outcome {
                lost: 1,
                ..Outcome::default()
            },
            1.0,
        );
        assert!(lost.failed());
        let mut failing = Outcome::default();
        failing.fail("a permit while closed");
        let failed = Row::new("g", "e", failing, 1.0);
        assert!(failed.failed());
        let report = summary(vec![ok, failed]);
        let text = report.render();
        assert!(text.contains("| 2 | g | e |"), "{text}");
        assert!(text.contains("- g: a permit while closed"), "{text}");
        assert!(report.verdict().unwrap_err().contains("faults failed: g"));
    }

    #[test]
    fn a_clean_run_passes_and_pipes_in_cells_are_escaped() {
        let outcome = Outcome {
            observed: "a | b".to_owned(),
            close_ms: Some(12),
            ..Outcome::default()
        };
        let report = summary(vec![Row::new("f", "e", outcome, 1.0)]);
        assert!(report.verdict().is_ok());
        assert!(report.render().contains("| a \\| b | 12 | 0 | ok |"));
        assert!(report.render().contains("--seed 7`"));
        let mut broken = summary(Vec::new());
        broken.crash.lost = 1;
        assert!(broken.verdict().is_err());
    }

    /// A row that needs root is said to be skipped in its line and the
    /// summary, and is not counted as passed; it does not fail the run.
    #[test]
    fn a_skipped_row_is_loud_and_not_a_pass() {
        let row = Row::skipped("disk full", "deny", "needs root");
        assert!(row.line().starts_with("[SKIPPED: needs root] disk full"));
        let report = summary(vec![row, Row::new("f", "e", Outcome::default(), 1.0)]);
        let text = report.render();
        assert!(
            text.contains("1/2 faults passed (1 SKIPPED, not passed)"),
            "{text}"
        );
        assert!(text.contains("| SKIPPED: needs root |"), "{text}");
        assert!(report.verdict().is_ok());
    }

    #[test]
    fn a_partial_run_says_so_and_is_never_the_last_full_run() {
        let mut run = summary(Vec::new());
        run.quick = false;
        assert_eq!(run.report_files(), ["last-run.md", "last-full-run.md"]);
        assert_eq!(run.command(), "cargo xtask chaos");
        run.only = Some("swtpm".into());
        assert_eq!(run.report_files(), ["last-run.md"]);
        assert_eq!(run.command(), "cargo xtask chaos --only 'swtpm'");
        assert!(
            run.render()
                .contains("cargo xtask chaos --only 'swtpm' --seed 7")
        );
        run.only = None;
        run.quick = true;
        assert_eq!(run.report_files(), ["last-run.md"]);
    }
}

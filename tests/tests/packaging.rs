//! The shipped systemd units are hardened: `systemd-analyze security
//! --offline=true` rates each at most 1.5 (lower is better).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use std::path::Path;
use std::process::Command;

const BOUND: f64 = 1.5;

fn exposure(unit: &Path) -> f64 {
    mctc_tests::require_program("systemd-analyze", "systemd").unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no verdict for {}:\n{text}\n{}",
                unit.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        });
    // "→ Overall exposure level for mctc-agent.service: 1.5 OK 🙂"
    let value = line
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    value.parse().unwrap()
}

#[test]
fn every_shipped_unit_rates_at_most_the_bound() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd");
    let mut units = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "service") {
            let level = exposure(&path);
            println!("{}: {level}", path.display());
            assert!(
                level <= BOUND,
                "{} rates {level}, above the bound {BOUND}",
                path.display()
            );
            units += 1;
        }
    }
    assert_eq!(units, 4, "agent, authority, collector and console units");
}

#[test]
fn the_bound_is_enforced_against_a_weak_unit() {
    let dir = tempfile::tempdir().unwrap();
    let weak = dir.path().join("weak.service");
    std::fs::write(&weak, "[Service]\nExecStart=/bin/true\n").unwrap();
    assert!(
        exposure(&weak) > BOUND,
        "an unhardened unit must fail the bound"
    );
}

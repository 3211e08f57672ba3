//! Crash loops: start the agent, let concurrent clients ask for
//! authorizations, SIGKILL it at a random moment, start it again — many
//! times. After every kill each permit a client was answered must be in
//! the log as recovered (a permit under the same artifact, chain intact);
//! at the end the collector must hold the same records.

use std::time::{Duration, Instant};

use super::broken::Broken;
use super::lineage;
use super::probe::{self, Permit, Probe};
use super::rig::{LINEAGE, RECOVERY, Rig};
use mctc_tests::wait_until;

/// Clients asking at once in every iteration.
const CLIENTS: usize = 4;
/// The kill comes uniformly within this long after the agent's socket is
/// up: early kills hit the start and the first attestation, later ones a
/// burst of decisions.
const KILL_WITHIN_MS: u32 = 1_200;

/// What the crash loop did.
#[derive(Debug, Default)]
pub struct CrashReport {
    pub iterations: u32,
    /// Iterations in which the gate had permitted before the kill.
    pub killed_while_permitting: u32,
    pub permits: u64,
    pub denies: u64,
    /// Permits whose record was missing or different after the restart,
    /// or at the collector at the end.
    pub lost: u64,
    /// Restarts that found (and cut) a torn tail.
    pub torn_tails: u32,
    pub records: u64,
    pub collector_records: u64,
    pub seconds: f64,
    pub problems: Vec<String>,
    pub skipped: bool,
}

impl CrashReport {
    /// Not run (`--only` picked rows of the matrix).
    pub fn skipped() -> CrashReport {
        CrashReport {
            skipped: true,
            ..CrashReport::default()
        }
    }

    pub fn passed(&self) -> bool {
        self.skipped || (self.problems.is_empty() && self.lost == 0 && self.iterations > 0)
    }
}

/// Runs `iterations` kill/restart cycles on a device of its own.
pub fn run(rig: &mut Rig, iterations: u32, rng: &mut fastrand::Rng) -> Result<CrashReport, Broken> {
    let started = Instant::now();
    let mut report = CrashReport::default();
    let mut dev = rig.device("crash", LINEAGE, Vec::new());
    dev.start()?;
    dev.must_open()?;
    let mut pruned: Vec<Permit> = Vec::new();
    let mut all_permits: Vec<Permit> = Vec::new();
    for i in 0..iterations {
        let clients: Vec<Probe> = (0..CLIENTS)
            .map(|c| Probe::start(&dev.device.socket, &format!("crash-{i}-{c}")))
            .collect();
        // The fault itself: the kill lands at a seeded random moment.
        std::thread::sleep(Duration::from_millis(u64::from(rng.u32(..KILL_WITHIN_MS))));
        dev.device.kill();
        let mut seen = Vec::new();
        for client in clients {
            seen.extend(client.stop());
        }
        let permits = probe::permits(&seen);
        report.iterations += 1;
        report.permits += permits.len() as u64;
        report.denies += seen
            .iter()
            .filter(|o| matches!(o.answer, probe::Answer::Deny { .. }))
            .count() as u64;
        if !permits.is_empty() {
            report.killed_while_permitting += 1;
        }
        match dev.disk() {
            Ok(disk) => {
                if disk.tail_bytes > 0 {
                    report.torn_tails += 1;
                }
                for permit in &permits {
                    let seq = &permit.seq;
                    match disk.get(*seq) {
                        Some(record) if lineage::is_permit_of(&record.bytes, permit) => {}
                        Some(_) => {
                            report.lost += 1;
                            report.problems.push(format!(
                                "iteration {i}: seq {seq} answered permit, recorded otherwise"
                            ));
                        }
                        None if disk.first_seq().is_some_and(|f| *seq < f) => {
                            pruned.push(permit.clone());
                        }
                        None => {
                            report.lost += 1;
                            report.problems.push(format!(
                                "iteration {i}: seq {seq} answered permit, lost in the crash"
                            ));
                        }
                    }
                }
            }
            Err(e) => report.problems.push(format!("iteration {i}: {e}")),
        }
        all_permits.extend(permits);
        dev.start()?;
        if report.problems.len() > 10 {
            break;
        }
    }
    // The collector ends with what the device holds.
    match dev.disk() {
        Ok(disk) => {
            report.records = disk.last_seq().map_or(0, |s| s + 1);
            let target = disk.last_seq().map_or(0, |s| s + 1);
            let mut collected = lineage::Collected::default();
            let caught_up = wait_until(RECOVERY, || {
                collected = rig.collected(&dev).unwrap_or_default();
                collected.next_seq() >= target
            });
            report.collector_records = collected.hashes.len() as u64;
            if caught_up.is_none() {
                report.problems.push(format!(
                    "the collector holds {} records, the device wrote {target}",
                    collected.next_seq()
                ));
            }
            for record in &disk.records {
                if collected.hashes.get(&record.seq) != Some(&record.hash) {
                    report.problems.push(format!(
                        "seq {}: the collector's record differs or is missing",
                        record.seq
                    ));
                    break;
                }
            }
            for Permit { seq, .. } in all_permits.iter().chain(&pruned) {
                if !collected.hashes.contains_key(seq) {
                    report.lost += 1;
                    report
                        .problems
                        .push(format!("seq {seq}: permit not at the collector"));
                }
            }
            if !collected.anomalies.is_empty() {
                report
                    .problems
                    .push(format!("collector anomalies: {:?}", collected.anomalies));
            }
        }
        Err(e) => report.problems.push(format!("final lineage: {e}")),
    }
    report.problems.truncate(10);
    report.seconds = started.elapsed().as_secs_f64();
    dev.device.kill();
    Ok(report)
}

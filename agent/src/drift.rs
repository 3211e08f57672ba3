//! The drift check: every `drift_interval` the PCRs the installed artifact
//! covers and the TPM boot counters are read again and compared with what
//! the artifact attested; measured files are checked too. Any difference
//! goes to the enforcement task, which closes the gate at once.
//!
//! The baseline comes from the enforcement task (a watch channel): the
//! installed artifact's PCR selection, digest, boot counters and id, or
//! nothing while the gate is not open. A finding names the artifact it was
//! compared with, so a finding about an artifact already replaced is
//! ignored.

use std::time::Duration;

use mctc_shim::lineage::DriftKind;
use mctc_shim::tpm::{BootCounters, PcrSelection};
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::clock::CurrentBoot;
use crate::enforcement::Input;
use crate::measured::MeasuredFiles;
use crate::platform::Platform;
use crate::state::StateDir;

/// What an open gate's artifact attested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Baseline {
    pub cti: [u8; 16],
    pub selection: PcrSelection,
    pub pcr_digest: [u8; 32],
    pub boot: BootCounters,
}

/// A drift-check result for the enforcement task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The platform differs from the artifact `cti` attested (`None`: a
    /// measured file changed, whatever is installed).
    Drift {
        kind: DriftKind,
        detail: String,
        cti: Option<[u8; 16]>,
    },
    /// The TPM could not be read (it is not verified, so the gate closes).
    TpmUnavailable { detail: String },
    /// The TPM answers again.
    TpmBack,
}

fn describe(selection: PcrSelection) -> String {
    let list: Vec<String> = selection.indices().map(|i| i.to_string()).collect();
    format!("PCR composite over [{}] differs", list.join(","))
}

/// Runs until the enforcement inbox closes.
pub async fn run<P: Platform>(
    platform: P,
    interval: Duration,
    mut baseline: watch::Receiver<Option<Baseline>>,
    mut measured: Option<MeasuredFiles>,
    boot: CurrentBoot,
    state: StateDir,
    inbox: mpsc::Sender<Input>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tpm_ok = true;
    let mut reported: Option<[u8; 16]> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = baseline.changed() => {
                if changed.is_err() {
                    return;
                }
                // A new artifact: check it right away.
            }
        }
        let current = *baseline.borrow_and_update();
        let mut findings = Vec::new();
        if let Some(base) = current {
            match platform.observe(base.selection).await {
                Ok(observed) => {
                    boot.set(observed.boot);
                    if !tpm_ok {
                        tpm_ok = true;
                        findings.push(Finding::TpmBack);
                    }
                    let drift = if observed.boot != base.boot {
                        Some((
                            DriftKind::Boot,
                            format!(
                                "TPM boot {}/{} is not the attested {}/{}",
                                observed.boot.reset,
                                observed.boot.restart,
                                base.boot.reset,
                                base.boot.restart
                            ),
                        ))
                    } else if observed.pcr_digest != base.pcr_digest {
                        Some((DriftKind::Pcr, describe(base.selection)))
                    } else {
                        None
                    };
                    if let Some((kind, detail)) = drift
                        && reported != Some(base.cti)
                    {
                        reported = Some(base.cti);
                        findings.push(Finding::Drift {
                            kind,
                            detail,
                            cti: Some(base.cti),
                        });
                    }
                }
                Err(detail) => {
                    if tpm_ok {
                        tpm_ok = false;
                        findings.push(Finding::TpmUnavailable { detail });
                    }
                }
            }
        }
        if let Some(files) = measured.take() {
            let (files, changes) = match tokio::task::spawn_blocking(move || {
                let mut files = files;
                let changes = files.check();
                (files, changes)
            })
            .await
            {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!(error = %e, "measured-file check failed");
                    return;
                }
            };
            for change in changes {
                // Make the change visible to the authority: the next quote
                // shows it and policy refuses.
                if let Err(e) = platform.extend(files.pcr(), change.digest).await {
                    tracing::error!(error = %e, "could not extend the changed file's digest");
                }
                if let Err(e) = state.set_measured(&files.record(boot.get())) {
                    tracing::warn!(error = %e, "could not persist measured digests");
                }
                findings.push(Finding::Drift {
                    kind: DriftKind::File,
                    detail: format!("{} changed", change.path.display()),
                    cti: None,
                });
            }
            measured = Some(files);
        }
        for finding in findings {
            if inbox.send(Input::Finding(finding)).await.is_err() {
                return;
            }
        }
    }
}

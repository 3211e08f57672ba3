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
//!
//! A TPM that cannot be read is reported on every check, not only the
//! first, and it is read on every check until it answers again, with the
//! gate open or not: the enforcement task keeps the gate closed and starts
//! no attestation while the reports come, and re-attests on
//! [`Finding::TpmBack`].

use std::future::Future;
use std::time::Duration;

use mctc_shim::lineage::DriftKind;
use mctc_shim::tpm::{BootCounters, PcrSelection};
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::clock::CurrentBoot;
use crate::measured::MeasuredFiles;
use crate::platform::{Observation, Platform, PlatformError, PlatformOp, TpmClass};
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
    /// `class` is the error's ([`PlatformError::class`]): a fatal one is
    /// logged as such.
    TpmUnavailable { detail: String, class: TpmClass },
    /// The TPM answers again.
    TpmBack,
}

fn describe(selection: PcrSelection) -> String {
    let list: Vec<String> = selection.indices().map(|i| i.to_string()).collect();
    format!("PCR composite over [{}] differs", list.join(","))
}

/// How long one TPM read may take before the TPM counts as unavailable: a
/// hung TPM (or resource manager) must close the gate like a missing one,
/// not stall the check until the artifact's deadline. A PCR read takes
/// milliseconds on any TPM, even queued behind a quote.
pub const TPM_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How `observed` differs from what `base` attested, if it does.
fn compare(base: &Baseline, observed: &Observation) -> Option<(DriftKind, String)> {
    if observed.boot != base.boot {
        Some((
            DriftKind::Boot,
            format!(
                "TPM boot {}/{} is not the attested {}/{}",
                observed.boot.reset, observed.boot.restart, base.boot.reset, base.boot.restart
            ),
        ))
    } else if observed.pcr_digest != base.pcr_digest {
        Some((DriftKind::Pcr, describe(base.selection)))
    } else {
        None
    }
}

/// Where findings go: the enforcement task's inbox in production (which
/// implements this, so that this module need not know the enforcement
/// task's inputs), a channel of findings in tests.
pub trait Findings: Send + 'static {
    /// Delivers `finding`; false once nobody listens any more.
    fn report(&self, finding: Finding) -> impl Future<Output = bool> + Send;
}

impl Findings for mpsc::Sender<Finding> {
    async fn report(&self, finding: Finding) -> bool {
        self.send(finding).await.is_ok()
    }
}

/// Runs until nobody takes findings any more.
pub async fn run<P: Platform>(
    platform: P,
    interval: Duration,
    mut baseline: watch::Receiver<Option<Baseline>>,
    mut measured: Option<MeasuredFiles>,
    boot: CurrentBoot,
    state: StateDir,
    inbox: impl Findings,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tpm_ok = true;
    let mut reported: Option<[u8; 16]> = None;
    // What to read while the TPM is away and the gate closed: the last
    // baseline's selection (the TPM was last seen through it).
    let mut last_selection: Option<PcrSelection> = None;
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
            last_selection = Some(base.selection);
        }
        let selection = match (current, tpm_ok) {
            (Some(base), _) => Some(base.selection),
            (None, false) => last_selection,
            (None, true) => None,
        };
        if let Some(selection) = selection {
            let read = tokio::time::timeout(TPM_READ_TIMEOUT, platform.observe(selection))
                .await
                .unwrap_or(Err(PlatformError::Timeout {
                    op: PlatformOp::ReadPcrs,
                    within: TPM_READ_TIMEOUT,
                }));
            match read {
                Ok(observed) => {
                    boot.set(observed.boot);
                    if !tpm_ok {
                        tpm_ok = true;
                        findings.push(Finding::TpmBack);
                    }
                    if let Some(base) = current
                        && reported != Some(base.cti)
                        && let Some((kind, detail)) = compare(&base, &observed)
                    {
                        reported = Some(base.cti);
                        findings.push(Finding::Drift {
                            kind,
                            detail,
                            cti: Some(base.cti),
                        });
                    }
                }
                Err(e) => {
                    // Whatever its class: a TPM that cannot be read now
                    // cannot vouch for an open gate now.
                    tpm_ok = false;
                    findings.push(Finding::TpmUnavailable {
                        detail: e.to_string(),
                        class: e.class(),
                    });
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
            if !inbox.report(finding).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::platform::Quote;

    /// A TPM the test can take away and bring back; `hangs` makes a read
    /// never answer instead of failing.
    #[derive(Debug, Clone)]
    struct Unplugged(Arc<AtomicBool>, bool);

    impl Platform for Unplugged {
        async fn quote(
            &self,
            _qualifying_data: [u8; 32],
            _selection: PcrSelection,
        ) -> Result<Quote, PlatformError> {
            unreachable!("the drift check does not quote")
        }

        async fn observe(&self, _selection: PcrSelection) -> Result<Observation, PlatformError> {
            if self.0.load(Ordering::Acquire) {
                Ok(Observation {
                    pcr_digest: [0; 32],
                    boot: BootCounters::default(),
                })
            } else if self.1 {
                std::future::pending().await
            } else {
                Err(PlatformError::Tpm {
                    op: PlatformOp::ReadPcrs,
                    source: mctc_attest::Error::WorkerStopped,
                })
            }
        }

        async fn extend(&self, _pcr: u8, _digest: [u8; 32]) -> Result<(), PlatformError> {
            Ok(())
        }
    }

    async fn next_finding(inbox: &mut mpsc::Receiver<Finding>, within: Duration) -> Finding {
        match tokio::time::timeout(within, inbox.recv()).await {
            Ok(Some(finding)) => finding,
            Ok(other) => panic!("expected a finding, got {other:?}"),
            Err(_) => panic!("no finding within {within:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_tpm_is_reported_on_every_check_until_it_is_back() {
        reported_until_back(false, Duration::from_millis(500)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_tpm_is_reported_like_a_missing_one() {
        reported_until_back(true, TPM_READ_TIMEOUT + Duration::from_millis(500)).await;
    }

    /// The TPM goes away (failing, or hanging) with the gate open; it is
    /// reported on every check, also once the gate closed, until it answers
    /// again. `within`: how long one check may take to report.
    async fn reported_until_back(hangs: bool, within: Duration) {
        let dir = tempfile::tempdir().unwrap();
        let present = Arc::new(AtomicBool::new(true));
        let (baseline_tx, baseline) = watch::channel(Some(Baseline {
            cti: [1; 16],
            selection: PcrSelection::sha256(1),
            pcr_digest: [0; 32],
            boot: BootCounters::default(),
        }));
        let (inbox_tx, mut inbox) = mpsc::channel(16);
        tokio::spawn(run(
            Unplugged(Arc::clone(&present), hangs),
            Duration::from_millis(250),
            baseline,
            None,
            CurrentBoot::default(),
            StateDir::open(&dir.path().join("state")).unwrap(),
            inbox_tx,
        ));
        present.store(false, Ordering::Release);
        assert!(matches!(
            next_finding(&mut inbox, within).await,
            Finding::TpmUnavailable { .. }
        ));
        // The gate closed: no baseline any more. The TPM is still watched
        // and still reported, so nothing can keep the gate open without it.
        baseline_tx.send_replace(None);
        for _ in 0..5 {
            assert!(matches!(
                next_finding(&mut inbox, within).await,
                Finding::TpmUnavailable { .. }
            ));
        }
        present.store(true, Ordering::Release);
        let mut finding = next_finding(&mut inbox, within).await;
        if hangs && matches!(finding, Finding::TpmUnavailable { .. }) {
            // The read under way when it came back still times out.
            finding = next_finding(&mut inbox, within).await;
        }
        assert_eq!(finding, Finding::TpmBack);
        // Back and no baseline: quiet again.
        let quiet = tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await;
        assert!(quiet.is_err(), "{quiet:?}");
    }
}

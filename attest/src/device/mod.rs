//! The TPM on the device, through tss-esapi.
//!
//! One worker thread owns the `tss_esapi::Context` (a TPM context is neither
//! `Sync` nor safe to share, and without a resource manager two contexts
//! fight over the TPM's three object slots). [`Tpm`] is a cheap, cloneable
//! handle: each call sends a job over a bounded channel and awaits the reply.
//! When every handle is dropped, or [`Tpm::shutdown`] is called, the worker
//! drops the context (flushing what it loaded) and ends.
//!
//! The worker heals itself: a failure below the TPM (simulator killed, TCTI
//! error) drops the context and the next call reconnects; a TPM reset or
//! restart (transient objects gone) is noticed and the keys are reloaded.
//! Each failure is still returned to the caller as a typed error.

mod ak_store;
mod identity;
mod keys;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::evidence::{BootCounters, ClockInfo, Evidence};
use crate::pcr::{PcrSelection, PcrValues};
pub use crate::verifier::{AkKind, EkKind};
pub use keys::ak_template;
use worker::Worker;

pub use identity::{DEFAULT_TCTI, Identity, TpmConfig, TpmInfo};

/// Jobs queued before callers wait for the worker.
const QUEUE_DEPTH: usize = 32;

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// A handle on the TPM worker. Clone it freely; all clones talk to one
/// worker, which serialises their requests.
#[derive(Debug, Clone)]
pub struct Tpm {
    jobs: mpsc::Sender<Job>,
    info: Arc<TpmInfo>,
}

impl Tpm {
    /// Starts the worker, connects to the TPM, flushes leftover transient
    /// objects, and checks whether it is a simulator (warns loudly; refuses
    /// it unless `allow_software_tpm`).
    pub async fn open(config: TpmConfig) -> Result<Tpm, Error> {
        let (jobs, mut queue) = mpsc::channel::<Job>(QUEUE_DEPTH);
        let (ready, opened) = oneshot::channel();
        std::thread::Builder::new()
            .name("mctc-tpm".into())
            .spawn(move || {
                let mut worker = match Worker::open(config) {
                    Ok(worker) => worker,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                if ready.send(Ok(worker.info().clone())).is_err() {
                    return;
                }
                while let Some(job) = queue.blocking_recv() {
                    job(&mut worker);
                    if worker.stopping() {
                        break;
                    }
                }
                worker.close();
            })
            .map_err(|source| Error::State {
                what: "start the TPM worker thread",
                path: PathBuf::new(),
                source,
            })?;
        let info = opened.await.map_err(|_| Error::WorkerStopped)??;
        Ok(Tpm {
            jobs,
            info: Arc::new(info),
        })
    }

    /// What the TPM said about itself when the worker opened it.
    pub fn info(&self) -> &TpmInfo {
        &self.info
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Worker) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |worker| {
            let _ = reply.send(worker.run(f));
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| Error::WorkerStopped)?;
        answer.await.map_err(|_| Error::WorkerStopped)?
    }

    /// Creates or loads the EK (standard template) and the AK (created once,
    /// then reused from its blob until [`Tpm::reprovision`]); reads the EK
    /// certificate from NV if present.
    pub async fn identity(&self) -> Result<Identity, Error> {
        self.call(|w| w.identity()).await
    }

    /// Replaces the AK with a new one (the old blob is deleted first).
    pub async fn reprovision(&self) -> Result<Identity, Error> {
        self.call(|w| {
            w.delete_ak()?;
            w.identity()
        })
        .await
    }

    /// Deletes the AK blob and unloads the AK. The next [`Tpm::identity`]
    /// creates a new one.
    pub async fn delete_ak(&self) -> Result<(), Error> {
        self.call(|w| w.delete_ak()).await
    }

    /// TPM2_ActivateCredential: unwraps the authority's secret, which only
    /// works if it was made for this EK and this AK's name. Both arguments
    /// are marshalled TPM2Bs (as `verifier::make_credential` returns them).
    pub async fn activate_credential(
        &self,
        credential_blob: Vec<u8>,
        encrypted_secret: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        self.call(move |w| w.activate_credential(&credential_blob, &encrypted_secret))
            .await
    }

    /// TPM2_Quote by the AK over `selection` with `qualifying_data` (at most
    /// 64 bytes), with the PCR values read in the same window (their
    /// composite is checked against the quote's digest; if PCRs moved in
    /// between, the quote is retaken).
    pub async fn quote(
        &self,
        qualifying_data: Vec<u8>,
        selection: PcrSelection,
    ) -> Result<Evidence, Error> {
        self.call(move |w| w.quote(&qualifying_data, &selection))
            .await
    }

    /// TPM2_PCR_Read of `selection` (one command per 8 PCRs; a consistent
    /// snapshot). Use [`PcrValues::composite_digest`] for drift checks.
    pub async fn read_pcrs(&self, selection: PcrSelection) -> Result<PcrValues, Error> {
        self.call(move |w| w.read_pcrs(&selection)).await
    }

    /// The TPM boot counters, cheaply: the loaded AK is probed with
    /// TPM2_ReadPublic (any TPM Reset or Restart unloads it) and the counters
    /// from the last signed clock read are returned; only when the probe
    /// fails is the clock read again (a quote over no PCRs, ~5 ms).
    ///
    /// tss-esapi 7 has no TPM2_ReadClock, hence the probe. Limitation: with a
    /// kernel resource manager, a TPM *Resume* (suspend to RAM) keeps the
    /// AK's saved context, so that `restartCount` increment shows only at
    /// the next [`Tpm::read_clock`] or quote.
    pub async fn boot_counters(&self) -> Result<BootCounters, Error> {
        self.call(|w| w.boot_counters()).await
    }

    /// A fresh, AK-signed read of the TPM clock and boot counters.
    pub async fn read_clock(&self) -> Result<ClockInfo, Error> {
        self.call(|w| w.read_clock()).await
    }

    /// TPM2_PCR_Extend of a SHA-256 digest into PCR `index` (0..=23; the TPM
    /// refuses PCRs the platform owns at this locality).
    pub async fn extend_pcr(&self, index: u8, sha256: [u8; 32]) -> Result<(), Error> {
        self.call(move |w| w.extend_pcr(index, &sha256)).await
    }

    /// Stops the worker after the jobs queued before this one, dropping the
    /// TPM context. Other clones get [`Error::WorkerStopped`] afterwards.
    pub async fn shutdown(self) {
        let _ = self
            .call(|w| {
                w.stop();
                Ok(())
            })
            .await;
    }
}

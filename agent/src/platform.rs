//! What the enforcement loop needs from the TPM, as a trait: production
//! uses the mctc-attest worker ([`TpmPlatform`]); unit tests with paused
//! time use a stand-in (no real process is involved there).
//!
//! Errors keep their type across this seam ([`PlatformError`]) and carry
//! the attest crate's class, which decides what the agent does:
//! [`TpmClass::Retry`] (busy, self-testing, a transport hiccup, no answer
//! in time) retries the same step after a backoff; [`TpmClass::Reattest`]
//! starts a new round with a new nonce; [`TpmClass::Fatal`] (the worker
//! is gone, the AK is unusable, the TPM answers nonsense) closes the gate at
//! once, loudly, voiding what was quoted, and the next round waits the
//! longest backoff (`retry_max_ms`).

use std::fmt;
use std::future::Future;
use std::time::Duration;

/// The attest crate's error class, under a name that does not clash with
/// the shim's (wire errors have classes too).
pub use mctc_attest::ErrorClass as TpmClass;
use mctc_attest::device::Tpm;
use mctc_shim::tpm::{BootCounters, PcrSelection};

/// The TPM operation that failed, as the agent names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformOp {
    /// The attestation quote.
    Quote,
    /// The lineage checkpoint quote.
    CheckpointQuote,
    /// The drift check's PCR read.
    ReadPcrs,
    /// The drift check's boot-counter read.
    BootCounters,
    /// A measured file's digest extended into its PCR.
    Extend,
}

impl fmt::Display for PlatformOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlatformOp::Quote => "quote",
            PlatformOp::CheckpointQuote => "checkpoint quote",
            PlatformOp::ReadPcrs => "PCR read",
            PlatformOp::BootCounters => "boot-counter read",
            PlatformOp::Extend => "PCR extend",
        })
    }
}

/// A TPM operation that did not give its answer.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The attest worker reported an error (its class is the attest crate's;
    /// a stopped worker is fatal).
    #[error("TPM {op}: {source}")]
    Tpm {
        op: PlatformOp,
        #[source]
        source: mctc_attest::Error,
    },
    /// No answer within `within`: a hung TPM or resource manager. Transient
    /// as far as the operation goes; the drift check closes the gate while
    /// it lasts.
    #[error("TPM {op}: no answer within {} ms", within.as_millis())]
    Timeout { op: PlatformOp, within: Duration },
    /// The TPM answered with a PCR value of the wrong size: it cannot be
    /// believed.
    #[error("TPM {op}: PCR value of {len} bytes, expected 32")]
    Malformed { op: PlatformOp, len: usize },
}

impl PlatformError {
    pub fn tpm(op: PlatformOp) -> impl FnOnce(mctc_attest::Error) -> PlatformError {
        move |source| PlatformError::Tpm { op, source }
    }

    /// The operation that failed.
    pub fn op(&self) -> PlatformOp {
        match self {
            PlatformError::Tpm { op, .. }
            | PlatformError::Timeout { op, .. }
            | PlatformError::Malformed { op, .. } => *op,
        }
    }

    /// What the agent does about it (see the module docs).
    pub fn class(&self) -> TpmClass {
        match self {
            PlatformError::Tpm { source, .. } => source.class(),
            PlatformError::Timeout { .. } => TpmClass::Retry,
            PlatformError::Malformed { .. } => TpmClass::Fatal,
        }
    }
}

/// The class as a log field.
pub fn class_name(class: TpmClass) -> &'static str {
    match class {
        TpmClass::Retry => "retry",
        TpmClass::Reattest => "reattest",
        TpmClass::Fatal => "fatal",
    }
}

/// A quote as the evidence message carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// Raw `TPMS_ATTEST`.
    pub attest: Vec<u8>,
    /// Marshalled `TPMT_SIGNATURE`.
    pub signature: Vec<u8>,
    /// The quoted PCRs' values, ascending index.
    pub pcr_values: Vec<[u8; 32]>,
    /// The boot counters inside the quote.
    pub boot: BootCounters,
}

/// One drift-check reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Composite SHA-256 digest of the selected PCRs (as `pcrDigest`).
    pub pcr_digest: [u8; 32],
    pub boot: BootCounters,
}

pub trait Platform: Clone + Send + Sync + 'static {
    /// `TPM2_Quote` by the AK over `selection` (the PCRs the authority
    /// asked for) with `qualifying_data`.
    fn quote(
        &self,
        qualifying_data: [u8; 32],
        selection: PcrSelection,
    ) -> impl Future<Output = Result<Quote, PlatformError>> + Send;

    /// Reads `selection` and the boot counters.
    fn observe(
        &self,
        selection: PcrSelection,
    ) -> impl Future<Output = Result<Observation, PlatformError>> + Send;

    /// Extends a SHA-256 digest into `pcr`.
    fn extend(
        &self,
        pcr: u8,
        digest: [u8; 32],
    ) -> impl Future<Output = Result<(), PlatformError>> + Send;
}

/// The real TPM through the attest worker thread.
#[derive(Debug, Clone)]
pub struct TpmPlatform {
    pub tpm: Tpm,
}

/// The attest crate's selection for a shim selection (SHA-256 bank).
pub fn attest_selection(
    selection: PcrSelection,
) -> Result<mctc_attest::PcrSelection, mctc_attest::Error> {
    Ok(mctc_attest::PcrSelection::try_from(selection)?)
}

fn digests(values: &mctc_attest::PcrValues) -> Result<Vec<[u8; 32]>, PlatformError> {
    values
        .values()
        .iter()
        .map(|v| {
            <[u8; 32]>::try_from(v.as_slice()).map_err(|_| PlatformError::Malformed {
                op: PlatformOp::Quote,
                len: v.len(),
            })
        })
        .collect()
}

impl Platform for TpmPlatform {
    fn quote(
        &self,
        qualifying_data: [u8; 32],
        selection: PcrSelection,
    ) -> impl Future<Output = Result<Quote, PlatformError>> + Send {
        let tpm = self.tpm.clone();
        async move {
            let selection =
                attest_selection(selection).map_err(PlatformError::tpm(PlatformOp::Quote))?;
            let evidence = tpm
                .quote(qualifying_data.to_vec(), selection)
                .await
                .map_err(PlatformError::tpm(PlatformOp::Quote))?;
            Ok(Quote {
                pcr_values: digests(&evidence.pcrs)?,
                boot: evidence.clock.boot(),
                attest: evidence.attest,
                signature: evidence.signature,
            })
        }
    }

    fn observe(
        &self,
        selection: PcrSelection,
    ) -> impl Future<Output = Result<Observation, PlatformError>> + Send {
        let tpm = self.tpm.clone();
        async move {
            let selection =
                attest_selection(selection).map_err(PlatformError::tpm(PlatformOp::ReadPcrs))?;
            let values = tpm
                .read_pcrs(selection)
                .await
                .map_err(PlatformError::tpm(PlatformOp::ReadPcrs))?;
            let boot = tpm
                .boot_counters()
                .await
                .map_err(PlatformError::tpm(PlatformOp::BootCounters))?;
            Ok(Observation {
                pcr_digest: values.composite_digest(),
                boot,
            })
        }
    }

    fn extend(
        &self,
        pcr: u8,
        digest: [u8; 32],
    ) -> impl Future<Output = Result<(), PlatformError>> + Send {
        let tpm = self.tpm.clone();
        async move {
            tpm.extend_pcr(pcr, digest)
                .await
                .map_err(PlatformError::tpm(PlatformOp::Extend))
        }
    }
}

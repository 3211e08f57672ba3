//! What the enforcement loop needs from the TPM, as a trait: production
//! uses the mctc-attest worker ([`TpmPlatform`]); unit tests with paused
//! time use a stand-in (no real process is involved there).

use std::future::Future;

use mctc_attest::device::Tpm;
use mctc_shim::tpm::{BootCounters, PcrSelection};

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
    /// `TPM2_Quote` by the AK over the attestation PCRs with
    /// `qualifying_data`.
    fn quote(
        &self,
        qualifying_data: [u8; 32],
    ) -> impl Future<Output = Result<Quote, String>> + Send;

    /// Reads `selection` and the boot counters.
    fn observe(
        &self,
        selection: PcrSelection,
    ) -> impl Future<Output = Result<Observation, String>> + Send;

    /// Extends a SHA-256 digest into `pcr`.
    fn extend(&self, pcr: u8, digest: [u8; 32]) -> impl Future<Output = Result<(), String>> + Send;
}

/// The real TPM through the attest worker thread.
#[derive(Debug, Clone)]
pub struct TpmPlatform {
    pub tpm: Tpm,
    /// The attestation PCRs.
    pub selection: mctc_attest::PcrSelection,
}

/// The attest crate's selection for a shim selection (SHA-256 bank).
pub fn attest_selection(selection: PcrSelection) -> Result<mctc_attest::PcrSelection, String> {
    mctc_attest::PcrSelection::try_from(selection).map_err(|e| e.to_string())
}

fn digests(values: &mctc_attest::PcrValues) -> Result<Vec<[u8; 32]>, String> {
    values
        .values()
        .iter()
        .map(|v| {
            <[u8; 32]>::try_from(v.as_slice())
                .map_err(|_| format!("PCR value of {} bytes, expected 32", v.len()))
        })
        .collect()
}

impl Platform for TpmPlatform {
    fn quote(
        &self,
        qualifying_data: [u8; 32],
    ) -> impl Future<Output = Result<Quote, String>> + Send {
        let tpm = self.tpm.clone();
        let selection = self.selection;
        async move {
            let evidence = tpm
                .quote(qualifying_data.to_vec(), selection)
                .await
                .map_err(|e| e.to_string())?;
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
    ) -> impl Future<Output = Result<Observation, String>> + Send {
        let tpm = self.tpm.clone();
        async move {
            let selection = attest_selection(selection)?;
            let values = tpm.read_pcrs(selection).await.map_err(|e| e.to_string())?;
            let boot = tpm.boot_counters().await.map_err(|e| e.to_string())?;
            Ok(Observation {
                pcr_digest: values.composite_digest(),
                boot,
            })
        }
    }

    fn extend(&self, pcr: u8, digest: [u8; 32]) -> impl Future<Output = Result<(), String>> + Send {
        let tpm = self.tpm.clone();
        async move { tpm.extend_pcr(pcr, digest).await.map_err(|e| e.to_string()) }
    }
}

//! What the device sends and the verifier checks: a quote with its PCR values,
//! and the TPM clock that dates it.

use crate::pcr::PcrValues;

/// `TPMS_CLOCK_INFO`: the TPM's clock and boot counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since it was last cleared; kept
    /// in NV, so it survives resets (it may lag after a power loss: `safe`).
    pub clock: u64,
    /// TPM Resets (power cycles, reboots) since the last clear.
    pub reset_count: u32,
    /// TPM Restarts and Resumes since the last Reset.
    pub restart_count: u32,
    /// YES (true) when no value of `clock` greater than this one has been
    /// reported before. NO after a power loss without an orderly shutdown,
    /// until the TPM next writes its clock to NV.
    pub safe: bool,
}

impl ClockInfo {
    /// The boot counters alone.
    pub const fn boot(&self) -> BootCounters {
        BootCounters {
            reset: self.reset_count,
            restart: self.restart_count,
        }
    }
}

/// The two counters that identify a TPM boot: the shim's type (one
/// definition, the one artifacts and lineage records carry). An artifact is
/// bound to them; when either changes the platform went through a reset or
/// restart.
pub use mctc_shim::tpm::BootCounters;

/// A TPM2_Quote as it leaves the device. These bytes go to the verifier
/// unchanged: `attest` and `signature` are exactly what the TPM produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The signed `TPMS_ATTEST` structure, raw.
    pub attest: Vec<u8>,
    /// The marshalled `TPMT_SIGNATURE` over `attest`.
    pub signature: Vec<u8>,
    /// The quoted PCRs' values, read in the same window as the quote (the
    /// device checked their composite against the quote's `pcrDigest`).
    pub pcrs: PcrValues,
    /// The clock info inside `attest`, decoded for the device's own use.
    /// The verifier ignores this field and reads the signed copy.
    pub clock: ClockInfo,
}

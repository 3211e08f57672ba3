//! Verification of a lineage checkpoint's TPM quote.
//!
//! A checkpoint record carries the quote (`TPMS_ATTEST`) and its signature
//! but not the PCR values: it binds the lineage head to the platform state
//! through the signed `pcrDigest`, which the collector records without
//! judging (judging PCR values against policy is the authority's job at
//! attestation time). What must hold is that the enrolled AK signed a TPM
//! quote whose qualifying data is the checkpoint digest of (device, seq,
//! head): `mctc_attest::verifier::verify_signed_quote` checks exactly that
//! (structure, magic, quote type, AK signature, qualifying data, one
//! non-SHA-1 bank).

use mctc_attest::ClockInfo;
use mctc_attest::PcrSelection;
use mctc_attest::verifier::{AkPublic, QuoteError, verify_signed_quote};

/// A checkpoint quote that verified: what the TPM signed about the platform
/// when it committed to the lineage head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    /// The signed TPM clock and boot counters.
    pub clock: ClockInfo,
    /// The signed composite digest of the quoted PCRs.
    pub pcr_digest: Vec<u8>,
    /// The quoted PCRs.
    pub selection: PcrSelection,
}

/// Why a checkpoint quote was rejected: the verifier's check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CheckpointError(pub QuoteError);

/// Verifies that `ak` signed a TPM quote over `attest` (with `signature`)
/// whose qualifying data is `qualifying_data`.
pub fn verify_checkpoint_quote(
    ak: &AkPublic,
    attest: &[u8],
    signature: &[u8],
    qualifying_data: &[u8; 32],
) -> Result<VerifiedCheckpoint, CheckpointError> {
    let signed =
        verify_signed_quote(ak, attest, signature, qualifying_data).map_err(CheckpointError)?;
    Ok(VerifiedCheckpoint {
        clock: *signed.clock(),
        pcr_digest: signed.pcr_digest().to_vec(),
        selection: *signed.selection(),
    })
}

/// How the TPM's signed clock of a later checkpoint went backwards against
/// an earlier one, if it did: a lower `resetCount`, a lower `restartCount`
/// within one reset, or a lower clock within one boot. Honest TPMs never do
/// this; a TPM whose state was restored from a copy does.
pub fn clock_regression(earlier: &ClockInfo, later: &ClockInfo) -> Option<String> {
    if later.reset_count < earlier.reset_count {
        return Some(format!(
            "TPM resetCount went back from {} to {}",
            earlier.reset_count, later.reset_count
        ));
    }
    if later.reset_count == earlier.reset_count {
        if later.restart_count < earlier.restart_count {
            return Some(format!(
                "TPM restartCount went back from {} to {}",
                earlier.restart_count, later.restart_count
            ));
        }
        if later.restart_count == earlier.restart_count && later.clock < earlier.clock {
            return Some(format!(
                "TPM clock went back from {} to {} ms within one boot",
                earlier.clock, later.clock
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(clock: u64, reset: u32, restart: u32) -> ClockInfo {
        ClockInfo {
            clock,
            reset_count: reset,
            restart_count: restart,
            safe: true,
        }
    }

    #[test]
    fn clock_regressions_are_named() {
        let base = clock(1000, 3, 1);
        assert!(clock_regression(&base, &clock(1001, 3, 1)).is_none());
        assert!(clock_regression(&base, &clock(10, 4, 0)).is_none());
        assert!(clock_regression(&base, &clock(10, 3, 2)).is_none());
        assert!(clock_regression(&base, &clock(2000, 2, 9)).is_some());
        assert!(clock_regression(&base, &clock(2000, 3, 0)).is_some());
        assert!(clock_regression(&base, &clock(999, 3, 1)).is_some());
    }
}

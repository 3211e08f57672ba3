//! Verification of a lineage checkpoint's TPM quote.
//!
//! A checkpoint record carries the quote (`TPMS_ATTEST`) and its signature
//! but not the PCR values: it binds the lineage head to the platform state
//! through the signed `pcrDigest`, which the collector records without
//! judging (judging PCR values against policy is the authority's job at
//! attestation time). What must hold is that the enrolled AK signed a TPM
//! quote whose qualifying data is the checkpoint digest of (device, seq,
//! head).
//!
//! `mctc_attest::verifier::verify_quote` also compares reported PCR values
//! with the quoted digest, and a checkpoint has none to report. So the
//! quote's own selection is passed as the expectation together with
//! placeholder values: every check that matters here (magic, quote type,
//! signature by the AK, qualifying data, selection) runs before the digest
//! comparison, and the one outcome that the placeholder values provoke,
//! `PcrDigestMismatch`, is then accepted as "verified up to the values".
//! Tests pin that order: a checkpoint carrying another AK's quote must fail
//! on its signature and a quote over another head on its qualifying data
//! (`offline_verify.rs`, `ingest.rs`), and every single-byte change of a
//! quote must fail (`offline_verify.rs`). If the verifier ever compared the
//! digest first, they would fail.

use mctc_attest::verifier::{AkPublic, Attest, QuoteError, QuoteExpectation, verify_quote};
use mctc_attest::{ClockInfo, Evidence, HashAlg, ParseError, PcrSelection, PcrValues};

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

/// Why a checkpoint quote was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The attestation bytes do not decode.
    #[error("attestation does not decode: {0}")]
    Malformed(ParseError),
    /// The attestation is not a quote.
    #[error("attestation is not a TPM quote")]
    NotAQuote,
    /// The quote does not cover exactly one PCR bank.
    #[error("quote covers {0} PCR banks, a checkpoint quote covers exactly one")]
    Banks(usize),
    /// The quoted selection is not one the verifier accepts (unknown bank,
    /// PCR index out of range, empty).
    #[error("quoted PCR selection is not acceptable: {0}")]
    Selection(String),
    /// The quote itself was rejected (signature, qualifying data, ...).
    #[error("{0}")]
    Quote(QuoteError),
}

/// Verifies that `ak` signed a TPM quote over `attest` (with `signature`)
/// whose qualifying data is `qualifying_data`.
pub fn verify_checkpoint_quote(
    ak: &AkPublic,
    attest: &[u8],
    signature: &[u8],
    qualifying_data: &[u8; 32],
) -> Result<VerifiedCheckpoint, CheckpointError> {
    let parsed = Attest::parse(attest).map_err(CheckpointError::Malformed)?;
    let quote = parsed.quote.as_ref().ok_or(CheckpointError::NotAQuote)?;
    let [bank_selection] = quote.selection.as_slice() else {
        return Err(CheckpointError::Banks(quote.selection.len()));
    };
    let bank = HashAlg::from_tpm_alg_id(bank_selection.hash).ok_or_else(|| {
        CheckpointError::Selection(format!("unknown bank {:#06x}", bank_selection.hash))
    })?;
    let mask = bank_selection
        .mask()
        .ok_or_else(|| CheckpointError::Selection("PCR index above 31".to_owned()))?;
    let indices: Vec<u8> = (0u8..32).filter(|i| mask & (1u32 << i) != 0).collect();
    let selection =
        PcrSelection::new(bank, &indices).map_err(|e| CheckpointError::Selection(e.to_string()))?;
    let placeholder = vec![vec![0u8; bank.digest_len()]; selection.len()];
    let pcrs = PcrValues::new(selection, placeholder)
        .map_err(|e| CheckpointError::Selection(e.to_string()))?;
    let evidence = Evidence {
        attest: attest.to_vec(),
        signature: signature.to_vec(),
        pcrs,
        clock: parsed.clock,
    };
    let expectation = QuoteExpectation {
        qualifying_data,
        selection: &selection,
        last_accepted: None,
    };
    match verify_quote(ak, &evidence, &expectation) {
        // Ok only if the quoted PCRs happen to be all zero; either way every
        // check before the value comparison passed.
        Ok(_) | Err(QuoteError::PcrDigestMismatch) => Ok(VerifiedCheckpoint {
            clock: parsed.clock,
            pcr_digest: quote.pcr_digest.clone(),
            selection,
        }),
        Err(e) => Err(CheckpointError::Quote(e)),
    }
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

//! Quote verification: every check a verifier must make before it believes
//! a TPM2_Quote, and the verdict it hands the authority (or the collector).
//!
//! The checks, in order, and the attack each one stops, are listed in
//! `attest/README.md`.

use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};

use crate::evidence::{ClockInfo, Evidence};
use crate::pcr::{HashAlg, PcrSelection, PcrValues};
use crate::tpm_constants::{MAX_DIGEST, TPM_ALG_SHA256, TPM_GENERATED_VALUE};
use crate::verifier::attest::{Attest, RawPcrSelection, Signature};
use crate::verifier::public_key::{AkKey, AkPublic, left_pad};
use crate::wire::ParseError;

/// What a quote must match.
#[derive(Debug, Clone, Copy)]
pub struct QuoteExpectation<'a> {
    /// The qualifying data the quote must carry: the verifier's fresh nonce,
    /// or a digest the verifier computed itself (a lineage checkpoint).
    /// At most 64 bytes.
    pub qualifying_data: &'a [u8],
    /// The PCR selection that was requested; the quote must cover exactly it.
    pub selection: &'a PcrSelection,
    /// The clock info of the last quote accepted from this TPM, if any.
    pub last_accepted: Option<&'a ClockInfo>,
}

/// How this quote's TPM boot relates to the last accepted one. Rollbacks are
/// errors ([`QuoteError`]); everything here is a legitimate history that the
/// caller decides about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Continuity {
    /// No earlier quote to compare with.
    First,
    /// Same TPM boot as the last accepted quote, clock not behind.
    SameBoot,
    /// `restartCount` went up, `resetCount` unchanged: a TPM Restart or
    /// Resume (hibernation, suspend) since the last accepted quote.
    Restarted,
    /// `resetCount` went up: the platform rebooted or lost power.
    Reset,
}

/// A quote that passed every check. Only [`verify_quote`] builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedQuote {
    clock: ClockInfo,
    firmware_version: u64,
    pcrs: PcrValues,
    pcr_digest: [u8; 32],
    continuity: Continuity,
}

impl VerifiedQuote {
    /// The signed clock info (store it: it is the next `last_accepted`).
    pub const fn clock(&self) -> &ClockInfo {
        &self.clock
    }

    /// The TPM firmware version the quote reports.
    pub const fn firmware_version(&self) -> u64 {
        self.firmware_version
    }

    /// The PCR values, now proven to be the ones the TPM quoted.
    pub const fn pcrs(&self) -> &PcrValues {
        &self.pcrs
    }

    /// The signed composite digest of those values.
    pub const fn pcr_digest(&self) -> &[u8; 32] {
        &self.pcr_digest
    }

    /// Boot continuity relative to the last accepted quote.
    pub const fn continuity(&self) -> Continuity {
        self.continuity
    }
}

/// Why a quote was rejected. Each variant is one check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// The expected qualifying data is longer than a TPM accepts (64 bytes).
    #[error("expected qualifying data of {0} bytes is longer than 64")]
    QualifyingDataTooLong(usize),
    /// The requested or quoted selection uses only the SHA-1 bank.
    #[error("SHA-1 PCR banks are not accepted")]
    Sha1Bank,
    /// The attestation bytes do not decode.
    #[error("attestation: {0}")]
    Malformed(ParseError),
    /// `magic` is not `TPM_GENERATED_VALUE`: not produced by a TPM.
    #[error("magic {0:#010x} is not TPM_GENERATED_VALUE")]
    BadMagic(u32),
    /// The attestation is not a quote.
    #[error("attestation type {0:#06x} is not TPM_ST_ATTEST_QUOTE")]
    NotAQuote(u16),
    /// The signature bytes do not decode.
    #[error("signature: {0}")]
    MalformedSignature(ParseError),
    /// The signature's scheme or hash is not the attestation key's.
    #[error("signature scheme does not match the attestation key")]
    SignatureScheme,
    /// The signature does not verify with the attestation key.
    #[error("signature does not verify with the enrolled attestation key")]
    BadSignature,
    /// `extraData` differs from the expected qualifying data.
    #[error("qualifying data differs from the expected nonce")]
    QualifyingDataMismatch,
    /// The quoted (or reported) PCR selection differs from the requested one.
    #[error("PCR selection differs: requested {expected}, got {got}")]
    SelectionMismatch {
        /// The requested selection.
        expected: String,
        /// What the quote or the reported values cover.
        got: String,
    },
    /// The digest of the reported PCR values is not the signed `pcrDigest`.
    #[error("reported PCR values do not match the quoted digest")]
    PcrDigestMismatch,
    /// `resetCount` is lower than in the last accepted quote.
    #[error("resetCount went back from {last} to {now}")]
    ResetCountWentBack {
        /// Last accepted.
        last: u32,
        /// In this quote.
        now: u32,
    },
    /// `restartCount` is lower within the same reset epoch.
    #[error("restartCount went back from {last} to {now}")]
    RestartCountWentBack {
        /// Last accepted.
        last: u32,
        /// In this quote.
        now: u32,
    },
    /// The clock is behind the last accepted one and the TPM does not admit
    /// a power-loss lag (`safe` = YES, or the same boot).
    #[error("TPM clock went back from {last} to {now} ms")]
    ClockWentBack {
        /// Last accepted.
        last: u64,
        /// In this quote.
        now: u64,
    },
}

/// A quote whose origin (the AK signed a TPM-generated quote) and
/// qualifying data are proven, without reported PCR values: what a lineage
/// checkpoint carries. It binds the qualifying data to the signed PCR digest
/// and TPM clock. Only [`verify_signed_quote`] builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedQuote {
    clock: ClockInfo,
    firmware_version: u64,
    selection: PcrSelection,
    pcr_digest: Vec<u8>,
}

impl SignedQuote {
    /// The signed clock info and boot counters.
    pub const fn clock(&self) -> &ClockInfo {
        &self.clock
    }

    /// The TPM firmware version the quote reports.
    pub const fn firmware_version(&self) -> u64 {
        self.firmware_version
    }

    /// The quoted PCRs (exactly one bank, never SHA-1 only).
    pub const fn selection(&self) -> &PcrSelection {
        &self.selection
    }

    /// The signed composite digest of the quoted PCRs.
    pub fn pcr_digest(&self) -> &[u8] {
        &self.pcr_digest
    }
}

/// The checks every quote passes before anything in it is believed: length
/// of the expected qualifying data, structure, magic, quote type, the AK's
/// signature, then the qualifying data. Returns the parsed attestation.
fn check_origin(
    ak: &AkPublic,
    attest_bytes: &[u8],
    signature: &[u8],
    qualifying_data: &[u8],
) -> Result<Attest, QuoteError> {
    if qualifying_data.len() > MAX_DIGEST {
        return Err(QuoteError::QualifyingDataTooLong(qualifying_data.len()));
    }
    let attest = Attest::parse(attest_bytes).map_err(QuoteError::Malformed)?;
    if attest.magic != TPM_GENERATED_VALUE {
        return Err(QuoteError::BadMagic(attest.magic));
    }
    if attest.quote.is_none() {
        return Err(QuoteError::NotAQuote(attest.attest_type));
    }
    verify_signature(ak, attest_bytes, signature)?;
    if attest.extra_data != qualifying_data {
        return Err(QuoteError::QualifyingDataMismatch);
    }
    Ok(attest)
}

fn sha1_only(quoted: &[RawPcrSelection]) -> bool {
    !quoted.is_empty() && quoted.iter().all(|s| s.hash == HashAlg::Sha1.tpm_alg_id())
}

/// Verifies that `ak` signed a TPM quote over `attest_bytes` whose
/// qualifying data is `qualifying_data` and which covers exactly one PCR bank
/// (not SHA-1). The PCR values are not needed: the signed digest is returned
/// as it is. For lineage checkpoints, whose qualifying data commits to the
/// lineage head; attestation uses [`verify_quote`], which also proves the
/// reported values.
pub fn verify_signed_quote(
    ak: &AkPublic,
    attest_bytes: &[u8],
    signature: &[u8],
    qualifying_data: &[u8],
) -> Result<SignedQuote, QuoteError> {
    let attest = check_origin(ak, attest_bytes, signature, qualifying_data)?;
    let Some(quote) = attest.quote.as_ref() else {
        return Err(QuoteError::NotAQuote(attest.attest_type));
    };
    if sha1_only(&quote.selection) {
        return Err(QuoteError::Sha1Bank);
    }
    let selection = match quote.selection.as_slice() {
        [only] => only
            .mask()
            .and_then(|mask| HashAlg::from_tpm_alg_id(only.hash).map(|bank| (bank, mask)))
            .and_then(|(bank, mask)| PcrSelection::from_mask(bank, mask).ok())
            .filter(|selection| !selection.is_empty()),
        _ => None,
    };
    let Some(selection) = selection else {
        return Err(QuoteError::SelectionMismatch {
            expected: "exactly one known PCR bank".to_owned(),
            got: describe(&quote.selection),
        });
    };
    Ok(SignedQuote {
        clock: attest.clock,
        firmware_version: attest.firmware_version,
        selection,
        pcr_digest: quote.pcr_digest.clone(),
    })
}

/// Verifies a quote made by `ak` against what the verifier asked for.
///
/// `evidence.clock` is ignored: the verdict carries the signed clock info.
pub fn verify_quote(
    ak: &AkPublic,
    evidence: &Evidence,
    expected: &QuoteExpectation<'_>,
) -> Result<VerifiedQuote, QuoteError> {
    if expected.qualifying_data.len() > MAX_DIGEST {
        return Err(QuoteError::QualifyingDataTooLong(
            expected.qualifying_data.len(),
        ));
    }
    if expected.selection.bank() == HashAlg::Sha1 {
        return Err(QuoteError::Sha1Bank);
    }
    let attest = check_origin(
        ak,
        &evidence.attest,
        &evidence.signature,
        expected.qualifying_data,
    )?;
    let Some(quote) = attest.quote.as_ref() else {
        return Err(QuoteError::NotAQuote(attest.attest_type));
    };
    if sha1_only(&quote.selection) {
        return Err(QuoteError::Sha1Bank);
    }
    if !selection_equals(&quote.selection, expected.selection) {
        return Err(QuoteError::SelectionMismatch {
            expected: expected.selection.to_string(),
            got: describe(&quote.selection),
        });
    }
    if evidence.pcrs.selection() != expected.selection {
        return Err(QuoteError::SelectionMismatch {
            expected: expected.selection.to_string(),
            got: evidence.pcrs.selection().to_string(),
        });
    }
    let composite = evidence.pcrs.composite_digest();
    if quote.pcr_digest.as_slice() != composite.as_slice() {
        return Err(QuoteError::PcrDigestMismatch);
    }

    let continuity = continuity(expected.last_accepted, &attest.clock)?;
    Ok(VerifiedQuote {
        clock: attest.clock,
        firmware_version: attest.firmware_version,
        pcrs: evidence.pcrs.clone(),
        pcr_digest: composite,
        continuity,
    })
}

fn verify_signature(ak: &AkPublic, message: &[u8], signature: &[u8]) -> Result<(), QuoteError> {
    let sig = Signature::parse(signature).map_err(QuoteError::MalformedSignature)?;
    match (&ak.key, sig) {
        (AkKey::EcdsaP256 { point }, Signature::Ecdsa { hash, r, s }) => {
            if hash != TPM_ALG_SHA256 {
                return Err(QuoteError::SignatureScheme);
            }
            let mut fixed = strip_and_pad(&r)?;
            fixed.extend_from_slice(&strip_and_pad(&s)?);
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message, &fixed)
                .map_err(|_| QuoteError::BadSignature)
        }
        (AkKey::RsaSsa2048 { modulus, exponent }, Signature::RsaSsa { hash, sig }) => {
            if hash != TPM_ALG_SHA256 {
                return Err(QuoteError::SignatureScheme);
            }
            // ring wants both integers without leading zero bytes.
            let e = exponent.to_be_bytes();
            RsaPublicKeyComponents {
                n: strip_leading_zeros(modulus),
                e: strip_leading_zeros(&e),
            }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, &sig)
            .map_err(|_| QuoteError::BadSignature)
        }
        _ => Err(QuoteError::SignatureScheme),
    }
}

fn strip_leading_zeros(integer: &[u8]) -> &[u8] {
    let first = integer
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(integer.len());
    integer.get(first..).unwrap_or_default()
}

/// An ECDSA integer as 32 bytes: leading zeros may be present or dropped.
fn strip_and_pad(integer: &[u8]) -> Result<Vec<u8>, QuoteError> {
    let significant = strip_leading_zeros(integer);
    if significant.is_empty() {
        return Err(QuoteError::BadSignature);
    }
    left_pad(significant, 32).ok_or(QuoteError::BadSignature)
}

/// Exactly one bank, the requested one, with exactly the requested PCRs
/// (the octet count may differ; the selected set may not).
fn selection_equals(quoted: &[RawPcrSelection], expected: &PcrSelection) -> bool {
    match quoted {
        [only] => only.hash == expected.bank().tpm_alg_id() && only.mask() == Some(expected.mask()),
        _ => false,
    }
}

fn describe(quoted: &[RawPcrSelection]) -> String {
    let parts: Vec<String> = quoted
        .iter()
        .map(|s| {
            let bank = HashAlg::from_tpm_alg_id(s.hash)
                .map_or_else(|| format!("alg {:#06x}", s.hash), |h| h.to_string());
            match s
                .mask()
                .and_then(|m| HashAlg::from_tpm_alg_id(s.hash).map(|h| (h, m)))
                .and_then(|(h, m)| PcrSelection::from_mask(h, m).ok())
            {
                Some(sel) if !sel.is_empty() => sel.to_string(),
                _ => format!("{bank}:{:02x?}", s.select),
            }
        })
        .collect();
    if parts.is_empty() {
        "nothing".to_owned()
    } else {
        parts.join(" + ")
    }
}

/// Compares the signed clock with the last accepted one.
fn continuity(last: Option<&ClockInfo>, now: &ClockInfo) -> Result<Continuity, QuoteError> {
    let Some(last) = last else {
        return Ok(Continuity::First);
    };
    if now.reset_count < last.reset_count {
        return Err(QuoteError::ResetCountWentBack {
            last: last.reset_count,
            now: now.reset_count,
        });
    }
    let same_reset = now.reset_count == last.reset_count;
    if same_reset && now.restart_count < last.restart_count {
        return Err(QuoteError::RestartCountWentBack {
            last: last.restart_count,
            now: now.restart_count,
        });
    }
    let same_boot = same_reset && now.restart_count == last.restart_count;
    // Clock lives in NV and is written back only every few seconds; after a
    // power loss the TPM restarts from the last saved value and says so with
    // safe = NO. That lag is legitimate only across a boot; anything else is
    // a rolled-back TPM (or a replayed state).
    if now.clock < last.clock && (same_boot || now.safe) {
        return Err(QuoteError::ClockWentBack {
            last: last.clock,
            now: now.clock,
        });
    }
    Ok(if !same_reset {
        Continuity::Reset
    } else if !same_boot {
        Continuity::Restarted
    } else {
        Continuity::SameBoot
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(clock: u64, reset: u32, restart: u32, safe: bool) -> ClockInfo {
        ClockInfo {
            clock,
            reset_count: reset,
            restart_count: restart,
            safe,
        }
    }

    #[test]
    fn continuity_distinguishes_boot_histories() {
        let last = clock(1000, 5, 2, true);
        assert_eq!(continuity(None, &last).unwrap(), Continuity::First);
        assert_eq!(
            continuity(Some(&last), &clock(1500, 5, 2, true)).unwrap(),
            Continuity::SameBoot
        );
        assert_eq!(
            continuity(Some(&last), &clock(1500, 5, 3, true)).unwrap(),
            Continuity::Restarted
        );
        assert_eq!(
            continuity(Some(&last), &clock(1500, 6, 0, true)).unwrap(),
            Continuity::Reset
        );
    }

    #[test]
    fn rollbacks_are_errors() {
        let last = clock(1000, 5, 2, true);
        assert_eq!(
            continuity(Some(&last), &clock(1500, 4, 9, true)),
            Err(QuoteError::ResetCountWentBack { last: 5, now: 4 })
        );
        assert_eq!(
            continuity(Some(&last), &clock(1500, 5, 1, true)),
            Err(QuoteError::RestartCountWentBack { last: 2, now: 1 })
        );
        assert_eq!(
            continuity(Some(&last), &clock(999, 5, 2, false)),
            Err(QuoteError::ClockWentBack {
                last: 1000,
                now: 999
            })
        );
        // Across a reset, a lagging clock is accepted only if the TPM says
        // it is not safe.
        assert_eq!(
            continuity(Some(&last), &clock(990, 6, 0, false)).unwrap(),
            Continuity::Reset
        );
        assert!(continuity(Some(&last), &clock(990, 6, 0, true)).is_err());
    }

    #[test]
    fn ecdsa_integers_are_normalised() {
        assert_eq!(strip_and_pad(&[0, 0, 1]).unwrap().len(), 32);
        let mut long = vec![0u8];
        long.extend_from_slice(&[0xff; 32]);
        assert_eq!(strip_and_pad(&long).unwrap(), vec![0xff; 32]);
        assert!(strip_and_pad(&[1; 33]).is_err());
        assert!(strip_and_pad(&[0; 4]).is_err());
    }
}

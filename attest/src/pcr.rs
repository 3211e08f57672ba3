//! PCR banks, selections and values: the vocabulary shared by the device side
//! (what to read and quote) and the verifier (what was quoted).

use std::fmt;

use crate::tpm_constants::{TPM_ALG_SHA1, TPM_ALG_SHA256, TPM_ALG_SHA384, TPM_ALG_SHA512};

/// Number of PCRs a PC-client TPM has (0..=23).
pub const PCR_COUNT: u8 = 24;

/// A PCR bank's hash algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlg {
    /// SHA-1: readable and quotable, never accepted by the verifier.
    Sha1,
    /// SHA-256: the default bank.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlg {
    /// The `TPM_ALG_ID`.
    pub const fn tpm_alg_id(self) -> u16 {
        match self {
            HashAlg::Sha1 => TPM_ALG_SHA1,
            HashAlg::Sha256 => TPM_ALG_SHA256,
            HashAlg::Sha384 => TPM_ALG_SHA384,
            HashAlg::Sha512 => TPM_ALG_SHA512,
        }
    }

    /// The algorithm for a `TPM_ALG_ID`, if it is one of the banks above.
    pub const fn from_tpm_alg_id(id: u16) -> Option<HashAlg> {
        match id {
            TPM_ALG_SHA1 => Some(HashAlg::Sha1),
            TPM_ALG_SHA256 => Some(HashAlg::Sha256),
            TPM_ALG_SHA384 => Some(HashAlg::Sha384),
            TPM_ALG_SHA512 => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    /// Digest length in bytes (the size of each PCR in this bank).
    pub const fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    pub(crate) fn ring_algorithm(self) -> &'static ring::digest::Algorithm {
        match self {
            HashAlg::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            HashAlg::Sha256 => &ring::digest::SHA256,
            HashAlg::Sha384 => &ring::digest::SHA384,
            HashAlg::Sha512 => &ring::digest::SHA512,
        }
    }

    /// Hashes `data` with this algorithm.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        ring::digest::digest(self.ring_algorithm(), data)
            .as_ref()
            .to_vec()
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        })
    }
}

/// A PCR selection or PCR value set is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcrError {
    /// A PCR index above 23.
    #[error("PCR index {0} is out of range (0..=23)")]
    IndexOutOfRange(u32),
    /// A selection with no PCR in it.
    #[error("the PCR selection is empty")]
    EmptySelection,
    /// The number of values does not match the number of selected PCRs.
    #[error("{got} PCR values for a selection of {expected} PCRs")]
    CountMismatch {
        /// PCRs selected.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// A wire selection names a bank this crate does not know.
    #[error("unknown PCR bank algorithm 0x{0:04x}")]
    UnknownBank(u16),
    /// A value's length does not match the bank's digest length.
    #[error("PCR {pcr} value has {got} bytes, the {bank} bank has {expected}")]
    ValueLength {
        /// The PCR index.
        pcr: u8,
        /// The bank.
        bank: HashAlg,
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
}

/// A set of PCRs (0..=23) in one bank. Iteration order is ascending index,
/// which is the order the TPM uses for PCR values and the quote digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PcrSelection {
    bank: HashAlg,
    mask: u32,
}

impl PcrSelection {
    /// Selects `pcrs` (any order, duplicates ignored) in `bank`. Empty
    /// selections are refused: they attest nothing.
    pub fn new(bank: HashAlg, pcrs: &[u8]) -> Result<PcrSelection, PcrError> {
        let mut mask = 0u32;
        for &pcr in pcrs {
            if pcr >= PCR_COUNT {
                return Err(PcrError::IndexOutOfRange(u32::from(pcr)));
            }
            mask |= 1 << pcr;
        }
        if mask == 0 {
            return Err(PcrError::EmptySelection);
        }
        Ok(PcrSelection { bank, mask })
    }

    /// Selects `pcrs` in the SHA-256 bank.
    pub fn sha256(pcrs: &[u8]) -> Result<PcrSelection, PcrError> {
        PcrSelection::new(HashAlg::Sha256, pcrs)
    }

    /// A selection from a bit mask (bit n = PCR n), e.g. off the wire.
    pub fn from_mask(bank: HashAlg, mask: u32) -> Result<PcrSelection, PcrError> {
        if mask == 0 {
            return Err(PcrError::EmptySelection);
        }
        if mask >> PCR_COUNT != 0 {
            return Err(PcrError::IndexOutOfRange(
                31u32.saturating_sub(mask.leading_zeros()),
            ));
        }
        Ok(PcrSelection { bank, mask })
    }

    /// The empty selection: used only for a signed clock read.
    #[cfg(feature = "device")]
    pub(crate) const fn empty(bank: HashAlg) -> PcrSelection {
        PcrSelection { bank, mask: 0 }
    }

    /// The bank.
    pub const fn bank(&self) -> HashAlg {
        self.bank
    }

    /// The selection as a bit mask (bit n = PCR n).
    pub const fn mask(&self) -> u32 {
        self.mask
    }

    /// Number of PCRs selected.
    pub const fn len(&self) -> usize {
        self.mask.count_ones() as usize
    }

    /// Whether no PCR is selected.
    pub const fn is_empty(&self) -> bool {
        self.mask == 0
    }

    /// Whether `pcr` is selected.
    pub fn contains(&self, pcr: u8) -> bool {
        pcr < PCR_COUNT && self.mask & (1 << pcr) != 0
    }

    /// Selected indices in ascending order.
    pub fn indices(&self) -> impl Iterator<Item = u8> + '_ {
        (0..PCR_COUNT).filter(|&i| self.mask & (1 << i) != 0)
    }
}

impl fmt::Display for PcrSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.bank)?;
        let mut first = true;
        for i in self.indices() {
            if !first {
                f.write_str(",")?;
            }
            write!(f, "{i}")?;
            first = false;
        }
        Ok(())
    }
}

/// The one conversion from the shim's wire form of a selection (what
/// configuration, messages and the drift check carry) to this crate's
/// (what the TPM reads and quotes, and the verifier checks).
impl TryFrom<mctc_shim::tpm::PcrSelection> for PcrSelection {
    type Error = PcrError;

    fn try_from(wire: mctc_shim::tpm::PcrSelection) -> Result<Self, PcrError> {
        let bank = HashAlg::from_tpm_alg_id(wire.alg).ok_or(PcrError::UnknownBank(wire.alg))?;
        PcrSelection::from_mask(bank, wire.mask)
    }
}

/// And back: the wire form of a selection.
impl From<PcrSelection> for mctc_shim::tpm::PcrSelection {
    fn from(selection: PcrSelection) -> Self {
        mctc_shim::tpm::PcrSelection {
            alg: selection.bank.tpm_alg_id(),
            mask: selection.mask,
        }
    }
}

/// PCR values for a selection, in ascending index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrValues {
    selection: PcrSelection,
    values: Vec<Vec<u8>>,
}

impl PcrValues {
    /// Pairs `values` (ascending PCR order) with `selection`, checking the
    /// count and every length.
    pub fn new(selection: PcrSelection, values: Vec<Vec<u8>>) -> Result<PcrValues, PcrError> {
        if values.len() != selection.len() {
            return Err(PcrError::CountMismatch {
                expected: selection.len(),
                got: values.len(),
            });
        }
        let expected = selection.bank().digest_len();
        for (pcr, value) in selection.indices().zip(&values) {
            if value.len() != expected {
                return Err(PcrError::ValueLength {
                    pcr,
                    bank: selection.bank(),
                    expected,
                    got: value.len(),
                });
            }
        }
        Ok(PcrValues { selection, values })
    }

    /// The selection these values answer.
    pub const fn selection(&self) -> &PcrSelection {
        &self.selection
    }

    /// Values in ascending PCR order.
    pub fn values(&self) -> &[Vec<u8>] {
        &self.values
    }

    /// The value of `pcr`, if selected.
    pub fn get(&self, pcr: u8) -> Option<&[u8]> {
        self.iter().find(|(i, _)| *i == pcr).map(|(_, v)| v)
    }

    /// `(index, value)` pairs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> + '_ {
        self.selection
            .indices()
            .zip(self.values.iter().map(Vec::as_slice))
    }

    /// The composite digest the TPM puts in a quote's `pcrDigest` when it
    /// signs with a SHA-256 scheme: SHA-256 over the concatenated values.
    /// The agent compares it every few hundred milliseconds (drift), so it
    /// hashes in place without copying the values.
    pub fn composite_digest(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for value in &self.values {
            ctx.update(value);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_orders_and_deduplicates() {
        let s = PcrSelection::sha256(&[16, 0, 7, 16]).unwrap();
        assert_eq!(s.indices().collect::<Vec<_>>(), vec![0, 7, 16]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.to_string(), "sha256:0,7,16");
    }

    #[test]
    fn selection_rejects_bad_indices_and_empty() {
        assert_eq!(
            PcrSelection::sha256(&[24]),
            Err(PcrError::IndexOutOfRange(24))
        );
        assert_eq!(PcrSelection::sha256(&[]), Err(PcrError::EmptySelection));
        assert!(PcrSelection::from_mask(HashAlg::Sha256, 1 << 24).is_err());
    }

    #[test]
    fn wire_selections_convert_both_ways_and_refuse_what_the_tpm_cannot_quote() {
        let wire = mctc_shim::tpm::PcrSelection::sha256(0b1000_0001);
        let selection = PcrSelection::try_from(wire).unwrap();
        assert_eq!(selection, PcrSelection::sha256(&[0, 7]).unwrap());
        assert_eq!(mctc_shim::tpm::PcrSelection::from(selection), wire);
        assert_eq!(
            PcrSelection::try_from(mctc_shim::tpm::PcrSelection::sha256(0)),
            Err(PcrError::EmptySelection)
        );
        assert!(PcrSelection::try_from(mctc_shim::tpm::PcrSelection::sha256(1 << 24)).is_err());
        assert_eq!(
            PcrSelection::try_from(mctc_shim::tpm::PcrSelection {
                alg: 0x0099,
                mask: 1
            }),
            Err(PcrError::UnknownBank(0x0099))
        );
    }

    #[test]
    fn values_are_checked_and_digested_in_order() {
        let s = PcrSelection::sha256(&[1, 2]).unwrap();
        assert!(PcrValues::new(s, vec![vec![0; 32]]).is_err());
        assert!(PcrValues::new(s, vec![vec![0; 32], vec![0; 20]]).is_err());
        let v = PcrValues::new(s, vec![vec![1; 32], vec![2; 32]]).unwrap();
        let mut concat = vec![1u8; 32];
        concat.extend_from_slice(&[2u8; 32]);
        assert_eq!(
            v.composite_digest().to_vec(),
            HashAlg::Sha256.digest(&concat)
        );
        assert_eq!(v.get(2), Some(&[2u8; 32][..]));
        assert_eq!(v.get(3), None);
    }
}

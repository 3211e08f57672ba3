//! Reference values: which PCR values a class of device may show.
//!
//! A verified quote proves *what* the PCRs hold; the reference values decide
//! whether that is acceptable. Each PCR in the policy lists the digests it may
//! hold (several, to roll firmware updates out gradually).

use std::collections::BTreeMap;

use crate::pcr::{HashAlg, PcrError, PcrSelection, PcrValues};

/// Why a set of reference values is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The policy names a bad PCR or no PCR at all.
    #[error(transparent)]
    Pcr(#[from] PcrError),
    /// SHA-1 banks are not accepted.
    #[error("reference values in the SHA-1 bank are not accepted")]
    Sha1Bank,
    /// A PCR lists no allowed digest (it could never match).
    #[error("PCR {0} lists no allowed digest")]
    NoAllowedDigest(u8),
    /// An allowed digest has the wrong length for the bank.
    #[error("PCR {pcr}: allowed digest of {got} bytes, the bank has {expected}")]
    DigestLength {
        /// The PCR.
        pcr: u8,
        /// Bank digest length.
        expected: usize,
        /// Given length.
        got: usize,
    },
}

/// One device class's reference values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceValues {
    selection: PcrSelection,
    allowed: BTreeMap<u8, Vec<Vec<u8>>>,
}

/// How observed values differ from the reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PcrMismatch {
    /// The PCR holds a digest that is not allowed.
    Differs {
        /// The PCR.
        pcr: u8,
        /// What it holds.
        actual: Vec<u8>,
    },
    /// The observed values do not include this PCR (or are from another bank).
    Missing {
        /// The PCR.
        pcr: u8,
    },
}

impl ReferenceValues {
    /// Builds the reference from `bank` and, per PCR index, its allowed digests.
    pub fn new(
        bank: HashAlg,
        allowed: BTreeMap<u8, Vec<Vec<u8>>>,
    ) -> Result<ReferenceValues, ReferenceError> {
        if bank == HashAlg::Sha1 {
            return Err(ReferenceError::Sha1Bank);
        }
        let indices: Vec<u8> = allowed.keys().copied().collect();
        let selection = PcrSelection::new(bank, &indices)?;
        for (&pcr, digests) in &allowed {
            if digests.is_empty() {
                return Err(ReferenceError::NoAllowedDigest(pcr));
            }
            if let Some(bad) = digests.iter().find(|d| d.len() != bank.digest_len()) {
                return Err(ReferenceError::DigestLength {
                    pcr,
                    expected: bank.digest_len(),
                    got: bad.len(),
                });
            }
        }
        Ok(ReferenceValues { selection, allowed })
    }

    /// The PCRs to quote for this class.
    pub fn selection(&self) -> PcrSelection {
        self.selection
    }

    /// Allowed digests per PCR.
    pub fn allowed(&self) -> &BTreeMap<u8, Vec<Vec<u8>>> {
        &self.allowed
    }

    /// Every PCR whose observed value is not allowed, in ascending order;
    /// empty means the values match.
    pub fn compare(&self, observed: &PcrValues) -> Vec<PcrMismatch> {
        let same_bank = observed.selection().bank() == self.selection.bank();
        self.allowed
            .iter()
            .filter_map(
                |(&pcr, digests)| match observed.get(pcr).filter(|_| same_bank) {
                    None => Some(PcrMismatch::Missing { pcr }),
                    Some(actual) if digests.iter().any(|d| d.as_slice() == actual) => None,
                    Some(actual) => Some(PcrMismatch::Differs {
                        pcr,
                        actual: actual.to_vec(),
                    }),
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs() -> ReferenceValues {
        let mut allowed = BTreeMap::new();
        allowed.insert(0, vec![vec![0xa0; 32], vec![0xa1; 32]]);
        allowed.insert(7, vec![vec![0xb0; 32]]);
        ReferenceValues::new(HashAlg::Sha256, allowed).unwrap()
    }

    #[test]
    fn reports_exactly_the_differing_pcrs() {
        let r = refs();
        assert_eq!(r.selection(), PcrSelection::sha256(&[0, 7]).unwrap());
        let ok = PcrValues::new(r.selection(), vec![vec![0xa1; 32], vec![0xb0; 32]]).unwrap();
        assert!(r.compare(&ok).is_empty());
        let bad = PcrValues::new(r.selection(), vec![vec![0xa0; 32], vec![0xbb; 32]]).unwrap();
        assert_eq!(
            r.compare(&bad),
            vec![PcrMismatch::Differs {
                pcr: 7,
                actual: vec![0xbb; 32]
            }]
        );
    }

    #[test]
    fn missing_pcrs_and_other_banks_do_not_match() {
        let r = refs();
        let partial =
            PcrValues::new(PcrSelection::sha256(&[0]).unwrap(), vec![vec![0xa0; 32]]).unwrap();
        assert_eq!(r.compare(&partial), vec![PcrMismatch::Missing { pcr: 7 }]);
        let other_bank = PcrValues::new(
            PcrSelection::new(HashAlg::Sha384, &[0, 7]).unwrap(),
            vec![vec![0xa0; 48], vec![0xb0; 48]],
        )
        .unwrap();
        assert_eq!(r.compare(&other_bank).len(), 2);
    }

    #[test]
    fn rejects_unusable_policies() {
        let mut allowed = BTreeMap::new();
        allowed.insert(0, vec![vec![0; 20]]);
        assert_eq!(
            ReferenceValues::new(HashAlg::Sha1, allowed.clone()),
            Err(ReferenceError::Sha1Bank)
        );
        assert!(matches!(
            ReferenceValues::new(HashAlg::Sha256, allowed),
            Err(ReferenceError::DigestLength { pcr: 0, .. })
        ));
        let mut empty = BTreeMap::new();
        empty.insert(3, vec![]);
        assert_eq!(
            ReferenceValues::new(HashAlg::Sha256, empty),
            Err(ReferenceError::NoAllowedDigest(3))
        );
        assert!(ReferenceValues::new(HashAlg::Sha256, BTreeMap::new()).is_err());
        let mut high = BTreeMap::new();
        high.insert(24, vec![vec![0; 32]]);
        assert!(ReferenceValues::new(HashAlg::Sha256, high).is_err());
    }
}

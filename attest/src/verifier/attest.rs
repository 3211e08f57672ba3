//! `TPMS_ATTEST` and `TPMT_SIGNATURE` decoding.
//!
//! The decoder reports what the bytes say (magic, type, ...) without judging
//! it; [`super::quote`] judges. It never panics on any input (a property test
//! feeds it random bytes).

use crate::evidence::ClockInfo;
use crate::tpm_constants::*;
use crate::wire::{ParseError, ParseProblem, Reader};

/// One bank of a `TPML_PCR_SELECTION`, as the bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPcrSelection {
    /// The bank's `TPM_ALG_ID`.
    pub hash: u16,
    /// The `pcrSelect` bit map (PCR n is bit n % 8 of octet n / 8).
    pub select: Vec<u8>,
}

impl RawPcrSelection {
    /// The bit map as a mask (bit n = PCR n); `None` if it selects a PCR
    /// above 31.
    pub fn mask(&self) -> Option<u32> {
        let mut mask = 0u32;
        for (i, &b) in self.select.iter().enumerate() {
            if b == 0 {
                continue;
            }
            let shift = u32::try_from(8 * i).ok().filter(|s| *s < 32)?;
            mask |= u32::from(b) << shift;
        }
        Some(mask)
    }
}

/// `TPMS_QUOTE_INFO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteInfo {
    /// The PCRs the quote covers, bank by bank.
    pub selection: Vec<RawPcrSelection>,
    /// The digest of the selected PCR values.
    pub pcr_digest: Vec<u8>,
}

/// A decoded `TPMS_ATTEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    /// Must be `TPM_GENERATED_VALUE` for anything the TPM produced itself.
    pub magic: u32,
    /// The `TPMI_ST_ATTEST` type.
    pub attest_type: u16,
    /// Qualified name of the signing key.
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data (the verifier's nonce).
    pub extra_data: Vec<u8>,
    /// The TPM clock and boot counters at signing.
    pub clock: ClockInfo,
    /// Vendor-defined firmware version.
    pub firmware_version: u64,
    /// Present when `attest_type` is a quote.
    pub quote: Option<QuoteInfo>,
}

impl Attest {
    /// Decodes a `TPMS_ATTEST`. A quote must be exactly consumed; other
    /// attestation types are recognised but their body is not decoded.
    pub fn parse(bytes: &[u8]) -> Result<Attest, ParseError> {
        let mut r = Reader::new("TPMS_ATTEST", bytes);
        let magic = r.u32()?;
        let attest_type = r.u16()?;
        let qualified_signer = r.tpm2b("qualifiedSigner", MAX_NAME)?.to_vec();
        let extra_data = r.tpm2b("extraData", MAX_DIGEST)?.to_vec();
        let clock = ClockInfo {
            clock: r.u64()?,
            reset_count: r.u32()?,
            restart_count: r.u32()?,
            safe: match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(r.error(ParseProblem::Invalid("clockInfo.safe"))),
            },
        };
        let firmware_version = r.u64()?;
        let quote = if attest_type == TPM_ST_ATTEST_QUOTE {
            let count = r.u32()?;
            if count > MAX_PCR_BANKS {
                return Err(r.error(ParseProblem::TooLong("pcrSelect count", count as usize)));
            }
            let mut selection = Vec::new();
            for _ in 0..count {
                let hash = r.u16()?;
                let size = usize::from(r.u8()?);
                if size > MAX_PCR_SELECT {
                    return Err(r.error(ParseProblem::TooLong("sizeofSelect", size)));
                }
                let select = r.take(size)?.to_vec();
                selection.push(RawPcrSelection { hash, select });
            }
            let pcr_digest = r.tpm2b("pcrDigest", MAX_DIGEST)?.to_vec();
            r.finish()?;
            Some(QuoteInfo {
                selection,
                pcr_digest,
            })
        } else {
            None
        };
        Ok(Attest {
            magic,
            attest_type,
            qualified_signer,
            extra_data,
            clock,
            firmware_version,
            quote,
        })
    }
}

/// A decoded `TPMT_SIGNATURE` (the schemes an AK may use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// ECDSA: the hash and the two integers as the TPM gave them.
    Ecdsa {
        /// Hash `TPM_ALG_ID`.
        hash: u16,
        /// `signatureR`.
        r: Vec<u8>,
        /// `signatureS`.
        s: Vec<u8>,
    },
    /// RSASSA-PKCS1-v1_5.
    RsaSsa {
        /// Hash `TPM_ALG_ID`.
        hash: u16,
        /// The signature.
        sig: Vec<u8>,
    },
}

impl Signature {
    /// Decodes a marshalled `TPMT_SIGNATURE`; anything but ECDSA and RSASSA
    /// is refused.
    pub fn parse(bytes: &[u8]) -> Result<Signature, ParseError> {
        let mut r = Reader::new("TPMT_SIGNATURE", bytes);
        let sig = match r.u16()? {
            TPM_ALG_ECDSA => {
                let hash = r.u16()?;
                let sr = r.tpm2b("signatureR", MAX_ECC_BYTES)?.to_vec();
                let ss = r.tpm2b("signatureS", MAX_ECC_BYTES)?.to_vec();
                Signature::Ecdsa { hash, r: sr, s: ss }
            }
            TPM_ALG_RSASSA => {
                let hash = r.u16()?;
                let sig = r.tpm2b("sig", MAX_RSA_BYTES)?.to_vec();
                Signature::RsaSsa { hash, sig }
            }
            other => return Err(r.error(ParseProblem::Unsupported("signature scheme", other))),
        };
        r.finish()?;
        Ok(sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote_bytes() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
        b.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
        b.extend_from_slice(&[0, 2, 0xaa, 0xbb]); // qualifiedSigner
        b.extend_from_slice(&[0, 3, 1, 2, 3]); // extraData
        b.extend_from_slice(&42u64.to_be_bytes());
        b.extend_from_slice(&7u32.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.push(1);
        b.extend_from_slice(&9u64.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        b.extend_from_slice(&[3, 0x01, 0x00, 0x01]); // PCR 0 and 16
        b.extend_from_slice(&[0, 32]);
        b.extend_from_slice(&[0x5a; 32]);
        b
    }

    #[test]
    fn decodes_a_quote() {
        let a = Attest::parse(&quote_bytes()).unwrap();
        assert_eq!(a.magic, TPM_GENERATED_VALUE);
        assert_eq!(a.extra_data, vec![1, 2, 3]);
        assert_eq!(
            a.clock,
            ClockInfo {
                clock: 42,
                reset_count: 7,
                restart_count: 1,
                safe: true
            }
        );
        let q = a.quote.unwrap();
        assert_eq!(q.selection.len(), 1);
        assert_eq!(q.selection[0].mask(), Some((1 << 0) | (1 << 16)));
        assert_eq!(q.pcr_digest, vec![0x5a; 32]);
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let bytes = quote_bytes();
        for cut in 0..bytes.len() {
            assert!(Attest::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes;
        long.push(0);
        assert!(Attest::parse(&long).is_err());
    }

    #[test]
    fn safe_must_be_a_boolean() {
        let mut bytes = quote_bytes();
        // magic 4 + type 2 + signer 4 + extra 5 + clock 8 + counters 8 = 31
        bytes[31] = 2;
        assert!(matches!(
            Attest::parse(&bytes).unwrap_err().problem,
            ParseProblem::Invalid("clockInfo.safe")
        ));
    }

    #[test]
    fn decodes_signatures() {
        let mut b = Vec::new();
        b.extend_from_slice(&TPM_ALG_ECDSA.to_be_bytes());
        b.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        b.extend_from_slice(&[0, 1, 9, 0, 2, 8, 8]);
        assert_eq!(
            Signature::parse(&b).unwrap(),
            Signature::Ecdsa {
                hash: TPM_ALG_SHA256,
                r: vec![9],
                s: vec![8, 8]
            }
        );
        b[1] = 0x05; // HMAC
        assert!(Signature::parse(&b).is_err());
    }
}

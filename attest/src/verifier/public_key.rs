//! `TPM2B_PUBLIC` decoding: the attestation key the verifier trusts quotes
//! from, and the endorsement key credentials are made for.
//!
//! Only RSA and ECC public areas are decoded (the only kinds an EK or AK can
//! be). The decoder is strict: every size is bounded, every scheme is one we
//! know, and no byte may be left over.

use crate::pcr::HashAlg;
use crate::tpm_constants::*;
use crate::wire::{ParseError, ParseProblem, Reader};

const STRUCTURE: &str = "TPM2B_PUBLIC";

/// `TPMT_SYM_DEF_OBJECT` (only NULL or AES-CFB are decoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Symmetric {
    Null,
    AesCfb { key_bits: u16 },
}

/// An asymmetric scheme with its hash (`TPMT_*_SCHEME`), or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scheme {
    pub(crate) alg: u16,
    pub(crate) hash: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyParams {
    Rsa {
        scheme: Scheme,
        key_bits: u16,
        exponent: u32,
        modulus: Vec<u8>,
    },
    Ecc {
        scheme: Scheme,
        curve: u16,
        kdf: Scheme,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

/// A decoded `TPMT_PUBLIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublicArea {
    pub(crate) name_alg: u16,
    pub(crate) attributes: u32,
    pub(crate) auth_policy: Vec<u8>,
    pub(crate) symmetric: Symmetric,
    pub(crate) params: KeyParams,
}

impl PublicArea {
    fn has(&self, bits: u32) -> bool {
        self.attributes & bits == bits
    }
}

/// Decodes a marshalled `TPM2B_PUBLIC`; returns the area and the raw
/// `TPMT_PUBLIC` bytes (what the object's name is computed over).
pub(crate) fn parse_tpm2b_public(bytes: &[u8]) -> Result<(PublicArea, &[u8]), ParseError> {
    let mut outer = Reader::new(STRUCTURE, bytes);
    let tpmt = outer.tpm2b("TPMT_PUBLIC", usize::from(u16::MAX))?;
    outer.finish()?;
    let mut r = Reader::new(STRUCTURE, tpmt);
    let area = parse_tpmt_public(&mut r)?;
    r.finish()?;
    Ok((area, tpmt))
}

fn parse_tpmt_public(r: &mut Reader<'_>) -> Result<PublicArea, ParseError> {
    let alg_type = r.u16()?;
    let name_alg = r.u16()?;
    let attributes = r.u32()?;
    let auth_policy = r.tpm2b("authPolicy", MAX_DIGEST)?.to_vec();
    match alg_type {
        TPM_ALG_RSA => {
            let symmetric = parse_symmetric(r)?;
            let scheme = parse_scheme(r, "TPMT_RSA_SCHEME")?;
            let key_bits = r.u16()?;
            let exponent = r.u32()?;
            let modulus = r.tpm2b("TPM2B_PUBLIC_KEY_RSA", MAX_RSA_BYTES)?.to_vec();
            Ok(PublicArea {
                name_alg,
                attributes,
                auth_policy,
                symmetric,
                params: KeyParams::Rsa {
                    scheme,
                    key_bits,
                    exponent,
                    modulus,
                },
            })
        }
        TPM_ALG_ECC => {
            let symmetric = parse_symmetric(r)?;
            let scheme = parse_scheme(r, "TPMT_ECC_SCHEME")?;
            let curve = r.u16()?;
            let kdf = parse_scheme(r, "TPMT_KDF_SCHEME")?;
            let x = r.tpm2b("ECC x", MAX_ECC_BYTES)?.to_vec();
            let y = r.tpm2b("ECC y", MAX_ECC_BYTES)?.to_vec();
            Ok(PublicArea {
                name_alg,
                attributes,
                auth_policy,
                symmetric,
                params: KeyParams::Ecc {
                    scheme,
                    curve,
                    kdf,
                    x,
                    y,
                },
            })
        }
        other => Err(r.error(ParseProblem::Unsupported("object type", other))),
    }
}

fn parse_symmetric(r: &mut Reader<'_>) -> Result<Symmetric, ParseError> {
    match r.u16()? {
        TPM_ALG_NULL => Ok(Symmetric::Null),
        TPM_ALG_AES => {
            let key_bits = r.u16()?;
            let mode = r.u16()?;
            if mode != TPM_ALG_CFB {
                return Err(r.error(ParseProblem::Unsupported("symmetric mode", mode)));
            }
            Ok(Symmetric::AesCfb { key_bits })
        }
        other => Err(r.error(ParseProblem::Unsupported("symmetric algorithm", other))),
    }
}

/// RSA, ECC and KDF schemes share one shape: an algorithm, then (for all we
/// accept) a hash; ECDAA adds a counter.
fn parse_scheme(r: &mut Reader<'_>, what: &'static str) -> Result<Scheme, ParseError> {
    let alg = r.u16()?;
    let hash = match alg {
        TPM_ALG_NULL | TPM_ALG_RSAES => None,
        TPM_ALG_RSASSA
        | TPM_ALG_RSAPSS
        | TPM_ALG_OAEP
        | TPM_ALG_ECDSA
        | TPM_ALG_ECDH
        | TPM_ALG_SM2
        | TPM_ALG_ECSCHNORR
        | TPM_ALG_ECMQV
        | TPM_ALG_MGF1
        | TPM_ALG_KDF1_SP800_56A
        | TPM_ALG_KDF2
        | TPM_ALG_KDF1_SP800_108 => Some(r.u16()?),
        TPM_ALG_ECDAA => {
            let hash = r.u16()?;
            let _count = r.u16()?;
            Some(hash)
        }
        other => return Err(r.error(ParseProblem::Unsupported(what, other))),
    };
    Ok(Scheme { alg, hash })
}

/// The TPM name of an object: its name algorithm followed by that hash of
/// the `TPMT_PUBLIC`.
fn object_name(name_alg: u16, tpmt_public: &[u8]) -> Option<Vec<u8>> {
    let hash = HashAlg::from_tpm_alg_id(name_alg)?;
    if hash == HashAlg::Sha1 {
        return None;
    }
    let mut name = name_alg.to_be_bytes().to_vec();
    name.extend_from_slice(&hash.digest(tpmt_public));
    Some(name)
}

/// SHA-256 over a marshalled `TPM2B_PUBLIC` (as `tpm2_readpublic -o` writes
/// it): the fingerprint operators allow-list and compare.
pub fn public_key_fingerprint(tpm2b_public: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, tpm2b_public).as_ref());
    out
}

/// Why a public key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    /// The bytes are not a well-formed `TPM2B_PUBLIC`.
    #[error(transparent)]
    Malformed(#[from] ParseError),
    /// The key does not have the attributes or parameters its role requires.
    #[error("not an acceptable {role}: {reason}")]
    WrongKind {
        /// "attestation key" or "endorsement key".
        role: &'static str,
        /// The first requirement that failed.
        reason: &'static str,
    },
}

/// Kind of attestation key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AkKind {
    /// ECC NIST P-256, ECDSA with SHA-256 (default: small, fast on every TPM).
    #[default]
    EccP256,
    /// RSA-2048, RSASSA-PKCS1-v1_5 with SHA-256.
    Rsa2048,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AkKey {
    /// Uncompressed SEC1 point, 65 bytes.
    EcdsaP256 {
        point: Vec<u8>,
    },
    RsaSsa2048 {
        modulus: Vec<u8>,
        exponent: u32,
    },
}

/// An attestation key's public part, checked to be a restricted signing key
/// that only signs TPM-generated data (so its quotes cannot be forged by
/// signing chosen bytes), with a SHA-256 name and a SHA-256 scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkPublic {
    bytes: Vec<u8>,
    name: Vec<u8>,
    pub(crate) key: AkKey,
}

fn wrong(role: &'static str, reason: &'static str) -> PublicKeyError {
    PublicKeyError::WrongKind { role, reason }
}

/// Attributes every key born in and bound to one TPM has.
const TPM_RESIDENT: u32 = TPMA_FIXED_TPM | TPMA_FIXED_PARENT | TPMA_SENSITIVE_DATA_ORIGIN;

impl AkPublic {
    /// Decodes and checks a marshalled `TPM2B_PUBLIC`.
    pub fn parse(tpm2b_public: &[u8]) -> Result<AkPublic, PublicKeyError> {
        const ROLE: &str = "attestation key";
        let (area, tpmt) = parse_tpm2b_public(tpm2b_public)?;
        if !area.has(TPMA_RESTRICTED | TPMA_SIGN_ENCRYPT) {
            return Err(wrong(ROLE, "not a restricted signing key"));
        }
        if area.has(TPMA_DECRYPT) {
            return Err(wrong(ROLE, "also a decryption key"));
        }
        if !area.has(TPM_RESIDENT) {
            return Err(wrong(
                ROLE,
                "not fixedTPM + fixedParent + sensitiveDataOrigin",
            ));
        }
        if area.name_alg != TPM_ALG_SHA256 {
            return Err(wrong(ROLE, "name algorithm is not SHA-256"));
        }
        if area.symmetric != Symmetric::Null {
            return Err(wrong(ROLE, "a signing key has no symmetric algorithm"));
        }
        let key = match &area.params {
            KeyParams::Ecc {
                scheme,
                curve,
                kdf,
                x,
                y,
            } => {
                if *curve != TPM_ECC_NIST_P256 {
                    return Err(wrong(ROLE, "curve is not NIST P-256"));
                }
                if *scheme
                    != (Scheme {
                        alg: TPM_ALG_ECDSA,
                        hash: Some(TPM_ALG_SHA256),
                    })
                {
                    return Err(wrong(ROLE, "scheme is not ECDSA with SHA-256"));
                }
                if kdf.alg != TPM_ALG_NULL {
                    return Err(wrong(ROLE, "a signing key has no KDF"));
                }
                AkKey::EcdsaP256 {
                    point: sec1_point(x, y, 32).ok_or(wrong(ROLE, "bad P-256 point size"))?,
                }
            }
            KeyParams::Rsa {
                scheme,
                key_bits,
                exponent,
                modulus,
            } => {
                if *key_bits != 2048 || modulus.len() != 256 {
                    return Err(wrong(ROLE, "RSA key is not 2048 bits"));
                }
                if *scheme
                    != (Scheme {
                        alg: TPM_ALG_RSASSA,
                        hash: Some(TPM_ALG_SHA256),
                    })
                {
                    return Err(wrong(ROLE, "scheme is not RSASSA with SHA-256"));
                }
                AkKey::RsaSsa2048 {
                    modulus: modulus.clone(),
                    exponent: rsa_exponent(*exponent),
                }
            }
        };
        let name = object_name(area.name_alg, tpmt).ok_or(wrong(ROLE, "name algorithm"))?;
        Ok(AkPublic {
            bytes: tpm2b_public.to_vec(),
            name,
            key,
        })
    }

    /// The marshalled `TPM2B_PUBLIC`, as given.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The TPM name (`0x000b` + SHA-256 of the `TPMT_PUBLIC`): what a
    /// credential is bound to.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// SHA-256 of [`AkPublic::as_bytes`].
    pub fn fingerprint(&self) -> [u8; 32] {
        public_key_fingerprint(&self.bytes)
    }

    /// Which kind of key it is.
    pub fn kind(&self) -> AkKind {
        match self.key {
            AkKey::EcdsaP256 { .. } => AkKind::EccP256,
            AkKey::RsaSsa2048 { .. } => AkKind::Rsa2048,
        }
    }
}

/// Kind of endorsement key (TCG EK Credential Profile, low-range templates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EkKind {
    /// ECC NIST P-256 (template L-2), certificate at NV 0x01c0000a. Default.
    #[default]
    EccP256,
    /// RSA-2048 (template L-1), certificate at NV 0x01c00002.
    Rsa2048,
}

impl EkKind {
    /// The NV index of this kind's EK certificate.
    pub const fn certificate_nv_index(self) -> u32 {
        match self {
            EkKind::EccP256 => 0x01c0_000a,
            EkKind::Rsa2048 => 0x01c0_0002,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EkKey {
    /// Affine coordinates, 32 bytes each.
    EccP256 {
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Rsa2048 {
        modulus: Vec<u8>,
        exponent: u32,
    },
}

/// An endorsement key's public part, checked to be a restricted decryption
/// key with the standard (low-range) parameters: SHA-256 name, AES-128-CFB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EkPublic {
    pub(crate) bytes: Vec<u8>,
    pub(crate) name: Vec<u8>,
    pub(crate) key: EkKey,
}

impl EkPublic {
    /// Decodes and checks a marshalled `TPM2B_PUBLIC`.
    pub fn parse(tpm2b_public: &[u8]) -> Result<EkPublic, PublicKeyError> {
        const ROLE: &str = "endorsement key";
        let (area, tpmt) = parse_tpm2b_public(tpm2b_public)?;
        if !area.has(TPMA_RESTRICTED | TPMA_DECRYPT) || area.has(TPMA_SIGN_ENCRYPT) {
            return Err(wrong(ROLE, "not a restricted decryption key"));
        }
        if !area.has(TPM_RESIDENT) {
            return Err(wrong(
                ROLE,
                "not fixedTPM + fixedParent + sensitiveDataOrigin",
            ));
        }
        if area.name_alg != TPM_ALG_SHA256 {
            return Err(wrong(ROLE, "name algorithm is not SHA-256"));
        }
        if area.symmetric != (Symmetric::AesCfb { key_bits: 128 }) {
            return Err(wrong(ROLE, "symmetric algorithm is not AES-128-CFB"));
        }
        let key = match &area.params {
            KeyParams::Ecc {
                scheme,
                curve,
                kdf,
                x,
                y,
            } => {
                if *curve != TPM_ECC_NIST_P256 {
                    return Err(wrong(ROLE, "curve is not NIST P-256"));
                }
                if scheme.alg != TPM_ALG_NULL || kdf.alg != TPM_ALG_NULL {
                    return Err(wrong(ROLE, "a storage key has NULL scheme and KDF"));
                }
                let bad_size = || wrong(ROLE, "bad P-256 point size");
                EkKey::EccP256 {
                    x: left_pad(x, 32).ok_or_else(bad_size)?,
                    y: left_pad(y, 32).ok_or_else(bad_size)?,
                }
            }
            KeyParams::Rsa {
                scheme,
                key_bits,
                exponent,
                modulus,
            } => {
                if *key_bits != 2048 || modulus.len() != 256 {
                    return Err(wrong(ROLE, "RSA key is not 2048 bits"));
                }
                if scheme.alg != TPM_ALG_NULL {
                    return Err(wrong(ROLE, "a storage key has a NULL scheme"));
                }
                EkKey::Rsa2048 {
                    modulus: modulus.clone(),
                    exponent: rsa_exponent(*exponent),
                }
            }
        };
        let name = object_name(area.name_alg, tpmt).ok_or(wrong(ROLE, "name algorithm"))?;
        Ok(EkPublic {
            bytes: tpm2b_public.to_vec(),
            name,
            key,
        })
    }

    /// The marshalled `TPM2B_PUBLIC`, as given.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The TPM name of the EK.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// SHA-256 of [`EkPublic::as_bytes`]: the allow-list key.
    pub fn fingerprint(&self) -> [u8; 32] {
        public_key_fingerprint(&self.bytes)
    }

    /// Which kind of key it is.
    pub fn kind(&self) -> EkKind {
        match self.key {
            EkKey::EccP256 { .. } => EkKind::EccP256,
            EkKey::Rsa2048 { .. } => EkKind::Rsa2048,
        }
    }
}

/// The TPM encodes the default exponent 65537 as 0.
fn rsa_exponent(e: u32) -> u32 {
    if e == 0 { 65_537 } else { e }
}

/// `0x04 || x || y`, each coordinate left-padded to `size` bytes (a TPM may
/// drop leading zero bytes). `None` when a coordinate is empty or too long.
pub(crate) fn sec1_point(x: &[u8], y: &[u8], size: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(1 + 2 * size);
    out.push(0x04);
    out.extend_from_slice(&left_pad(x, size)?);
    out.extend_from_slice(&left_pad(y, size)?);
    Some(out)
}

/// A big-endian coordinate left-padded to `size` bytes; `None` when empty or
/// longer than `size`.
pub(crate) fn left_pad(coordinate: &[u8], size: usize) -> Option<Vec<u8>> {
    if coordinate.is_empty() || coordinate.len() > size {
        return None;
    }
    let mut out = vec![0u8; size - coordinate.len()];
    out.extend_from_slice(coordinate);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built ECC P-256 AK public area with the given attributes.
    fn ecc_ak(attributes: u32, scheme: u16, x: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&TPM_ALG_ECC.to_be_bytes());
        t.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        t.extend_from_slice(&attributes.to_be_bytes());
        t.extend_from_slice(&0u16.to_be_bytes()); // authPolicy
        t.extend_from_slice(&TPM_ALG_NULL.to_be_bytes()); // symmetric
        t.extend_from_slice(&scheme.to_be_bytes());
        t.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        t.extend_from_slice(&TPM_ECC_NIST_P256.to_be_bytes());
        t.extend_from_slice(&TPM_ALG_NULL.to_be_bytes()); // kdf
        crate::wire::put_tpm2b(&mut t, x).unwrap();
        crate::wire::put_tpm2b(&mut t, &[7; 32]).unwrap();
        let mut out = Vec::new();
        crate::wire::put_tpm2b(&mut out, &t).unwrap();
        out
    }

    const AK_ATTRS: u32 = TPM_RESIDENT | TPMA_RESTRICTED | TPMA_SIGN_ENCRYPT;

    #[test]
    fn accepts_a_restricted_ecdsa_key_and_names_it() {
        let bytes = ecc_ak(AK_ATTRS, TPM_ALG_ECDSA, &[5; 32]);
        let ak = AkPublic::parse(&bytes).unwrap();
        assert_eq!(ak.kind(), AkKind::EccP256);
        assert_eq!(ak.name().len(), 34);
        assert_eq!(&ak.name()[..2], &[0x00, 0x0b]);
        assert_eq!(
            &ak.name()[2..],
            HashAlg::Sha256.digest(&bytes[2..]).as_slice()
        );
    }

    #[test]
    fn refuses_unrestricted_or_decrypting_or_wrong_scheme() {
        let unrestricted = ecc_ak(AK_ATTRS & !TPMA_RESTRICTED, TPM_ALG_ECDSA, &[5; 32]);
        assert!(matches!(
            AkPublic::parse(&unrestricted),
            Err(PublicKeyError::WrongKind { .. })
        ));
        let decrypt = ecc_ak(AK_ATTRS | TPMA_DECRYPT, TPM_ALG_ECDSA, &[5; 32]);
        assert!(AkPublic::parse(&decrypt).is_err());
        let not_fixed = ecc_ak(AK_ATTRS & !TPMA_FIXED_TPM, TPM_ALG_ECDSA, &[5; 32]);
        assert!(AkPublic::parse(&not_fixed).is_err());
        let schnorr = ecc_ak(AK_ATTRS, TPM_ALG_ECSCHNORR, &[5; 32]);
        assert!(AkPublic::parse(&schnorr).is_err());
        let long_x = ecc_ak(AK_ATTRS, TPM_ALG_ECDSA, &[5; 33]);
        assert!(AkPublic::parse(&long_x).is_err());
    }

    #[test]
    fn short_coordinates_are_left_padded() {
        let p = sec1_point(&[1], &[2, 3], 4).unwrap();
        assert_eq!(p, vec![4, 0, 0, 0, 1, 0, 0, 2, 3]);
        assert!(sec1_point(&[], &[1], 4).is_none());
    }

    #[test]
    fn truncation_anywhere_is_an_error_not_a_panic() {
        let bytes = ecc_ak(AK_ATTRS, TPM_ALG_ECDSA, &[5; 32]);
        for cut in 0..bytes.len() {
            assert!(AkPublic::parse(&bytes[..cut]).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(AkPublic::parse(&long).is_err());
    }
}

//! A fixed attestation key in software: an ECDSA P-256 key whose
//! `TPM2B_PUBLIC` has the attributes of a TPM-resident restricted signing
//! key, so mctc-attest's verifier accepts quotes it signs. The private key
//! (`fixtures/ak-p256.pk8`, PKCS#8, made once with `openssl ecparam -name
//! prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -outform DER`)
//! is a test key with no other use.

use mctc_attest::ClockInfo;
use mctc_attest::verifier::AkPublic;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

/// TPM constants (TPM 2.0 Part 2) for the structures built here.
const TPM_ALG_ECC: u16 = 0x0023;
const TPM_ALG_SHA256: u16 = 0x000b;
const TPM_ALG_NULL: u16 = 0x0010;
const TPM_ALG_ECDSA: u16 = 0x0018;
const TPM_ECC_NIST_P256: u16 = 0x0003;
const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA |
/// restricted | sign: what the agent's AK template sets.
const AK_ATTRIBUTES: u32 = 0x0005_0472;

/// fixedTPM | fixedParent | sensitiveDataOrigin | adminWithPolicy |
/// restricted | decrypt: the TCG EK template's attributes.
const EK_ATTRIBUTES: u32 = 0x0003_00b2;
const TPM_ALG_AES: u16 = 0x0006;
const TPM_ALG_CFB: u16 = 0x0043;

const PKCS8: &[u8] = include_bytes!("../fixtures/ak-p256.pk8");

fn put_tpm2b(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("TPM2B contents fit in u16");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A marshalled ECC P-256 `TPM2B_PUBLIC` on `pair`'s point.
fn ecc_public(
    pair: &EcdsaKeyPair,
    attributes: u32,
    auth_policy: &[u8],
    aes_bits: Option<u16>,
    scheme: u16,
) -> Vec<u8> {
    let point = pair.public_key().as_ref();
    let (x, y) = point.get(1..).expect("uncompressed point").split_at(32);
    let mut area = Vec::new();
    area.extend_from_slice(&TPM_ALG_ECC.to_be_bytes());
    area.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    area.extend_from_slice(&attributes.to_be_bytes());
    put_tpm2b(&mut area, auth_policy);
    match aes_bits {
        Some(bits) => {
            area.extend_from_slice(&TPM_ALG_AES.to_be_bytes());
            area.extend_from_slice(&bits.to_be_bytes());
            area.extend_from_slice(&TPM_ALG_CFB.to_be_bytes());
        }
        None => area.extend_from_slice(&TPM_ALG_NULL.to_be_bytes()),
    }
    area.extend_from_slice(&scheme.to_be_bytes());
    if scheme != TPM_ALG_NULL {
        area.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    }
    area.extend_from_slice(&TPM_ECC_NIST_P256.to_be_bytes());
    area.extend_from_slice(&TPM_ALG_NULL.to_be_bytes()); // kdf
    put_tpm2b(&mut area, x);
    put_tpm2b(&mut area, y);
    let mut public = Vec::new();
    put_tpm2b(&mut public, &area);
    public
}

/// The fixed AK.
#[derive(Debug)]
pub struct FixedAk {
    pair: EcdsaKeyPair,
    public: Vec<u8>,
    name: Vec<u8>,
    rng: SystemRandom,
}

impl FixedAk {
    /// Loads the key and marshals its public part.
    pub fn load() -> FixedAk {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, PKCS8, &rng)
            .expect("the fixture AK is a valid P-256 PKCS#8 key");
        let public = ecc_public(&pair, AK_ATTRIBUTES, &[], None, TPM_ALG_ECDSA);
        let name = AkPublic::parse(&public)
            .expect("the fixture AK public is acceptable")
            .name()
            .to_vec();
        FixedAk {
            pair,
            public,
            name,
            rng,
        }
    }

    /// The marshalled `TPM2B_PUBLIC`.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// An EK-shaped `TPM2B_PUBLIC` (ECC P-256, restricted decryption,
    /// AES-128-CFB) on the same point: a curve point credentials can be
    /// made for.
    pub fn ek_public(&self) -> Vec<u8> {
        ecc_public(
            &self.pair,
            EK_ATTRIBUTES,
            &[0x83; 32],
            Some(128),
            TPM_ALG_NULL,
        )
    }

    /// Its TPM name.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// The verifier's view of the key.
    pub fn verifier(&self) -> AkPublic {
        AkPublic::parse(&self.public).expect("the fixture AK public is acceptable")
    }

    /// A marshalled `TPMT_SIGNATURE` (ECDSA, SHA-256) over `attest`, as
    /// the TPM would sign it.
    pub fn sign(&self, attest: &[u8]) -> Vec<u8> {
        let sig = self
            .pair
            .sign(&self.rng, attest)
            .expect("ECDSA signing with a valid key");
        let (r, s) = sig.as_ref().split_at(32);
        let mut out = Vec::new();
        out.extend_from_slice(&TPM_ALG_ECDSA.to_be_bytes());
        out.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        put_tpm2b(&mut out, r);
        put_tpm2b(&mut out, s);
        out
    }
}

/// A `TPMS_ATTEST` quote of the SHA-256 PCRs in `mask` (PCRs 0–23) with
/// `extra_data` as qualifying data and `pcr_digest` as the composite.
pub fn quote_attest(extra_data: &[u8], clock: ClockInfo, mask: u32, pcr_digest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
    out.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
    // qualifiedSigner: a name-shaped value; the verifier does not judge it.
    let mut signer = TPM_ALG_SHA256.to_be_bytes().to_vec();
    signer.extend_from_slice(&[0x51; 32]);
    put_tpm2b(&mut out, &signer);
    put_tpm2b(&mut out, extra_data);
    out.extend_from_slice(&clock.clock.to_be_bytes());
    out.extend_from_slice(&clock.reset_count.to_be_bytes());
    out.extend_from_slice(&clock.restart_count.to_be_bytes());
    out.push(u8::from(clock.safe));
    out.extend_from_slice(&0x2023_0101_0000_0001u64.to_be_bytes()); // firmwareVersion
    out.extend_from_slice(&1u32.to_be_bytes()); // one bank
    out.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    out.push(3);
    out.extend_from_slice(&mask.to_le_bytes()[..3]);
    put_tpm2b(&mut out, pcr_digest);
    out
}

/// The values of PCRs 0–7 in quotes made here (PCR i holds `[i; 32]`).
pub fn pcr_values() -> Vec<[u8; 32]> {
    (0u8..8).map(|i| [i; 32]).collect()
}

/// SHA-256 over [`pcr_values`] in order: the quoted composite.
pub fn pcr_digest() -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for value in pcr_values() {
        ctx.update(&value);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The TPM clock in quotes made here.
pub const CLOCK: ClockInfo = ClockInfo {
    clock: 9_000_000,
    reset_count: 4,
    restart_count: 1,
    safe: true,
};

#[cfg(test)]
mod tests {
    use mctc_attest::verifier::verify_signed_quote;

    use super::*;

    #[test]
    fn quotes_signed_by_the_fixed_ak_verify() {
        let ak = FixedAk::load();
        let attest = quote_attest(&[7; 32], CLOCK, 0xff, &pcr_digest());
        let signature = ak.sign(&attest);
        let quote = verify_signed_quote(&ak.verifier(), &attest, &signature, &[7; 32]).unwrap();
        assert_eq!(quote.pcr_digest(), pcr_digest());
    }

    #[test]
    fn the_ek_shaped_key_parses_and_takes_credentials() {
        let ak = FixedAk::load();
        let ek = mctc_attest::verifier::EkPublic::parse(&ak.ek_public()).unwrap();
        mctc_attest::verifier::make_credential(&ek, ak.name(), &[1; 32]).unwrap();
    }
}

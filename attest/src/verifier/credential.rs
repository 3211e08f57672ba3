//! TPM2_MakeCredential in software (TPM 2.0 Library Part 1, "Protected
//! Storage" and "Credential Protection"; Part 3, TPM2_MakeCredential).
//!
//! The authority wraps a secret so that only the TPM holding the EK's private
//! key *and* having the named AK loaded can unwrap it (TPM2_ActivateCredential):
//!
//! 1. a seed is shared with the EK: RSA-OAEP (SHA-256, label "IDENTITY\0")
//!    of random bytes, or ECDH with an ephemeral P-256 key and KDFe;
//! 2. `symKey = KDFa(seed, "STORAGE", akName)` encrypts `TPM2B_DIGEST(secret)`
//!    with AES-128-CFB (zero IV);
//! 3. `hmacKey = KDFa(seed, "INTEGRITY")` MACs `encIdentity || akName`, so the
//!    TPM refuses to release the secret under any other AK name.

use aes::Aes128;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{agreement, digest, hmac};
use rsa::{BigUint, Oaep, RsaPublicKey};
use zeroize::Zeroizing;

use crate::pcr::HashAlg;
use crate::verifier::public_key::{EkKey, EkPublic};
use crate::wire::put_tpm2b;

/// Longest secret accepted: a `TPM2B_DIGEST` every TPM can return (SHA-256).
pub const MAX_CREDENTIAL_SECRET: usize = 32;

/// The seed and HMAC size: the EK's name algorithm (SHA-256) digest size.
const SEED_BYTES: usize = 32;
/// AES-128 from the EK's standard symmetric definition.
const SYM_KEY_BITS: u32 = 128;

/// The two halves TPM2_ActivateCredential takes, each a marshalled TPM2B.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// `TPM2B_ID_OBJECT`: integrity HMAC and the encrypted secret.
    pub credential_blob: Vec<u8>,
    /// `TPM2B_ENCRYPTED_SECRET`: the seed, encrypted to the EK.
    pub encrypted_secret: Vec<u8>,
}

/// Why a credential could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The secret is empty or longer than [`MAX_CREDENTIAL_SECRET`].
    #[error("credential secret of {0} bytes (1..=32 allowed)")]
    SecretSize(usize),
    /// The AK name is not a SHA-256 TPM name.
    #[error("AK name is not a SHA-256 TPM name (34 bytes, 0x000b prefix)")]
    BadAkName,
    /// The EK's public key is unusable (e.g. not a point on the curve).
    #[error("EK public key rejected: {0}")]
    BadEkKey(&'static str),
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Random,
}

/// Wraps `secret` for the TPM owning `ek`, bound to the AK named `ak_name`.
pub fn make_credential(
    ek: &EkPublic,
    ak_name: &[u8],
    secret: &[u8],
) -> Result<Credential, CredentialError> {
    if secret.is_empty() || secret.len() > MAX_CREDENTIAL_SECRET {
        return Err(CredentialError::SecretSize(secret.len()));
    }
    if ak_name.len() != 34
        || ak_name.get(..2) != Some(&HashAlg::Sha256.tpm_alg_id().to_be_bytes()[..])
    {
        return Err(CredentialError::BadAkName);
    }
    let rng = SystemRandom::new();
    let (seed, secret_contents) = match &ek.key {
        EkKey::Rsa2048 { modulus, exponent } => seed_for_rsa(&rng, modulus, *exponent)?,
        EkKey::EccP256 { x, y } => seed_for_ecc(&rng, x, y)?,
    };

    let sym_key = kdf_a(&seed, b"STORAGE", ak_name, &[], SYM_KEY_BITS);
    let mut plaintext = Zeroizing::new(Vec::with_capacity(2 + secret.len()));
    put_tpm2b(&mut plaintext, secret).ok_or(CredentialError::SecretSize(secret.len()))?;
    let enc_identity = aes128_cfb_encrypt(&sym_key, &[0u8; 16], &plaintext)
        .ok_or(CredentialError::BadEkKey("symmetric key size"))?;

    let hmac_key = kdf_a(&seed, b"INTEGRITY", &[], &[], 8 * SEED_BYTES as u32);
    let mut mac = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &hmac_key));
    mac.update(&enc_identity);
    mac.update(ak_name);
    let integrity = mac.sign();

    let mut id_object = Vec::with_capacity(2 + 32 + enc_identity.len());
    put_tpm2b(&mut id_object, integrity.as_ref()).ok_or(CredentialError::BadAkName)?;
    id_object.extend_from_slice(&enc_identity);
    let mut credential_blob = Vec::with_capacity(2 + id_object.len());
    put_tpm2b(&mut credential_blob, &id_object).ok_or(CredentialError::BadAkName)?;
    let mut encrypted_secret = Vec::with_capacity(2 + secret_contents.len());
    put_tpm2b(&mut encrypted_secret, &secret_contents)
        .ok_or(CredentialError::BadEkKey("encrypted seed too long"))?;
    Ok(Credential {
        credential_blob,
        encrypted_secret,
    })
}

type Seed = Zeroizing<Vec<u8>>;

/// Random seed, RSA-OAEP-SHA256 encrypted with label "IDENTITY\0".
fn seed_for_rsa(
    rng: &SystemRandom,
    modulus: &[u8],
    exponent: u32,
) -> Result<(Seed, Vec<u8>), CredentialError> {
    let mut seed = Zeroizing::new(vec![0u8; SEED_BYTES]);
    rng.fill(&mut seed).map_err(|_| CredentialError::Random)?;
    let key = RsaPublicKey::new(BigUint::from_bytes_be(modulus), BigUint::from(exponent))
        .map_err(|_| CredentialError::BadEkKey("RSA modulus or exponent"))?;
    let padding = Oaep::new_with_label::<rsa::sha2::Sha256, _>("IDENTITY\0");
    let encrypted = key
        .encrypt(&mut rsa::rand_core::OsRng, padding, &seed)
        .map_err(|_| CredentialError::BadEkKey("RSA-OAEP encryption"))?;
    Ok((seed, encrypted))
}

/// ECDH between a fresh ephemeral key and the EK; the seed is
/// `KDFe(Z, "IDENTITY", ephemeral.x, ek.x)`; the TPM gets the ephemeral
/// point as a `TPMS_ECC_POINT`.
fn seed_for_ecc(
    rng: &SystemRandom,
    ek_x: &[u8],
    ek_y: &[u8],
) -> Result<(Seed, Vec<u8>), CredentialError> {
    let ephemeral = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, rng)
        .map_err(|_| CredentialError::Random)?;
    let ephemeral_public = ephemeral
        .compute_public_key()
        .map_err(|_| CredentialError::Random)?;
    let point = ephemeral_public.as_ref();
    let (eph_x, eph_y) = match (point.get(1..33), point.get(33..65)) {
        (Some(x), Some(y)) if point.len() == 65 => (x, y),
        _ => return Err(CredentialError::BadEkKey("ephemeral point encoding")),
    };
    let mut ek_point = Vec::with_capacity(65);
    ek_point.push(0x04);
    ek_point.extend_from_slice(ek_x);
    ek_point.extend_from_slice(ek_y);
    let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, &ek_point);
    let seed = agreement::agree_ephemeral(ephemeral, &peer, |z| {
        kdf_e(z, b"IDENTITY", eph_x, ek_x, 8 * SEED_BYTES as u32)
    })
    .map_err(|_| CredentialError::BadEkKey("EK point is not on P-256"))?;
    let mut encrypted = Vec::with_capacity(4 + 64);
    put_tpm2b(&mut encrypted, eph_x).ok_or(CredentialError::BadEkKey("point"))?;
    put_tpm2b(&mut encrypted, eph_y).ok_or(CredentialError::BadEkKey("point"))?;
    Ok((seed, encrypted))
}

/// KDFa with HMAC-SHA256 (SP 800-108 counter mode, as TPM 2.0 Part 1
/// specifies it): `HMAC(key, [i]_32 || label || 0x00 || contextU || contextV || [bits]_32)`.
fn kdf_a(key: &[u8], label: &[u8], context_u: &[u8], context_v: &[u8], bits: u32) -> Seed {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Zeroizing::new(Vec::with_capacity(bytes + 32));
    let mut counter = 1u32;
    while out.len() < bytes {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(&counter.to_be_bytes());
        ctx.update(label);
        ctx.update(&[0]);
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits.to_be_bytes());
        out.extend_from_slice(ctx.sign().as_ref());
        counter = counter.wrapping_add(1);
    }
    out.truncate(bytes);
    out
}

/// KDFe with SHA-256 (SP 800-56A concatenation KDF, as TPM 2.0 Part 1
/// specifies it): `H([i]_32 || Z || label || 0x00 || partyUInfo || partyVInfo)`.
fn kdf_e(z: &[u8], label: &[u8], party_u: &[u8], party_v: &[u8], bits: u32) -> Seed {
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Zeroizing::new(Vec::with_capacity(bytes + 32));
    let mut counter = 1u32;
    while out.len() < bytes {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&counter.to_be_bytes());
        ctx.update(z);
        ctx.update(label);
        ctx.update(&[0]);
        ctx.update(party_u);
        ctx.update(party_v);
        out.extend_from_slice(ctx.finish().as_ref());
        counter = counter.wrapping_add(1);
    }
    out.truncate(bytes);
    out
}

/// AES-128 in CFB mode with full-block (128-bit) feedback, the TPM's
/// parameter-encryption mode; the last block may be partial. `None` if the
/// key is not 16 bytes.
fn aes128_cfb_encrypt(key: &[u8], iv: &[u8; 16], plaintext: &[u8]) -> Option<Vec<u8>> {
    let cipher = Aes128::new_from_slice(key).ok()?;
    let mut feedback = *iv;
    let mut out = Vec::with_capacity(plaintext.len());
    for chunk in plaintext.chunks(16) {
        let mut keystream = GenericArray::from(feedback);
        cipher.encrypt_block(&mut keystream);
        let start = out.len();
        out.extend(chunk.iter().zip(keystream.iter()).map(|(p, k)| p ^ k));
        if let Some(block) = out.get(start..start + 16) {
            feedback.copy_from_slice(block);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn cfb_matches_nist_sp800_38a_f3_13() {
        let key = unhex("2b7e151628aed2a6abf7158809cf4f3c");
        let iv: [u8; 16] = unhex("000102030405060708090a0b0c0d0e0f")
            .try_into()
            .unwrap();
        let pt = unhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51");
        let ct = aes128_cfb_encrypt(&key, &iv, &pt).unwrap();
        assert_eq!(
            ct,
            unhex("3b3fd92eb72dad20333449f8e83cfb4ac8a64537a0b3a93fcde3cdad9f1ce58b")
        );
        // A partial last block is the prefix of the full-block encryption.
        let short = aes128_cfb_encrypt(&key, &iv, &pt[..20]).unwrap();
        assert_eq!(short, ct[..20]);
    }

    #[test]
    fn kdfs_produce_the_requested_length_and_depend_on_every_input() {
        let a = kdf_a(b"key", b"STORAGE", b"name", &[], 128);
        assert_eq!(a.len(), 16);
        assert_ne!(*a, *kdf_a(b"key", b"STORAGE", b"other", &[], 128));
        assert_ne!(*a, *kdf_a(b"key", b"INTEGRITY", b"name", &[], 128));
        let long = kdf_a(b"key", b"X", &[], &[], 512);
        assert_eq!(long.len(), 64);
        let e = kdf_e(b"z", b"IDENTITY", b"u", b"v", 256);
        assert_eq!(e.len(), 32);
        assert_ne!(*e, *kdf_e(b"z", b"IDENTITY", b"v", b"u", 256));
    }

    #[test]
    fn refuses_bad_secret_and_name() {
        // Any EK will do: these checks come first.
        let ek = EkPublic {
            bytes: Vec::new(),
            name: Vec::new(),
            key: EkKey::EccP256 {
                x: vec![1; 32],
                y: vec![2; 32],
            },
        };
        let name = [&[0x00, 0x0b][..], &[0u8; 32]].concat();
        assert_eq!(
            make_credential(&ek, &name, &[]),
            Err(CredentialError::SecretSize(0))
        );
        assert_eq!(
            make_credential(&ek, &name, &[0; 33]),
            Err(CredentialError::SecretSize(33))
        );
        assert_eq!(
            make_credential(&ek, &name[..33], &[1; 16]),
            Err(CredentialError::BadAkName)
        );
        // (1, 2) is not on P-256: ring refuses the agreement.
        assert!(matches!(
            make_credential(&ek, &name, &[1; 16]),
            Err(CredentialError::BadEkKey(_))
        ));
    }
}

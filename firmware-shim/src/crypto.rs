//! The crypto the shim needs, as traits a platform implements (ring on
//! hosted targets, a secure element in firmware), and the domain-separated
//! hash every derived value in mctc uses.

use crate::error::Error;

/// SHA-256 and Ed25519 verification: all a device needs to check what the
/// authority signed and to hash its lineage.
pub trait Crypto {
    /// SHA-256 over the concatenation of `parts`.
    fn sha256(&self, parts: &[&[u8]]) -> [u8; 32];

    /// Whether `signature` is a valid Ed25519 (RFC 8032, pure EdDSA)
    /// signature of `message` under `public_key`. An implementation must
    /// reject non-canonical `S` values (`S >= L`) so a signature cannot be
    /// altered into another valid one.
    fn ed25519_verify(&self, public_key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool;
}

/// An Ed25519 signing key (the authority's).
pub trait Signer {
    /// The 32-byte Ed25519 public key.
    fn public_key(&self) -> [u8; 32];

    /// Signs `message` (pure Ed25519).
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], Error>;
}

/// Domain tag of a lineage record hash.
pub const DOMAIN_RECORD: &[u8] = b"mctc/v1/lineage-record";
/// Domain tag of checkpoint qualifying data.
pub const DOMAIN_CHECKPOINT: &[u8] = b"mctc/v1/checkpoint";
/// Domain tag of the enrollment proof.
pub const DOMAIN_ENROLL_PROOF: &[u8] = b"mctc/v1/enroll-proof";
/// Domain tag of an authority key id.
pub const DOMAIN_KEY_ID: &[u8] = b"mctc/v1/key-id";
/// Domain tag of a nonce hash (what lineage records instead of the nonce).
pub const DOMAIN_NONCE: &[u8] = b"mctc/v1/nonce";

/// Most fields one [`tagged_hash`] takes.
pub const MAX_HASH_FIELDS: usize = 4;

/// `SHA-256(domain || 0x00 || len(f1) || f1 || … || len(fn) || fn)` with each
/// `len` the field's byte length as a big-endian u64. The tag keeps hashes
/// of different purposes apart; the lengths keep field boundaries
/// unambiguous. Fields beyond [`MAX_HASH_FIELDS`] are a compile-time error.
pub fn tagged_hash<const N: usize>(
    crypto: &dyn Crypto,
    domain: &[u8],
    fields: [&[u8]; N],
) -> [u8; 32] {
    const { assert!(N <= MAX_HASH_FIELDS, "too many fields for tagged_hash") };
    let mut lens = [[0u8; 8]; MAX_HASH_FIELDS];
    for (len, field) in lens.iter_mut().zip(fields.iter()) {
        *len = (field.len() as u64).to_be_bytes();
    }
    // Unused slots stay empty and add nothing to the hash.
    let mut parts: [&[u8]; 2 + 2 * MAX_HASH_FIELDS] = [&[]; 2 + 2 * MAX_HASH_FIELDS];
    let pairs = lens
        .iter()
        .zip(fields.iter())
        .flat_map(|(len, field)| [len.as_slice(), *field]);
    let head: [&[u8]; 2] = [domain, &[0]];
    for (slot, part) in parts.iter_mut().zip(head.into_iter().chain(pairs)) {
        *slot = part;
    }
    crypto.sha256(&parts)
}

/// What lineage records about a nonce: its tagged hash, so logs and
/// bundles never carry a usable nonce.
pub fn nonce_hash(crypto: &dyn Crypto, nonce: &[u8; 32]) -> [u8; 32] {
    tagged_hash(crypto, DOMAIN_NONCE, [nonce])
}

#[cfg(feature = "ring")]
pub use ring_backend::{RingCrypto, RingSigner};

#[cfg(feature = "ring")]
mod ring_backend {
    use core::fmt;

    use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

    use super::{Crypto, Signer};
    use crate::error::Error;

    /// [`Crypto`] on ring (hosted targets).
    #[derive(Debug, Clone, Copy, Default)]
    pub struct RingCrypto;

    impl Crypto for RingCrypto {
        fn sha256(&self, parts: &[&[u8]]) -> [u8; 32] {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            for part in parts {
                ctx.update(part);
            }
            let mut out = [0u8; 32];
            out.copy_from_slice(ctx.finish().as_ref());
            out
        }

        fn ed25519_verify(
            &self,
            public_key: &[u8; 32],
            message: &[u8],
            signature: &[u8; 64],
        ) -> bool {
            // ring rejects S >= L, as the trait requires.
            UnparsedPublicKey::new(&ED25519, public_key)
                .verify(message, signature)
                .is_ok()
        }
    }

    /// [`Signer`] on a ring Ed25519 key pair (the authority's key).
    pub struct RingSigner {
        pair: Ed25519KeyPair,
    }

    impl RingSigner {
        /// Loads a PKCS#8 v1 or v2 Ed25519 private key (as written by
        /// [`RingSigner::generate_pkcs8`]).
        pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, Error> {
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                .map(|pair| Self { pair })
                .map_err(|_| Error::Signer)
        }

        /// A key pair from a 32-byte seed (tests and deterministic fixtures).
        pub fn from_seed(seed: &[u8; 32]) -> Result<Self, Error> {
            Ed25519KeyPair::from_seed_unchecked(seed)
                .map(|pair| Self { pair })
                .map_err(|_| Error::Signer)
        }

        /// A fresh key from the operating system's random source, as PKCS#8
        /// v2 bytes to store (and load with [`RingSigner::from_pkcs8`]).
        pub fn generate_pkcs8() -> Result<impl AsRef<[u8]>, Error> {
            Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .map_err(|_| Error::Signer)
        }
    }

    impl fmt::Debug for RingSigner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            // Never print key material; the public key identifies it.
            f.debug_struct("RingSigner")
                .field("public_key", &self.pair.public_key())
                .finish()
        }
    }

    impl Signer for RingSigner {
        fn public_key(&self) -> [u8; 32] {
            let mut out = [0u8; 32];
            out.copy_from_slice(self.pair.public_key().as_ref());
            out
        }

        fn sign(&self, message: &[u8]) -> Result<[u8; 64], Error> {
            <[u8; 64]>::try_from(self.pair.sign(message).as_ref()).map_err(|_| Error::Signer)
        }
    }
}

#[cfg(all(test, feature = "ring"))]
mod tests {
    use super::*;

    #[test]
    fn tagged_hash_matches_its_definition() {
        let c = RingCrypto;
        let expected = c.sha256(&[
            b"tag",
            &[0],
            &2u64.to_be_bytes(),
            b"ab",
            &1u64.to_be_bytes(),
            b"c",
        ]);
        assert_eq!(tagged_hash(&c, b"tag", [b"ab", b"c"]), expected);
    }

    #[test]
    fn field_boundaries_and_domains_matter() {
        let c = RingCrypto;
        assert_ne!(
            tagged_hash(&c, b"tag", [b"ab", b"c"]),
            tagged_hash(&c, b"tag", [b"a", b"bc"])
        );
        assert_ne!(
            tagged_hash(&c, b"tag", [b"ab"]),
            tagged_hash(&c, b"tah", [b"ab"])
        );
    }

    #[test]
    fn sha256_known_answer() {
        // FIPS 180-2 "abc".
        let d = RingCrypto.sha256(&[b"a", b"bc"]);
        assert_eq!(
            d[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256(abc) starts ba7816bf"
        );
    }

    #[test]
    fn sign_verify_round_trip_and_tamper() {
        let s = RingSigner::from_seed(&[7; 32]).unwrap();
        let sig = s.sign(b"msg").unwrap();
        assert!(RingCrypto.ed25519_verify(&s.public_key(), b"msg", &sig));
        assert!(!RingCrypto.ed25519_verify(&s.public_key(), b"msh", &sig));
        let pkcs8 = RingSigner::generate_pkcs8().unwrap();
        let g = RingSigner::from_pkcs8(pkcs8.as_ref()).unwrap();
        assert_ne!(g.public_key(), s.public_key());
        assert!(RingSigner::from_pkcs8(b"not a key").is_err());
    }
}

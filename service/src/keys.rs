//! The authority's Ed25519 keys on disk, in standard PEM forms so that
//! operators can inspect them with common tools (`openssl pkey -pubin -in
//! authority.pub -text`):
//!
//! - `authority.key`: PKCS#8 v2 (RFC 5958, with the public key) private key,
//!   PEM `PRIVATE KEY`, mode 0600; read only by the authority.
//! - `authority.pub`: SubjectPublicKeyInfo, PEM `PUBLIC KEY` — what devices,
//!   collectors and offline verifiers are configured with.
//!
//! The fingerprint operators compare is `SHA256:` + hex of SHA-256 over the
//! 32 raw public key bytes.

use std::path::Path;

use ring::signature::{Ed25519KeyPair, KeyPair};
use rustls_pki_types::pem::{PemObject, SectionKind};

use crate::{ServiceError, files};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), followed by the
/// 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

fn pem_error(path: &Path, reason: impl Into<String>) -> ServiceError {
    ServiceError::Pem {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Encodes a public key as PEM SubjectPublicKeyInfo.
pub fn public_key_pem(public: &[u8; 32]) -> String {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(public);
    pem_encode("PUBLIC KEY", &der)
}

/// Reads an Ed25519 public key from a PEM SubjectPublicKeyInfo file.
pub fn read_public_key(path: &Path) -> Result<[u8; 32], ServiceError> {
    let text = std::fs::read(path).map_err(|source| ServiceError::File {
        path: path.display().to_string(),
        source,
    })?;
    parse_public_key(&text).map_err(|reason| pem_error(path, reason))
}

/// Parses PEM SubjectPublicKeyInfo bytes holding an Ed25519 key.
pub fn parse_public_key(pem: &[u8]) -> Result<[u8; 32], String> {
    let (kind, der) = <(SectionKind, Vec<u8>)>::from_pem_slice(pem).map_err(|e| e.to_string())?;
    if kind != SectionKind::PublicKey {
        return Err(format!("expected a PUBLIC KEY block, found {kind:?}"));
    }
    let key = der
        .strip_prefix(&ED25519_SPKI_PREFIX)
        .ok_or("not an Ed25519 SubjectPublicKeyInfo")?;
    key.try_into()
        .map_err(|_| "Ed25519 public key must be 32 bytes".to_owned())
}

/// Reads the signing key (PEM PKCS#8, must not be readable by others).
pub fn read_signing_key(path: &Path) -> Result<Ed25519KeyPair, ServiceError> {
    let text = files::read_secret(path)?;
    let (kind, der) = <(SectionKind, Vec<u8>)>::from_pem_slice(&text)
        .map_err(|e| pem_error(path, e.to_string()))?;
    if kind != SectionKind::PrivateKey {
        return Err(pem_error(path, "expected a PRIVATE KEY (PKCS#8) block"));
    }
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|e| pem_error(path, format!("not an Ed25519 PKCS#8 key: {e}")))
}

/// Generates a key pair and writes `authority.key` (0600) and
/// `authority.pub` into `dir`; refuses to overwrite an existing key.
pub fn generate(dir: &Path) -> Result<[u8; 32], ServiceError> {
    generate_named(dir, "authority")
}

/// Generates a key pair and writes `{stem}.key` (0600) and `{stem}.pub`
/// into `dir` (each role has its own key: `authority`, the collector's
/// `receipt`); refuses to overwrite an existing key.
pub fn generate_named(dir: &Path, stem: &str) -> Result<[u8; 32], ServiceError> {
    let key_path = dir.join(format!("{stem}.key"));
    if key_path.exists() {
        return Err(ServiceError::File {
            path: key_path.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "refusing to overwrite an existing signing key",
            ),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| ServiceError::File {
        path: dir.display().to_string(),
        source,
    })?;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| pem_error(&key_path, "key generation failed"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| pem_error(&key_path, "generated key does not parse"))?;
    let public: [u8; 32] = pair
        .public_key()
        .as_ref()
        .try_into()
        .map_err(|_| pem_error(&key_path, "Ed25519 public key must be 32 bytes"))?;
    files::write_secret(
        &key_path,
        pem_encode("PRIVATE KEY", pkcs8.as_ref()).as_bytes(),
    )?;
    files::write_atomic(
        &dir.join(format!("{stem}.pub")),
        public_key_pem(&public).as_bytes(),
        0o644,
    )?;
    Ok(public)
}

/// `SHA256:` + hex of SHA-256 over the raw public key.
pub fn fingerprint(public: &[u8; 32]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public);
    let mut out = String::from("SHA256:");
    for b in digest.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// PEM armour (RFC 7468) of `der` under `label`.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                let index = ((n >> (18 - 6 * i)) & 0x3f) as usize;
                b64.push(char::from(ALPHABET[index]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_and_sign() {
        let dir = tempfile::tempdir().unwrap();
        let public = generate(dir.path()).unwrap();
        assert_eq!(
            read_public_key(&dir.path().join("authority.pub")).unwrap(),
            public
        );
        let pair = read_signing_key(&dir.path().join("authority.key")).unwrap();
        assert_eq!(pair.public_key().as_ref(), public);
        let sig = pair.sign(b"m");
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
            .verify(b"m", sig.as_ref())
            .unwrap();
        assert!(generate(dir.path()).is_err(), "never overwrites a key");
        assert!(fingerprint(&public).starts_with("SHA256:"));
        assert_eq!(fingerprint(&public).len(), 7 + 64);
    }

    #[test]
    fn openssl_style_spki_parses_and_garbage_does_not() {
        // `openssl genpkey -algorithm ed25519 | openssl pkey -pubout`
        let pem = b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let key = parse_public_key(pem).unwrap();
        assert_eq!(key[0], 0x19);
        assert!(
            parse_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .is_err()
        );
        assert!(parse_public_key(b"not pem").is_err());
        let private = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        assert!(parse_public_key(private).is_err());
    }
}

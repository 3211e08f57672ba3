//! Artifacts signed like the authority's, with every claim chosen by the
//! test: for proving that a device refuses what differs in one property
//! (signing key, expiry, subject, boot, nonce).

use mctc_shim::artifact::{Claims, ScopeEntry};
use mctc_shim::tpm::BootCounters;
use mctc_shim::wire::{Bytes, List, Token, Version};
use mctc_shim::{DeviceId, RingCrypto, RingSigner, Signed};
use ring::rand::SecureRandom;
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;

use crate::fleet::AUTHORITY_ID;

/// The authority's signing key, from the fleet's key directory
/// (`Fleet::dir/keys/authority.key`): what signs like the authority.
pub fn authority_signer(key_file: &std::path::Path) -> Result<RingSigner, String> {
    let der = PrivatePkcs8KeyDer::from_pem_file(key_file)
        .map_err(|e| format!("read {}: {e}", key_file.display()))?;
    RingSigner::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| format!("load {}: {e}", key_file.display()))
}

/// `N` random bytes (for nonces and ids).
pub fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // A failing system RNG leaves zeros: still distinct enough for a test
    // whose nonces are matched by the device itself.
    let _ = ring::rand::SystemRandom::new().fill(&mut out);
    out
}

/// Seconds since the Unix epoch (wall clock).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Everything an artifact claims.
#[derive(Debug, Clone)]
pub struct ArtifactSpec {
    pub sub: String,
    pub nonce: [u8; 32],
    pub boot: BootCounters,
    pub pcr_mask: u32,
    pub pcr_digest: [u8; 32],
    pub iat: u64,
    pub exp: u64,
    pub ttl_ms: u32,
    pub hb_ms: u32,
    pub hb_seq: u64,
    pub epoch: u64,
}

/// Signs an artifact scoped to `unlock`.
pub fn artifact(spec: &ArtifactSpec, signer: &RingSigner) -> Result<Vec<u8>, String> {
    let mut scope = List::new();
    scope
        .push(ScopeEntry {
            op: Token("unlock"),
            max_amount: None,
            currency: None,
            fresh_attestation: false,
        })
        .map_err(|_| "scope full".to_owned())?;
    let claims = Claims {
        iss: Token(AUTHORITY_ID),
        sub: DeviceId::new(&spec.sub).map_err(|e| format!("sub {}: {e}", spec.sub))?,
        exp: spec.exp,
        iat: spec.iat,
        cti: Bytes(random()),
        v: Version::CURRENT,
        ttl_ms: spec.ttl_ms,
        nonce: Bytes(spec.nonce),
        pcr_alg: 0x000b,
        pcr_mask: spec.pcr_mask,
        pcr_digest: Bytes(spec.pcr_digest),
        boot: spec.boot,
        scope,
        next_nonce: Bytes(random()),
        hb_ms: spec.hb_ms,
        hb_seq: spec.hb_seq,
        epoch: spec.epoch,
    };
    let mut buf = [0u8; 2048];
    claims
        .sign(signer, &RingCrypto, &mut buf)
        .map(<[u8]>::to_vec)
        .map_err(|e| format!("sign artifact: {e}"))
}

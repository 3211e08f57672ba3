//! Test fixtures shared by the session core's tests and the executor's:
//! an artifact signed like the authority's.

use mctc_shim::artifact::{Claims, ScopeEntry};
use mctc_shim::tpm::BootCounters;
use mctc_shim::wire::{Bytes, List, Token, Version};
use mctc_shim::{DeviceId, RingCrypto, RingSigner, Signed};

/// An artifact for `device` answering `nonce`, with scope `unlock` and the
/// fresh-attestation `refund`, signed by `signer`.
pub fn artifact(
    signer: &RingSigner,
    device: &DeviceId,
    cti: [u8; 16],
    nonce: [u8; 32],
    next_nonce: [u8; 32],
    ttl_ms: u32,
) -> Vec<u8> {
    let mut scope = List::new();
    for (op, fresh) in [("unlock", false), ("refund", true)] {
        scope
            .push(ScopeEntry {
                op: Token(op),
                max_amount: None,
                currency: None,
                fresh_attestation: fresh,
            })
            .unwrap();
    }
    let claims = Claims {
        iss: Token("fleet-authority"),
        sub: device.clone(),
        exp: 4_000_000_000,
        iat: 1,
        cti: Bytes(cti),
        v: Version::CURRENT,
        ttl_ms,
        nonce: Bytes(nonce),
        pcr_alg: 0x000b,
        pcr_mask: 1,
        pcr_digest: Bytes([0; 32]),
        boot: BootCounters::default(),
        scope,
        next_nonce: Bytes(next_nonce),
        hb_ms: 30_000,
        hb_seq: 0,
        epoch: 0,
    };
    let mut buf = [0u8; 2048];
    claims.sign(signer, &RingCrypto, &mut buf).unwrap().to_vec()
}

//! Fixtures shared by the integration tests: a real ring authority key, and
//! builders for every message with valid defaults.
#![allow(dead_code, reason = "each test file uses a different subset")]

pub mod cbor;

use mctc_shim::artifact::{Claims, Currency, ScopeEntry};
use mctc_shim::cose::{AuthorityKey, Signed};
use mctc_shim::limits::MAX_SIGNED_LEN;
use mctc_shim::messages::{Control, ControlAction, Heartbeat, Refusal, RefusalCode};
use mctc_shim::tpm::{BootCounters, TPM_ALG_SHA256};
use mctc_shim::wire::{Bytes, List, Text, Token, Version};
use mctc_shim::{DeviceId, RingCrypto, RingSigner, Signer, VerifiedArtifact, VerifyContext};

pub const ISSUER: &str = "mctc-authority";
pub const NONCE: [u8; 32] = [0x11; 32];
pub const NEXT_NONCE: [u8; 32] = [0x22; 32];
pub const BOOT: BootCounters = BootCounters {
    reset: 3,
    restart: 1,
};
/// Unix seconds of issue in fixtures.
pub const IAT: u64 = 1_750_000_000;
pub const TTL_MS: u32 = 60_000;
pub const HB_MS: u32 = 30_000;
/// CLOCK_BOOTTIME of receipt in fixtures.
pub const RECEIVED_MS: u64 = 1_000_000;

pub fn device() -> DeviceId {
    DeviceId::new("locker-7").unwrap()
}

pub fn other_device() -> DeviceId {
    DeviceId::new("locker-8").unwrap()
}

pub fn signer() -> RingSigner {
    RingSigner::from_seed(&[42; 32]).unwrap()
}

pub fn rogue_signer() -> RingSigner {
    RingSigner::from_seed(&[43; 32]).unwrap()
}

pub fn keys() -> [AuthorityKey; 1] {
    [AuthorityKey::new(&RingCrypto, signer().public_key())]
}

pub fn scope() -> List<ScopeEntry<'static>, 8> {
    List::from_slice(&[
        ScopeEntry {
            op: Token("capture"),
            max_amount: Some(10_000),
            currency: Currency::new("EUR"),
            fresh_attestation: false,
        },
        ScopeEntry {
            op: Token("unlock"),
            max_amount: None,
            currency: None,
            fresh_attestation: false,
        },
        ScopeEntry {
            op: Token("refund"),
            max_amount: Some(5_000),
            currency: Currency::new("EUR"),
            fresh_attestation: true,
        },
    ])
    .unwrap()
}

pub fn claims() -> Claims<'static> {
    Claims {
        iss: Token(ISSUER),
        sub: device(),
        exp: IAT + 3600,
        iat: IAT,
        cti: Bytes([0xc7; 16]),
        v: Version::CURRENT,
        ttl_ms: TTL_MS,
        nonce: Bytes(NONCE),
        pcr_alg: TPM_ALG_SHA256,
        pcr_mask: 0b1000_0000_0000_0000_1111_1111,
        pcr_digest: Bytes([0xd1; 32]),
        boot: BOOT,
        scope: scope(),
        next_nonce: Bytes(NEXT_NONCE),
        hb_ms: HB_MS,
        hb_seq: 100,
        epoch: 5,
    }
}

/// Signs with the fixture authority key.
pub fn sign<'a, T: Signed<'a>>(msg: &T) -> Vec<u8> {
    sign_with(msg, &signer())
}

pub fn sign_with<'a, T: Signed<'a>>(msg: &T, signer: &dyn Signer) -> Vec<u8> {
    let mut buf = [0u8; MAX_SIGNED_LEN];
    msg.sign(signer, &RingCrypto, &mut buf).unwrap().to_vec()
}

pub fn context<'c>(device: &'c DeviceId, keys: &'c [AuthorityKey]) -> VerifyContext<'c> {
    VerifyContext {
        device,
        issuer: ISSUER,
        keys,
        nonce: &NONCE,
        boot: BOOT,
        received_ms: RECEIVED_MS,
        wall_ms: None,
    }
}

/// A verified artifact with the given claims, received at `received_ms`.
pub fn verified(claims: &Claims<'_>, received_ms: u64) -> VerifiedArtifact {
    let bytes = sign(claims);
    let dev = claims.sub.clone();
    let keys = keys();
    let ctx = VerifyContext {
        received_ms,
        nonce: claims.nonce.as_array(),
        ..context(&dev, &keys)
    };
    mctc_shim::verify_artifact(&bytes, &ctx, &RingCrypto).unwrap()
}

pub fn heartbeat(seq: u64) -> Heartbeat {
    Heartbeat {
        v: Version::CURRENT,
        seq,
        epoch: 5,
        since_epoch: 3,
        iat: IAT,
        hb_ms: HB_MS,
        revoked: List::new(),
    }
}

pub fn control(seq: u64, action: ControlAction) -> Control<'static> {
    Control {
        v: Version::CURRENT,
        sub: device(),
        seq,
        action,
        reason: Text("ticket 4711"),
        iat: IAT,
    }
}

pub fn refusal(reason: RefusalCode, contained: bool) -> Refusal {
    Refusal {
        v: Version::CURRENT,
        sub: device(),
        nonce: Bytes(NONCE),
        reason,
        contained,
        iat: IAT,
        pcrs: None,
    }
}

//! The fixed world every target runs in: one authority, one device, one
//! boot, one outstanding nonce, and genuine messages between them.

use mctc_shim::artifact::{Claims, Currency, ScopeEntry};
use mctc_shim::cose::{AuthorityKey, Signed};
use mctc_shim::gate::{DEFAULT_MAX_FRESH_AGE_MS, Persisted};
use mctc_shim::limits::MAX_SIGNED_LEN;
use mctc_shim::messages::{Control, ControlAction, DeviceStatus, Heartbeat, RegistryRecord};
use mctc_shim::tpm::{BootCounters, TPM_ALG_SHA256};
use mctc_shim::wire::{Bstr, Bytes, List, Text, Token, Version};
use mctc_shim::{
    DeviceId, Gate, GateConfig, RingCrypto, RingSigner, Signer, VerifiedArtifact, VerifyContext,
    verify_artifact,
};

use crate::ak::FixedAk;

/// The authority id artifacts must name.
pub const ISSUER: &str = "mctc-authority-fuzz";
/// The device under test.
pub const DEVICE: &str = "fuzz-dev-1";
/// Another device (wrong subject, unknown to the collector).
pub const OTHER_DEVICE: &str = "fuzz-dev-2";
/// The device's outstanding nonce.
pub const NONCE: [u8; 32] = [0x4e; 32];
/// The nonce genuine artifacts name for the next renewal.
pub const NEXT_NONCE: [u8; 32] = [0x6e; 32];
/// The TPM boot the device is in.
pub const BOOT: BootCounters = BootCounters {
    reset: 4,
    restart: 1,
};
/// CLOCK_BOOTTIME (ms) at which fuzzed artifacts arrive.
pub const RECEIVED_MS: u64 = 5_000_000;
/// Unix seconds of issue of genuine messages.
pub const IAT: u64 = 1_750_000_000;
/// The device's trusted wall clock (Unix ms) when a context has one.
pub const WALL_MS: u64 = (IAT + 5) * 1000;
/// PCRs 0–7 of the SHA-256 bank: what artifacts and quotes cover.
pub const PCR_MASK: u32 = 0xff;
/// The heartbeat seq genuine artifacts carry.
pub const ARTIFACT_HB_SEQ: u64 = 100;
/// The revocation epoch genuine artifacts carry.
pub const ARTIFACT_EPOCH: u64 = 7;

/// The device id.
pub fn device() -> DeviceId {
    DeviceId::new(DEVICE).expect("fixture device id is valid")
}

/// The other device id.
pub fn other_device() -> DeviceId {
    DeviceId::new(OTHER_DEVICE).expect("fixture device id is valid")
}

/// The authority's signing key (fixed, so that seeds made once keep
/// verifying).
pub fn signer() -> RingSigner {
    RingSigner::from_seed(&[0xa7; 32]).expect("fixed Ed25519 seed")
}

/// A key the device does not trust.
pub fn rogue_signer() -> RingSigner {
    RingSigner::from_seed(&[0x5e; 32]).expect("fixed Ed25519 seed")
}

/// The authority keys the device and the collector trust.
pub fn keys() -> Vec<AuthorityKey> {
    vec![AuthorityKey::new(&RingCrypto, signer().public_key())]
}

/// The collector's receipt key (fixed, its own: never the authority's).
pub fn collector_signer() -> RingSigner {
    RingSigner::from_seed(&[0x5a; 32]).expect("fixed Ed25519 seed")
}

/// The collector receipt key devices and auditors trust.
pub fn collector_key() -> mctc_shim::CollectorKey {
    mctc_shim::CollectorKey::new(&RingCrypto, collector_signer().public_key())
}

/// A receipt by [`collector_signer`] for record `seq` of `device`.
pub fn receipt(device: &DeviceId, seq: u64, hash: [u8; 32]) -> Vec<u8> {
    let receipt = mctc_shim::Receipt {
        v: Version::CURRENT,
        device: device.clone(),
        seq,
        hash: Bytes(hash),
        time_ms: 1_750_000_000_000,
        checkpoint: Some(seq),
        anomaly: None,
        at_seq: None,
        log_checkpoint: None,
        inclusion_proof: None,
    };
    let mut buf = [0u8; MAX_SIGNED_LEN];
    receipt
        .sign(&collector_signer(), &RingCrypto, &mut buf)
        .expect("a receipt of a valid device signs")
        .to_vec()
}

/// What the device knows when an artifact arrives; with or without a
/// trusted wall clock.
pub fn context<'c>(
    device: &'c DeviceId,
    keys: &'c [AuthorityKey],
    wall_ms: Option<u64>,
) -> VerifyContext<'c> {
    VerifyContext {
        device,
        issuer: ISSUER,
        keys,
        nonce: &NONCE,
        boot: BOOT,
        received_ms: RECEIVED_MS,
        wall_ms,
    }
}

/// Genuine artifact claims for the device, this boot and this nonce.
pub fn claims() -> Claims<'static> {
    Claims {
        iss: Token(ISSUER),
        sub: device(),
        exp: IAT + 600,
        iat: IAT,
        cti: Bytes([0xc1; 16]),
        v: Version::CURRENT,
        ttl_ms: 60_000,
        nonce: Bytes(NONCE),
        pcr_alg: TPM_ALG_SHA256,
        pcr_mask: PCR_MASK,
        pcr_digest: Bytes([0xd1; 32]),
        boot: BOOT,
        scope: List::from_slice(&[
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
                fresh_attestation: true,
            },
        ])
        .expect("two scope entries fit"),
        next_nonce: Bytes(NEXT_NONCE),
        hb_ms: 30_000,
        hb_seq: ARTIFACT_HB_SEQ,
        epoch: ARTIFACT_EPOCH,
    }
}

/// A genuine heartbeat following the artifact's baseline.
pub fn heartbeat(seq: u64, revoked: &[DeviceId]) -> Heartbeat {
    Heartbeat {
        v: Version::CURRENT,
        seq,
        epoch: ARTIFACT_EPOCH + 1,
        since_epoch: ARTIFACT_EPOCH,
        iat: IAT + 10,
        hb_ms: 30_000,
        revoked: List::from_slice(revoked).expect("few revoked ids"),
    }
}

/// A genuine control message for the device.
pub fn control(seq: u64, action: ControlAction, reason: &'static str) -> Control<'static> {
    Control {
        v: Version::CURRENT,
        sub: device(),
        seq,
        action,
        reason: Text(reason),
        iat: IAT + 20,
    }
}

/// The authority's registry record vouching for `ak` as the device's AK.
pub fn registry<'a>(device: DeviceId, ak: &'a FixedAk, version: u64) -> RegistryRecord<'a> {
    RegistryRecord {
        v: Version::CURRENT,
        sub: device,
        class: Token("locker"),
        ak_public: Bstr(ak.public()),
        ak_name: Bstr(ak.name()),
        ek_sha256: Bytes([0xe5; 32]),
        status: DeviceStatus::Active,
        version,
        iat: IAT,
    }
}

/// Signs `message` with the fixed authority key.
pub fn sign<'a, T: Signed<'a>>(message: &T) -> Vec<u8> {
    sign_with(message, &signer())
}

/// Signs `message` with `signer`.
pub fn sign_with<'a, T: Signed<'a>>(message: &T, signer: &dyn Signer) -> Vec<u8> {
    let mut buf = [0u8; MAX_SIGNED_LEN];
    message
        .sign(signer, &RingCrypto, &mut buf)
        .expect("fixture messages are within their limits")
        .to_vec()
}

/// The genuine artifact, verified as the device would on receipt.
pub fn verified_artifact() -> VerifiedArtifact {
    let bytes = sign(&claims());
    let device = device();
    let keys = keys();
    verify_artifact(&bytes, &context(&device, &keys, None), &RingCrypto)
        .expect("the fixture artifact verifies")
}

/// A fresh gate holding the genuine artifact (Open at [`RECEIVED_MS`]).
pub fn open_gate() -> Gate {
    let mut gate = Gate::new(
        GateConfig {
            device: device(),
            max_fresh_age_ms: DEFAULT_MAX_FRESH_AGE_MS,
        },
        Persisted::default(),
    );
    gate.install(verified_artifact(), gate.generation(), RECEIVED_MS)
        .expect("a verified artifact opens a fresh gate at its receipt");
    gate
}

//! The authorization artifact: a COSE_Sign1 over CWT-style claims (RFC
//! 8392), and its verification on the device into a [`VerifiedArtifact`],
//! the proof token that alone can open the gate.
//!
//! Standard claims use their CWT keys (`iss` 1, `sub` 2, `exp` 4, `iat` 6,
//! `cti` 7); mctc's claims use private-use keys (below -65536), so the
//! payload is a valid CWT claims set.

use core::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::cose::{AuthorityKey, Signed};
use crate::crypto::Crypto;
use crate::error::{ArtifactError, Error, Invalid, MessageKind, Problem};
use crate::id::DeviceId;
use crate::limits::{
    MAX_AUTHORITY_ID_LEN, MAX_HB_MS, MAX_OP_LEN, MAX_SCOPE_ENTRIES, MAX_TTL_MS, MIN_HB_MS,
};
use crate::sealed::{Validate, WireField};
use crate::tpm::{BootCounters, PcrSelection};
use crate::wire::{Bytes, Digest, List, Token, Version, wire_map, wire_message};

/// An ISO 4217 currency code: three upper-case ASCII letters, on the wire a
/// text string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Validates `code` (`EUR`, `USD`, …).
    pub fn new(code: &str) -> Option<Self> {
        let bytes = <[u8; 3]>::try_from(code.as_bytes()).ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_uppercase)
            .then_some(Self(bytes))
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters get in (`new`, `Deserialize`).
        core::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CurrencyVisitor;
        impl Visitor<'_> for CurrencyVisitor {
            type Value = Currency;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ISO 4217 currency code")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Currency, E> {
                Currency::new(v).ok_or_else(|| E::custom("bad currency code"))
            }
        }
        d.deserialize_str(CurrencyVisitor)
    }
}

impl WireField for Currency {}

impl Validate for Currency {
    fn validate(&self, _field: &'static str) -> Result<(), Invalid> {
        Ok(())
    }
}

wire_map! {
    /// One operation the artifact authorizes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ScopeEntry<'a> {
        /// Key `0`: operation name (token, ≤ 32 bytes), compared exactly.
        0 => op: Token<'a, MAX_OP_LEN>,
        /// Key `1`: largest amount per operation, in minor units; absent: the
        /// operation is not amount-limited.
        1 => max_amount: Option<u64>,
        /// Key `2`: the only currency allowed; absent: any.
        2 => currency: Option<Currency>,
        /// Key `3`: each operation needs its own fresh attestation.
        3 => fresh_attestation: bool,
    }
}

wire_map! {
    /// The artifact's claims (the COSE_Sign1 payload).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Claims<'a> {
        /// Key `1`: `iss`: the authority's id (token, ≤ 64 bytes).
        1 => iss: Token<'a, MAX_AUTHORITY_ID_LEN>,
        /// Key `2`: `sub`: the device id.
        2 => sub: DeviceId,
        /// Key `4`: `exp`: Unix seconds after which the artifact is void (checked
        /// when the device's wall clock is trusted).
        4 => exp: u64,
        /// Key `6`: `iat`: Unix seconds of issue (`iat < exp`).
        6 => iat: u64,
        /// Key `7`: `cti`: 16-byte artifact id.
        7 => cti: Bytes<16>,
        /// Key `-65537`: wire version (1).
        -65537 => v: Version,
        /// Key `-65538`: validity in ms on the device's monotonic clock, from
        /// receipt (1 – 86 400 000).
        -65538 => ttl_ms: u32,
        /// Key `-65539`: the nonce of the evidence this answers.
        -65539 => nonce: Bytes<32>,
        /// Key `-65540`: PCR bank of the attested digest: 0x000B (SHA-256).
        -65540 => pcr_alg: u16,
        /// Key `-65541`: PCRs the digest covers, bit `i` = PCR `i`.
        -65541 => pcr_mask: u32,
        /// Key `-65542`: the attested composite PCR digest (SHA-256 over the
        /// selected values in ascending order, as in `TPMS_QUOTE_INFO`).
        -65542 => pcr_digest: Digest,
        /// Key `-65543`: the TPM boot counters of the attested boot.
        -65543 => boot: BootCounters,
        /// Key `-65544`: authorized operations (≤ 8, distinct `op`s).
        -65544 => scope: List<ScopeEntry<'a>, MAX_SCOPE_ENTRIES>,
        /// Key `-65545`: nonce to quote for the next renewal.
        -65545 => next_nonce: Bytes<32>,
        /// Key `-65546`: heartbeat window, ms (1 000 – 3 600 000).
        -65546 => hb_ms: u32,
        /// Key `-65547`: the last heartbeat seq published before issue: older
        /// heartbeats do not count as liveness.
        -65547 => hb_seq: u64,
        /// Key `-65548`: the revocation epoch at issue (the device was not
        /// revoked up to it).
        -65548 => epoch: u64,
    }
    check = check_claims;
}
wire_message!(Claims<'a>, MessageKind::Artifact);
impl<'a> Signed<'a> for Claims<'a> {}

impl Claims<'_> {
    /// The PCR selection the digest covers.
    pub const fn pcr_selection(&self) -> PcrSelection {
        PcrSelection {
            alg: self.pcr_alg,
            mask: self.pcr_mask,
        }
    }
}

fn check_claims(c: &Claims<'_>) -> Result<(), Invalid> {
    c.pcr_selection().validate()?;
    let out_of_range = |field| Invalid {
        field,
        problem: Problem::OutOfRange,
    };
    if !(1..=MAX_TTL_MS).contains(&c.ttl_ms) {
        return Err(out_of_range("ttl_ms"));
    }
    if !(MIN_HB_MS..=MAX_HB_MS).contains(&c.hb_ms) {
        return Err(out_of_range("hb_ms"));
    }
    if c.exp <= c.iat {
        return Err(Invalid {
            field: "exp",
            problem: Problem::Inconsistent,
        });
    }
    let mut rest = c.scope.as_slice();
    while let Some((entry, tail)) = rest.split_first() {
        if tail.iter().any(|other| other.op == entry.op) {
            return Err(Invalid {
                field: "scope",
                problem: Problem::Inconsistent,
            });
        }
        rest = tail;
    }
    Ok(())
}

/// What the device knows when an artifact arrives.
#[derive(Debug, Clone, Copy)]
pub struct VerifyContext<'c> {
    /// This device.
    pub device: &'c DeviceId,
    /// The authority id `iss` must name.
    pub issuer: &'c str,
    /// Authority keys the device trusts.
    pub keys: &'c [AuthorityKey],
    /// The nonce the device quoted last (for renewals: the previous
    /// artifact's `next_nonce`; for fresh operations: the fresh nonce).
    pub nonce: &'c [u8; 32],
    /// The TPM's boot counters now.
    pub boot: BootCounters,
    /// CLOCK_BOOTTIME in ms when the bytes arrived.
    pub received_ms: u64,
    /// Unix time in ms when the bytes arrived, only if the device's wall
    /// clock is trusted (e.g. NTS-synchronised); then `exp` also bounds the
    /// deadline.
    pub wall_ms: Option<u64>,
}

/// One authorized operation of a verified artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    op: heapless::String<MAX_OP_LEN>,
    max_amount: Option<u64>,
    currency: Option<Currency>,
    fresh_attestation: bool,
}

impl Scope {
    /// The operation name.
    pub fn op(&self) -> &str {
        &self.op
    }

    /// The per-operation amount limit, if any.
    pub const fn max_amount(&self) -> Option<u64> {
        self.max_amount
    }

    /// The only allowed currency, if restricted.
    pub const fn currency(&self) -> Option<Currency> {
        self.currency
    }

    /// Whether each operation needs a fresh attestation.
    pub const fn fresh_attestation(&self) -> bool {
        self.fresh_attestation
    }
}

/// An artifact that passed every check for this device, this boot and this
/// nonce: the only way to open the gate. Only [`verify_artifact`] makes
/// one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedArtifact {
    sub: DeviceId,
    cti: [u8; 16],
    iat: u64,
    exp: u64,
    nonce: [u8; 32],
    pcr: PcrSelection,
    pcr_digest: [u8; 32],
    boot: BootCounters,
    scope: heapless::Vec<Scope, MAX_SCOPE_ENTRIES>,
    next_nonce: [u8; 32],
    hb_ms: u32,
    hb_seq: u64,
    epoch: u64,
    received_ms: u64,
    deadline_ms: u64,
}

impl VerifiedArtifact {
    /// The device it is for.
    pub const fn sub(&self) -> &DeviceId {
        &self.sub
    }
    /// The artifact id.
    pub const fn cti(&self) -> &[u8; 16] {
        &self.cti
    }
    /// Issue time, Unix seconds.
    pub const fn iat(&self) -> u64 {
        self.iat
    }
    /// Expiry, Unix seconds.
    pub const fn exp(&self) -> u64 {
        self.exp
    }
    /// The nonce it answered.
    pub const fn nonce(&self) -> &[u8; 32] {
        &self.nonce
    }
    /// The PCR selection the digest covers: re-read exactly these for the
    /// drift check.
    pub const fn pcr_selection(&self) -> PcrSelection {
        self.pcr
    }
    /// The attested composite PCR digest.
    pub const fn pcr_digest(&self) -> &[u8; 32] {
        &self.pcr_digest
    }
    /// The attested boot counters.
    pub const fn boot(&self) -> BootCounters {
        self.boot
    }
    /// The authorized operations.
    pub fn scope(&self) -> &[Scope] {
        &self.scope
    }
    /// The nonce to quote for the next renewal.
    pub const fn next_nonce(&self) -> &[u8; 32] {
        &self.next_nonce
    }
    /// The heartbeat window, ms.
    pub const fn hb_ms(&self) -> u32 {
        self.hb_ms
    }
    /// The heartbeat seq at issue.
    pub const fn hb_seq(&self) -> u64 {
        self.hb_seq
    }
    /// The revocation epoch at issue.
    pub const fn epoch(&self) -> u64 {
        self.epoch
    }
    /// CLOCK_BOOTTIME ms of receipt.
    pub const fn received_ms(&self) -> u64 {
        self.received_ms
    }
    /// CLOCK_BOOTTIME ms from which the artifact no longer authorizes
    /// anything: `received + ttl_ms`, or earlier when a trusted wall clock
    /// puts `exp` first.
    pub const fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// The scope entry for `op`, if the artifact authorizes it.
    pub fn scope_for(&self, op: &str) -> Option<&Scope> {
        self.scope.iter().find(|s| s.op() == op)
    }
}

/// Verifies an artifact as received, in this order: size, envelope
/// (structure, EdDSA, trusted key, signature, content type), claims
/// (structure, limits, canonical form), issuer, subject, boot, nonce,
/// expiry. Every rejection is a typed [`Error`]; nothing panics or
/// allocates.
pub fn verify_artifact(
    bytes: &[u8],
    ctx: &VerifyContext<'_>,
    crypto: &dyn Crypto,
) -> Result<VerifiedArtifact, Error> {
    let claims = Claims::open(bytes, ctx.keys, crypto)?;
    if claims.iss.0 != ctx.issuer {
        return Err(ArtifactError::WrongIssuer.into());
    }
    if claims.sub != *ctx.device {
        return Err(Error::WrongSubject {
            kind: MessageKind::Artifact,
        });
    }
    if claims.boot != ctx.boot {
        return Err(ArtifactError::WrongBoot.into());
    }
    if claims.nonce.0 != *ctx.nonce {
        return Err(ArtifactError::NonceMismatch.into());
    }
    let mut deadline_ms = ctx.received_ms.saturating_add(u64::from(claims.ttl_ms));
    if let Some(wall_ms) = ctx.wall_ms {
        let remaining = claims
            .exp
            .saturating_mul(1000)
            .checked_sub(wall_ms)
            .filter(|r| *r > 0)
            .ok_or(ArtifactError::Expired)?;
        deadline_ms = deadline_ms.min(ctx.received_ms.saturating_add(remaining));
    }

    let mut scope = heapless::Vec::new();
    for entry in claims.scope.iter() {
        let op = heapless::String::try_from(entry.op.0).map_err(|_| Error::Invalid {
            kind: MessageKind::Artifact,
            invalid: Invalid {
                field: "op",
                problem: Problem::TooLong { max: MAX_OP_LEN },
            },
        })?;
        scope
            .push(Scope {
                op,
                max_amount: entry.max_amount,
                currency: entry.currency,
                fresh_attestation: entry.fresh_attestation,
            })
            .map_err(|_| Error::Invalid {
                kind: MessageKind::Artifact,
                invalid: Invalid {
                    field: "scope",
                    problem: Problem::TooMany {
                        max: MAX_SCOPE_ENTRIES,
                    },
                },
            })?;
    }

    let pcr = claims.pcr_selection();
    Ok(VerifiedArtifact {
        sub: claims.sub,
        cti: claims.cti.0,
        iat: claims.iat,
        exp: claims.exp,
        nonce: claims.nonce.0,
        pcr,
        pcr_digest: claims.pcr_digest.0,
        boot: claims.boot,
        scope,
        next_nonce: claims.next_nonce.0,
        hb_ms: claims.hb_ms,
        hb_seq: claims.hb_seq,
        epoch: claims.epoch,
        received_ms: ctx.received_ms,
        deadline_ms,
    })
}

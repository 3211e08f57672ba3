//! The authority's shared model: what a device record, a decision and a
//! learned reference digest are, and the grammar of names and digests in
//! its files. Every other module depends on this one and it on none of
//! them, so the decision ([`crate::verdict`]), the state
//! ([`crate::store`]) and the two files ([`crate::config`],
//! [`crate::policy`]) no longer import each other.

use std::fmt;

use mctc_attest::ClockInfo;
use mctc_shim::DeviceId;
use mctc_shim::api::PcrStatus;
use mctc_shim::messages::{DeviceStatus, NoncePurpose, PcrFinding, RefusalCode};

/// Parses a 64-digit hex SHA-256.
pub fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text.trim()).ok()?;
    <[u8; 32]>::try_from(bytes.as_slice()).ok()
}

/// A reference digest learned into the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedDigest {
    /// The PCR.
    pub pcr: u8,
    /// The allowed value.
    pub digest: [u8; 32],
    /// The device it was learned from.
    pub from: String,
    /// When (Unix ms).
    pub at_ms: u64,
}

/// What a class accepts beyond its policy file: the learned digests and
/// its staged rollout, if any. The decision of a device uses
/// [`ClassBaseline::for_device`] (`crate::policy`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClassBaseline {
    /// The learned digests of the class.
    pub learned: Vec<LearnedDigest>,
    /// Its latest staged rollout (any state: `policy show` shows an ended
    /// one; only an [`StageState::Active`] one changes a verdict).
    pub stage: Option<Stage>,
}

/// A staged rollout of a new accepted value set to a share of a class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Its id (increasing over every class).
    pub id: i64,
    /// The class.
    pub class: String,
    /// The device the values were taken from.
    pub from: String,
    /// The staged values, (PCR, value), ascending PCR.
    pub values: Vec<(u8, [u8; 32])>,
    /// Percent of the class (by device-id hash bucket) that accepts them.
    pub share: u8,
    /// Stop after this many refusals of staged devices' verified evidence.
    pub stop_after: u32,
    /// Refusals of staged devices' verified evidence so far.
    pub failures: u32,
    /// Where the rollout is.
    pub state: StageState,
    /// Started (Unix ms).
    pub started_ms: u64,
    /// Ended (Unix ms).
    pub ended_ms: Option<u64>,
    /// Why it ended.
    pub end_reason: Option<String>,
}

/// Where a staged rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageState {
    /// Staged devices accept the values.
    Active,
    /// Stopped automatically: too many refusals in the staged share.
    Stopped,
    /// Promoted to the whole class: the values are learned.
    Promoted,
    /// Rolled back by the operator.
    RolledBack,
}

impl StageState {
    /// Every state, for name lookups.
    pub const ALL: [StageState; 4] = [
        StageState::Active,
        StageState::Stopped,
        StageState::Promoted,
        StageState::RolledBack,
    ];

    /// Stable name (the database, JSON).
    pub const fn name(self) -> &'static str {
        match self {
            StageState::Active => "active",
            StageState::Stopped => "stopped",
            StageState::Promoted => "promoted",
            StageState::RolledBack => "rolled-back",
        }
    }

    /// The state named `name`.
    pub fn from_name(name: &str) -> Option<StageState> {
        StageState::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// How `policy learn` changes a class's learned digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LearnMode {
    /// The values are accepted besides the ones accepted already.
    Add,
    /// The values replace the learned digests of their PCRs.
    Replace,
}

/// Which learned digests `policy forget` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forget {
    /// One digest of one PCR.
    Digest {
        /// The PCR.
        pcr: u8,
        /// The digest.
        digest: [u8; 32],
    },
    /// Every digest learned from this device.
    LearnedFrom(String),
}

impl Forget {
    /// Whether `l` is one of the digests to remove.
    pub fn matches(&self, l: &LearnedDigest) -> bool {
        match self {
            Forget::Digest { pcr, digest } => l.pcr == *pcr && l.digest == *digest,
            Forget::LearnedFrom(from) => l.from == *from,
        }
    }
}

/// The enrolled TPM identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    /// EK `TPM2B_PUBLIC`.
    pub ek_public: Vec<u8>,
    /// Its SHA-256: pinned from now on.
    pub ek_sha256: [u8; 32],
    /// AK `TPM2B_PUBLIC`.
    pub ak_public: Vec<u8>,
    /// AK name.
    pub ak_name: Vec<u8>,
    /// When (Unix ms).
    pub at_ms: u64,
}

/// Last verified PCR values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSnapshot {
    /// The PCRs (bit i = PCR i).
    pub mask: u32,
    /// Values, ascending PCR order.
    pub values: Vec<[u8; 32]>,
}

/// The outcome of the last attestation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An artifact was issued.
    Affirmed,
    /// A refusal was sent.
    Refused,
}

/// Everything the authority knows about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The id.
    pub id: DeviceId,
    /// Its class.
    pub class: String,
    /// Standing.
    pub status: DeviceStatus,
    /// Why it is contained or revoked.
    pub reason: Option<String>,
    /// EK hash pinned at registration.
    pub pinned_ek_sha256: Option<[u8; 32]>,
    /// Set once enrolled.
    pub enrolled: Option<Enrolled>,
    /// Registered (Unix ms).
    pub added_ms: u64,
    /// Last control seq sent.
    pub control_seq: u64,
    /// Last registry record version.
    pub registry_version: u64,
    /// Clock info of the last verified quote (rollback detection).
    pub last_clock: Option<ClockInfo>,
    /// PCR values of the last verified quote.
    pub last_pcrs: Option<PcrSnapshot>,
    /// When the last quote verified (Unix ms).
    pub verified_ms: Option<u64>,
    /// When the last evidence was decided (Unix ms).
    pub attempt_ms: Option<u64>,
    /// Its verdict.
    pub verdict: Option<Verdict>,
    /// The refusal, if refused.
    pub refusal: Option<Refusal>,
    /// What the refusal was about, if refused (absent in rows written
    /// before it was stored).
    pub refusal_detail: Option<RefusalDetail>,
    /// Artifacts issued so far.
    pub artifacts_issued: u64,
}

#[cfg(test)]
impl DeviceRecord {
    /// A registered, active device that has never enrolled or attested:
    /// what the unit tests start from (`..DeviceRecord::fresh(id, class)`).
    pub(crate) fn fresh(id: &str, class: &str) -> DeviceRecord {
        DeviceRecord {
            id: DeviceId::new(id).expect("a valid test device id"),
            class: class.into(),
            status: DeviceStatus::Active,
            reason: None,
            pinned_ek_sha256: None,
            enrolled: None,
            added_ms: 0,
            control_seq: 0,
            registry_version: 0,
            last_clock: None,
            last_pcrs: None,
            verified_ms: None,
            attempt_ms: None,
            verdict: None,
            refusal: None,
            refusal_detail: None,
            artifacts_issued: 0,
        }
    }
}

/// What a refusal was about, as stored for `devices show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalDetail {
    /// The check that failed, in words (no nonces, no keys).
    pub words: String,
    /// The PCRs the refusal named (what the device was told).
    pub pcrs: Vec<PcrStatus>,
    /// Since when the device's evidence has been refused (Unix ms): the
    /// first refusal after an affirmation.
    pub since_ms: u64,
}

/// Why evidence was not affirmed: the wire's [`RefusalCode`] plus
/// `NoBaseline`, which the authority tells apart in its logs and records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The quote, its signature or the PCR values do not verify.
    BadEvidence,
    /// The nonce is unknown, expired, used, or another device's.
    StaleNonce,
    /// The PCR values differ from the class's reference (drift), or the
    /// class is not in the policy.
    PolicyMismatch,
    /// Some policy PCR has no reference value yet (`policy learn`).
    NoBaseline,
    /// No enrolled AK, or the quote is not by the enrolled AK.
    NotEnrolled,
    /// The device is revoked.
    Revoked,
    /// The device is contained.
    Contained,
    /// TPM counters or clock went back.
    BootAnomaly,
    /// The authority failed.
    Internal,
}

impl Refusal {
    /// Every refusal, for name lookups.
    pub const ALL: [Refusal; 9] = [
        Refusal::BadEvidence,
        Refusal::StaleNonce,
        Refusal::PolicyMismatch,
        Refusal::NoBaseline,
        Refusal::NotEnrolled,
        Refusal::Revoked,
        Refusal::Contained,
        Refusal::BootAnomaly,
        Refusal::Internal,
    ];

    /// The code on the wire.
    pub const fn code(self) -> RefusalCode {
        match self {
            Refusal::BadEvidence => RefusalCode::BadEvidence,
            Refusal::StaleNonce => RefusalCode::StaleNonce,
            Refusal::PolicyMismatch | Refusal::NoBaseline => RefusalCode::PolicyMismatch,
            Refusal::NotEnrolled => RefusalCode::NotEnrolled,
            Refusal::Revoked => RefusalCode::Revoked,
            Refusal::Contained => RefusalCode::Contained,
            Refusal::BootAnomaly => RefusalCode::BootAnomaly,
            Refusal::Internal => RefusalCode::Internal,
        }
    }

    /// Stable name (logs, JSON, the database): the wire code's name from
    /// the shim's table, except for the one refusal the wire folds into
    /// another code.
    pub const fn name(self) -> &'static str {
        match self {
            Refusal::NoBaseline => "no-baseline",
            other => other.code().name(),
        }
    }

    /// The refusal named `name`.
    pub fn from_name(name: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the evidence's nonce was outstanding for this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Issued to this device, unexpired, now consumed.
    Valid(NoncePurpose),
    /// Unknown, expired, already used or another device's.
    Invalid,
}

/// What a verified quote proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedFacts {
    /// The signed TPM clock and boot counters.
    pub clock: ClockInfo,
    /// What to remember as the last verified clock: this quote's, unless a
    /// later one of the same boot was verified already (quotes decided out
    /// of order never move the high-water mark back).
    pub high_water: ClockInfo,
    /// The quoted PCRs (bit i = PCR i).
    pub mask: u32,
    /// Their values, ascending PCR order.
    pub values: Vec<[u8; 32]>,
    /// The signed composite digest.
    pub digest: [u8; 32],
}

impl VerifiedFacts {
    /// (PCR, value) pairs.
    pub fn pairs(&self) -> Vec<(u8, [u8; 32])> {
        indices(self.mask)
            .zip(self.values.iter().copied())
            .collect()
    }
}

/// The PCR indices of a mask, ascending.
pub fn indices(mask: u32) -> impl Iterator<Item = u8> {
    (0..24u8).filter(move |i| mask & (1 << i) != 0)
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Issue an artifact.
    Affirm {
        /// What the quote proved.
        facts: VerifiedFacts,
    },
    /// Send a signed refusal.
    Refuse {
        /// Why.
        refusal: Refusal,
        /// For the log: which check, in words (no nonces, no keys).
        detail: String,
        /// Set when the quote verified (stored for rollback detection and
        /// `policy learn`).
        facts: Option<VerifiedFacts>,
        /// Contain the device, with this reason (≤ 64 bytes).
        contain: Option<String>,
        /// The PCRs the refusal is about (told to the device, at most
        /// `MAX_REFUSAL_PCRS`).
        pcrs: Vec<PcrFinding>,
    },
}

impl Decision {
    pub(crate) fn refuse(refusal: Refusal, detail: impl Into<String>) -> Decision {
        Decision::Refuse {
            refusal,
            detail: detail.into(),
            facts: None,
            contain: None,
            pcrs: Vec::new(),
        }
    }
}

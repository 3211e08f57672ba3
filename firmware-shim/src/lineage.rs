//! Lineage: the device's hash-chained record of everything it decided, and
//! the verifier that walks a chain and reports the first break.
//!
//! A record is a CBOR map (keys 0–8, below); its hash is
//! `tagged_hash("mctc/v1/lineage-record", encoding)`, and the next record
//! carries that hash as `prev` (32 zero bytes for seq 0). A checkpoint
//! record at seq `n` commits to record `n - 1`: its `seq` is `n - 1`, its
//! `head` is that record's hash, and its TPM quote's qualifying data is
//! [`checkpoint_qualifying_data`] over them, which binds the head to the
//! platform state and the TPM clock.

use core::fmt;
use core::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::artifact::Currency;
use crate::crypto::{Crypto, DOMAIN_CHECKPOINT, DOMAIN_RECORD, tagged_hash};
use crate::error::{Error, Invalid, MessageKind};
use crate::id::DeviceId;
use crate::limits::{
    MAX_AK_NAME_LEN, MAX_ATTEST_LEN, MAX_DRIFT_DETAIL_LEN, MAX_OP_LEN, MAX_REASON_LEN, MAX_REF_LEN,
    MAX_SW_VERSION_LEN, MAX_TPM_SIGNATURE_LEN,
};
use crate::messages::{ControlAction, LineageBatch, RefusalCode};
use crate::sealed::{Validate, WireField};
use crate::tpm::BootCounters;
use crate::wire::{Bstr, Bytes, Digest, Message, Text, Token, Version, wire_code, wire_map};

/// `prev` of the record with seq 0.
pub const GENESIS_PREV: [u8; 32] = [0; 32];

/// The hash of an encoded record: `tagged_hash("mctc/v1/lineage-record",
/// bytes)`. Hash the exact bytes that are stored and sent.
pub fn record_hash(crypto: &dyn Crypto, encoded: &[u8]) -> [u8; 32] {
    tagged_hash(crypto, DOMAIN_RECORD, [encoded])
}

/// The qualifying data of a checkpoint quote: `tagged_hash(
/// "mctc/v1/checkpoint", device id, seq as 8 big-endian bytes, head)`. The
/// agent passes it to `TPM2_Quote`; a verifier recomputes it and compares
/// it with `extraData` of the quoted `TPMS_ATTEST`.
pub fn checkpoint_qualifying_data(
    crypto: &dyn Crypto,
    device: &DeviceId,
    seq: u64,
    head: &[u8; 32],
) -> [u8; 32] {
    tagged_hash(
        crypto,
        DOMAIN_CHECKPOINT,
        [device.as_str().as_bytes(), &seq.to_be_bytes(), head],
    )
}

wire_code! {
    /// How an attestation attempt ended.
    pub enum AttestVerdict: u8 {
        /// Affirmed: an artifact arrived and verified.
        Affirmed = 1 => "affirmed",
        /// The authority refused the evidence.
        Refused = 2 => "refused",
        /// No valid answer in time.
        NoAnswer = 3 => "no-answer",
        /// The answer did not verify on the device.
        Rejected = 4 => "rejected",
    }
}

wire_code! {
    /// Why the gate closed (lineage code of [`crate::gate::CloseReason`]).
    pub enum CloseCode: u8 {
        /// The agent started (the gate starts closed).
        Startup = 1 => "startup",
        /// The artifact's deadline passed.
        ArtifactExpired = 2 => "artifact-expired",
        /// No valid heartbeat within the window.
        HeartbeatLapsed = 3 => "heartbeat-lapsed",
        /// Platform drift was reported.
        Drift = 4 => "drift",
        /// The authority refused evidence (without containing).
        Refused = 5 => "refused",
        /// Containment was lifted; re-attestation reopens.
        Restored = 6 => "restored",
        /// A heartbeat showed the device may have missed a revocation.
        RevocationGap = 7 => "revocation-gap",
        /// Lineage could not be persisted.
        LineageUnavailable = 8 => "lineage-unavailable",
        /// The agent is stopping.
        Shutdown = 9 => "shutdown",
        /// The monotonic clock went backwards.
        ClockRegression = 10 => "clock-regression",
        /// Attestation failed on the device side.
        AttestationFailed = 11 => "attestation-failed",
    }
}

wire_code! {
    /// Who contained or revoked the device.
    pub enum Source: u8 {
        /// A signed control message.
        Control = 1 => "control",
        /// A signed refusal.
        Refusal = 2 => "refusal",
        /// A signed heartbeat's revocation list.
        Heartbeat = 3 => "heartbeat",
        /// Persisted state at start (revocation survives restarts).
        Persisted = 4 => "persisted",
    }
}

wire_code! {
    /// A decision's verdict.
    pub enum VerdictCode: u8 {
        /// Permitted.
        Permit = 1 => "permit",
        /// Denied (see the deny code).
        Deny = 2 => "deny",
        /// Needs a fresh attestation first.
        NeedsFreshAttestation = 3 => "needs-fresh-attestation",
    }
}

wire_code! {
    /// Why a decision was denied ([`crate::gate::Verdict::Deny`] carries
    /// it).
    pub enum DenyCode: u8 {
        /// The gate is closed.
        Closed = 1 => "closed",
        /// The device is contained.
        Contained = 2 => "contained",
        /// The device is revoked.
        Revoked = 3 => "revoked",
        /// The artifact does not authorize the operation.
        OutOfScope = 4 => "out-of-scope",
        /// The amount exceeds the scope's limit.
        OverLimit = 5 => "over-limit",
        /// The scope limits amounts but the request gave none.
        AmountRequired = 6 => "amount-required",
        /// The currency is not the scope's.
        CurrencyMismatch = 7 => "currency-mismatch",
        /// The fresh attestation is too old, expired or does not cover the
        /// operation.
        FreshAttestationInvalid = 8 => "fresh-attestation-invalid",
    }
}

wire_code! {
    /// What drifted.
    pub enum DriftKind: u8 {
        /// A PCR digest differs from the artifact's.
        Pcr = 1 => "drift-pcr",
        /// TPM reset or restart counters changed.
        Boot = 2 => "drift-boot",
        /// A measured file changed.
        File = 3 => "drift-file",
        /// The TPM clock or the monotonic clock behaved unsafely.
        Clock = 4 => "drift-clock",
    }
}

wire_map! {
    /// Body of [`RecordKind::AgentStart`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct AgentStart<'a> {
        /// Key `0`: agent software version (token, ≤ 32 bytes).
        0 => sw_version: Token<'a, MAX_SW_VERSION_LEN>,
    }
}

wire_map! {
    /// Body of [`RecordKind::AgentStop`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct AgentStop<'a> {
        /// Key `0`: why (≤ 64 bytes UTF-8).
        0 => reason: Text<'a, MAX_REASON_LEN>,
    }
}

wire_map! {
    /// Body of [`RecordKind::Enrolled`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Enrolled<'a> {
        /// Key `0`: the enrolled AK's TPM name.
        0 => ak_name: Bstr<'a, MAX_AK_NAME_LEN>,
        /// Key `1`: SHA-256 of the EK's marshalled `TPM2B_PUBLIC`.
        1 => ek_sha256: Digest,
    }
}

wire_map! {
    /// Body of [`RecordKind::Attested`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Attested {
        /// Key `0`: [`crate::crypto::nonce_hash`] of the quoted nonce.
        0 => nonce_hash: Digest,
        /// Key `1`: how it ended.
        1 => verdict: AttestVerdict,
        /// Key `2`: the refusal's code, when refused.
        2 => refusal: Option<RefusalCode>,
        /// Key `3`: the artifact id, when affirmed.
        3 => cti: Option<Bytes<16>>,
    }
}

wire_map! {
    /// Body of [`RecordKind::ArtifactInstalled`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ArtifactInstalled {
        /// Key `0`: the artifact id.
        0 => cti: Bytes<16>,
        /// Key `1`: its deadline, CLOCK_BOOTTIME ms.
        1 => deadline_ms: u64,
        /// Key `2`: its `exp`, Unix seconds.
        2 => exp: u64,
    }
}

wire_map! {
    /// Body of [`RecordKind::GateOpened`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct GateOpened {
        /// Key `0`: the artifact that opened it.
        0 => cti: Bytes<16>,
        /// Key `1`: its deadline, CLOCK_BOOTTIME ms.
        1 => deadline_ms: u64,
    }
}

wire_map! {
    /// Body of [`RecordKind::GateClosed`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct GateClosed {
        /// Key `0`: why.
        0 => reason: CloseCode,
        /// Key `1`: detail: the drift kind or refusal code, when there is one.
        1 => detail: Option<u16>,
    }
}

wire_map! {
    /// Body of [`RecordKind::GateContained`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct GateContained<'a> {
        /// Key `0`: who contained it (control or refusal).
        0 => source: Source,
        /// Key `1`: the control message's seq, when by control.
        1 => control_seq: Option<u64>,
        /// Key `2`: the refusal's code, when by refusal.
        2 => refusal: Option<RefusalCode>,
        /// Key `3`: the operator's reason (empty when by refusal).
        3 => reason: Text<'a, MAX_REASON_LEN>,
    }
}

wire_map! {
    /// Body of [`RecordKind::GateRestored`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct GateRestored {
        /// Key `0`: the restoring control message's seq.
        0 => control_seq: u64,
    }
}

wire_map! {
    /// Body of [`RecordKind::GateRevoked`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct GateRevoked<'a> {
        /// Key `0`: who revoked it.
        0 => source: Source,
        /// Key `1`: the control or heartbeat seq, when by one of them.
        1 => seq: Option<u64>,
        /// Key `2`: the operator's reason (empty when none was given).
        2 => reason: Text<'a, MAX_REASON_LEN>,
    }
}

wire_map! {
    /// Body of [`RecordKind::Decision`]: one answer of the gate, written
    /// before the answer is given.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Decision<'a> {
        /// Key `0`: the operation asked for.
        0 => op: Token<'a, MAX_OP_LEN>,
        /// Key `1`: its amount in minor units, if any.
        1 => amount: Option<u64>,
        /// Key `2`: its currency, if any.
        2 => currency: Option<Currency>,
        /// Key `3`: the caller's reference (≤ 64 bytes UTF-8), if any.
        3 => reference: Option<Text<'a, MAX_REF_LEN>>,
        /// Key `4`: the verdict.
        4 => verdict: VerdictCode,
        /// Key `5`: why denied, when denied.
        5 => deny: Option<DenyCode>,
        /// Key `6`: the artifact it was decided under, when the gate was open.
        6 => cti: Option<Bytes<16>>,
    }
}

wire_map! {
    /// Body of [`RecordKind::Drift`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Drift<'a> {
        /// Key `0`: what drifted.
        0 => what: DriftKind,
        /// Key `1`: detail: PCR indices, a path (≤ 128 bytes UTF-8).
        1 => detail: Text<'a, MAX_DRIFT_DETAIL_LEN>,
    }
}

wire_map! {
    /// Body of [`RecordKind::HeartbeatLapse`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct HeartbeatLapse {
        /// Key `0`: the last heartbeat seq heard, if any.
        0 => last_seq: Option<u64>,
        /// Key `1`: the window that lapsed, ms.
        1 => window_ms: u32,
    }
}

wire_map! {
    /// Body of [`RecordKind::ControlReceived`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ControlReceived {
        /// Key `0`: the control message's seq.
        0 => seq: u64,
        /// Key `1`: its action.
        1 => action: ControlAction,
    }
}

wire_map! {
    /// Body of [`RecordKind::Checkpoint`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Checkpoint<'a> {
        /// Key `0`: the seq committed to (this record's seq − 1).
        0 => seq: u64,
        /// Key `1`: that record's hash.
        1 => head: Digest,
        /// Key `2`: raw `TPMS_ATTEST` of the quote (≤ 1024 bytes).
        2 => attest: Bstr<'a, MAX_ATTEST_LEN>,
        /// Key `3`: marshalled `TPMT_SIGNATURE` by the AK (≤ 512 bytes).
        3 => signature: Bstr<'a, MAX_TPM_SIGNATURE_LEN>,
    }
}

macro_rules! record_bodies {
    ($( $(#[$doc:meta])* $variant:ident ( $ty:ty ) = $code:literal => $text:literal ),+ $(,)?) => {
        wire_code! {
            /// The kind of a record: selects the shape of its body.
            pub enum RecordKind: u8 {
                $( $(#[$doc])* $variant = $code => $text, )+
            }
        }

        /// A record's body, one variant per [`RecordKind`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Body<'a> {
            $( $(#[$doc])* $variant($ty), )+
        }

        impl Body<'_> {
            /// The body's kind.
            pub const fn kind(&self) -> RecordKind {
                match self {
                    $( Self::$variant(_) => RecordKind::$variant, )+
                }
            }
        }

        impl Serialize for Body<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $( Self::$variant(body) => body.serialize(s), )+
                }
            }
        }

        impl Validate for Body<'_> {
            fn validate(&self, field: &'static str) -> Result<(), Invalid> {
                match self {
                    $( Self::$variant(body) => body.validate(field), )+
                }
            }
        }

        impl<'de: 'a, 'a> DeserializeSeed<'de> for BodySeed<'a> {
            type Value = Body<'a>;

            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Body<'a>, D::Error> {
                Ok(match self.0 {
                    $( RecordKind::$variant => Body::$variant(<$ty>::deserialize(d)?), )+
                })
            }
        }
    };
}

/// Deserializes the body a kind selects.
struct BodySeed<'a>(RecordKind, PhantomData<Body<'a>>);

record_bodies! {
    /// The agent started.
    AgentStart(AgentStart<'a>) = 1 => "agent-start",
    /// The agent is stopping.
    AgentStop(AgentStop<'a>) = 2 => "agent-stop",
    /// The device enrolled.
    Enrolled(Enrolled<'a>) = 3 => "enrolled",
    /// An attestation attempt ended.
    Attested(Attested) = 4 => "attested",
    /// An artifact was verified and installed.
    ArtifactInstalled(ArtifactInstalled) = 5 => "artifact-installed",
    /// The gate opened.
    GateOpened(GateOpened) = 6 => "gate-opened",
    /// The gate closed.
    GateClosed(GateClosed) = 7 => "gate-closed",
    /// The device was contained.
    GateContained(GateContained<'a>) = 8 => "gate-contained",
    /// The device was revoked.
    GateRevoked(GateRevoked<'a>) = 9 => "gate-revoked",
    /// Containment was lifted.
    GateRestored(GateRestored) = 10 => "gate-restored",
    /// The gate answered a request.
    Decision(Decision<'a>) = 11 => "decision",
    /// Platform drift was detected.
    Drift(Drift<'a>) = 12 => "drift",
    /// The heartbeat window lapsed.
    HeartbeatLapse(HeartbeatLapse) = 13 => "heartbeat-lapse",
    /// A control message was accepted.
    ControlReceived(ControlReceived) = 14 => "control-received",
    /// A TPM-quoted commitment to the chain head.
    Checkpoint(Checkpoint<'a>) = 15 => "checkpoint",
}

/// One lineage record.
///
/// | key | field | type |
/// |---|---|---|
/// | 0 | `v` | uint, 1 |
/// | 1 | `device` | text, device id |
/// | 2 | `seq` | uint, from 0, no gaps |
/// | 3 | `prev` | bstr 32: previous record's hash (zeros for seq 0) |
/// | 4 | `boot` | map {0: resetCount, 1: restartCount} |
/// | 5 | `mono_ms` | uint, CLOCK_BOOTTIME ms |
/// | 6 | `wall_ms` | uint, Unix ms (absent when the wall clock is untrusted) |
/// | 7 | `kind` | uint, [`RecordKind`] |
/// | 8 | `body` | map, the kind's body |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Wire version (1).
    pub v: Version,
    /// The device.
    pub device: DeviceId,
    /// Position in the chain, from 0.
    pub seq: u64,
    /// Hash of the previous record.
    pub prev: Digest,
    /// TPM boot counters when written.
    pub boot: BootCounters,
    /// CLOCK_BOOTTIME ms when written.
    pub mono_ms: u64,
    /// Unix ms when written, if the wall clock was trusted.
    pub wall_ms: Option<u64>,
    /// What happened.
    pub body: Body<'a>,
}

const RECORD_KEYS: u64 = 9;

impl Serialize for Record<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = if self.wall_ms.is_some() { 9 } else { 8 };
        let mut map = s.serialize_map(Some(len))?;
        map.serialize_entry(&0u8, &self.v)?;
        map.serialize_entry(&1u8, &self.device)?;
        map.serialize_entry(&2u8, &self.seq)?;
        map.serialize_entry(&3u8, &self.prev)?;
        map.serialize_entry(&4u8, &self.boot)?;
        map.serialize_entry(&5u8, &self.mono_ms)?;
        if let Some(wall_ms) = self.wall_ms {
            map.serialize_entry(&6u8, &wall_ms)?;
        }
        map.serialize_entry(&7u8, &self.body.kind())?;
        map.serialize_entry(&8u8, &self.body)?;
        map.end()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Record<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RecordVisitor(PhantomData))
    }
}

struct RecordVisitor<'a>(PhantomData<Record<'a>>);

impl<'de: 'a, 'a> Visitor<'de> for RecordVisitor<'a> {
    type Value = Record<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a lineage record map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Record<'a>, A::Error> {
        // Keys must come in ascending order (the canonical order), which
        // also guarantees the kind is known before its body is parsed.
        let mut v = None;
        let mut device = None;
        let mut seq = None;
        let mut prev = None;
        let mut boot = None;
        let mut mono_ms = None;
        let mut wall_ms = None;
        let mut kind = None;
        let mut body = None;
        let mut next_key = 0u64;
        while let Some(key) = access.next_key::<u64>()? {
            if key < next_key || key >= RECORD_KEYS {
                return Err(de::Error::custom("unknown, repeated or misordered key"));
            }
            next_key = key + 1;
            match key {
                0 => v = Some(access.next_value::<Version>()?),
                1 => device = Some(access.next_value::<DeviceId>()?),
                2 => seq = Some(access.next_value::<u64>()?),
                3 => prev = Some(access.next_value::<Digest>()?),
                4 => boot = Some(access.next_value::<BootCounters>()?),
                5 => mono_ms = Some(access.next_value::<u64>()?),
                6 => wall_ms = Some(access.next_value::<u64>()?),
                7 => kind = Some(access.next_value::<RecordKind>()?),
                _ => {
                    let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
                    body = Some(access.next_value_seed(BodySeed(kind, PhantomData))?);
                }
            }
        }
        let missing = de::Error::missing_field;
        Ok(Record {
            v: v.ok_or_else(|| missing("v"))?,
            device: device.ok_or_else(|| missing("device"))?,
            seq: seq.ok_or_else(|| missing("seq"))?,
            prev: prev.ok_or_else(|| missing("prev"))?,
            boot: boot.ok_or_else(|| missing("boot"))?,
            mono_ms: mono_ms.ok_or_else(|| missing("mono_ms"))?,
            wall_ms,
            body: body.ok_or_else(|| missing("body"))?,
        })
    }
}

impl WireField for Record<'_> {}

impl Validate for Record<'_> {
    fn validate(&self, _field: &'static str) -> Result<(), Invalid> {
        self.v.validate("v")?;
        self.body.validate("body")
    }
}

impl<'a> Message<'a> for Record<'a> {
    const KIND: MessageKind = MessageKind::Record;
}

impl<'a> LineageBatch<'a> {
    /// Decodes the records one by one (each fully checked, none hashed or
    /// chained: that is [`ChainVerifier`]'s job). Here rather than beside
    /// the batch so the wire messages do not depend on the record format.
    pub fn decode_records(&self) -> impl Iterator<Item = Result<Record<'a>, Error>> + '_ {
        self.records.iter().map(|b| Record::decode(b.0))
    }
}

/// The writing end of a chain (the agent): numbers and links each new
/// record and tracks the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    device: DeviceId,
    next_seq: u64,
    head: [u8; 32],
}

impl ChainHead {
    /// A new chain: the first record gets seq 0 and `prev` = zeros.
    pub const fn genesis(device: DeviceId) -> Self {
        Self {
            device,
            next_seq: 0,
            head: GENESIS_PREV,
        }
    }

    /// Continues a chain whose last record has `last_seq` and hash
    /// `last_hash` (from the agent's durable log).
    pub fn resume(device: DeviceId, last_seq: u64, last_hash: [u8; 32]) -> Self {
        Self {
            device,
            next_seq: last_seq.saturating_add(1),
            head: last_hash,
        }
    }

    /// The seq the next record gets.
    pub const fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The hash of the last record (zeros before the first).
    pub const fn head(&self) -> &[u8; 32] {
        &self.head
    }

    /// The device.
    pub const fn device(&self) -> &DeviceId {
        &self.device
    }

    /// Encodes the next record into `buf` and advances the head. Returns
    /// the encoding (store and send exactly these bytes), its seq and hash.
    /// On error nothing advances.
    pub fn append<'b>(
        &mut self,
        crypto: &dyn Crypto,
        stamp: Stamp,
        body: Body<'_>,
        buf: &'b mut [u8],
    ) -> Result<Appended<'b>, Error> {
        let record = Record {
            v: Version::CURRENT,
            device: self.device.clone(),
            seq: self.next_seq,
            prev: Bytes(self.head),
            boot: stamp.boot,
            mono_ms: stamp.mono_ms,
            wall_ms: stamp.wall_ms,
            body,
        };
        let seq = self.next_seq;
        let next_seq = seq.checked_add(1).ok_or(Error::Invalid {
            kind: MessageKind::Record,
            invalid: Invalid {
                field: "seq",
                problem: crate::error::Problem::OutOfRange,
            },
        })?;
        let bytes = record.encode(buf)?;
        let hash = record_hash(crypto, bytes);
        self.next_seq = next_seq;
        self.head = hash;
        Ok(Appended { bytes, seq, hash })
    }

    /// The qualifying data for a checkpoint quote of the current head (the
    /// checkpoint record itself is then the next [`ChainHead::append`]).
    /// `None` before the first record.
    pub fn checkpoint_qualifying_data(&self, crypto: &dyn Crypto) -> Option<(u64, [u8; 32])> {
        let seq = self.next_seq.checked_sub(1)?;
        Some((
            seq,
            checkpoint_qualifying_data(crypto, &self.device, seq, &self.head),
        ))
    }
}

/// When and on which boot a record is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// TPM boot counters.
    pub boot: BootCounters,
    /// CLOCK_BOOTTIME ms.
    pub mono_ms: u64,
    /// Unix ms, if the wall clock is trusted.
    pub wall_ms: Option<u64>,
}

/// A record [`ChainHead::append`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended<'b> {
    /// Its canonical encoding.
    pub bytes: &'b [u8],
    /// Its seq.
    pub seq: u64,
    /// Its hash.
    pub hash: [u8; 32],
}

/// How a chain breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// The record does not decode (size, structure, limits, canonical
    /// form).
    Undecodable,
    /// The record names another device.
    WrongDevice,
    /// The record's seq is above the expected one: records are missing.
    Gap {
        /// The seq found.
        found: u64,
    },
    /// The record's seq is below the last one's: it arrived out of order
    /// (or is a replay from further back).
    Reordered {
        /// The seq found.
        found: u64,
    },
    /// Same seq as the last record, different content: equivocation.
    Conflict,
    /// `prev` is not the previous record's hash: this record or its
    /// predecessor was altered.
    LinkMismatch,
    /// A checkpoint that does not commit to its predecessor.
    BadCheckpoint,
    /// `mono_ms` went backwards within one boot.
    ClockRegression,
    /// The chain's last hash is not the trusted head it must end at: the
    /// last record was altered or records are missing at the end.
    HeadMismatch,
}

/// Where and how a chain breaks. `seq` is the seq the verifier expected at
/// that point (for [`BreakKind::HeadMismatch`]: the last verified seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainBreak {
    /// The expected seq at the break.
    pub seq: u64,
    /// What broke.
    pub kind: BreakKind,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            BreakKind::Undecodable => "record does not decode",
            BreakKind::WrongDevice => "record of another device",
            BreakKind::Gap { .. } => "records missing",
            BreakKind::Reordered { .. } => "record out of order",
            BreakKind::Conflict => "two records with one seq",
            BreakKind::LinkMismatch => "prev does not match the previous hash",
            BreakKind::BadCheckpoint => "checkpoint does not commit to its predecessor",
            BreakKind::ClockRegression => "monotonic time went backwards",
            BreakKind::HeadMismatch => "chain does not end at the trusted head",
        };
        write!(f, "chain breaks at seq {}: {what}", self.seq)
    }
}

/// What [`ChainVerifier::push`] did with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "no alloc to box into; a step is consumed right away"
)]
pub enum Step<'a> {
    /// The record extends the chain.
    Appended {
        /// The record.
        record: Record<'a>,
        /// Its hash (the new head).
        hash: [u8; 32],
    },
    /// An exact copy of the last record (a redelivery); ignored.
    Duplicate {
        /// Its seq.
        seq: u64,
    },
}

/// The checking end of a chain (collector, offline verifier): feed records
/// in order; the first break is reported and the verifier stays at the
/// last good record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainVerifier {
    device: DeviceId,
    next_seq: u64,
    head: [u8; 32],
    last_boot: Option<BootCounters>,
    last_mono_ms: u64,
}

impl ChainVerifier {
    /// Verifies from seq 0.
    pub const fn genesis(device: DeviceId) -> Self {
        Self {
            device,
            next_seq: 0,
            head: GENESIS_PREV,
            last_boot: None,
            last_mono_ms: 0,
        }
    }

    /// Verifies from after a record already verified (seq `last_seq`, hash
    /// `last_hash`).
    pub fn resume(device: DeviceId, last_seq: u64, last_hash: [u8; 32]) -> Self {
        Self {
            device,
            next_seq: last_seq.saturating_add(1),
            head: last_hash,
            last_boot: None,
            last_mono_ms: 0,
        }
    }

    /// The seq the next record must have.
    pub const fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The hash of the last verified record.
    pub const fn head(&self) -> &[u8; 32] {
        &self.head
    }

    /// Checks one encoded record against the chain so far.
    pub fn push<'a>(
        &mut self,
        crypto: &dyn Crypto,
        bytes: &'a [u8],
    ) -> Result<Step<'a>, ChainBreak> {
        let at = |kind| ChainBreak {
            seq: self.next_seq,
            kind,
        };
        let record = Record::decode(bytes).map_err(|_| at(BreakKind::Undecodable))?;
        if record.device != self.device {
            return Err(at(BreakKind::WrongDevice));
        }
        let hash = record_hash(crypto, bytes);
        if record.seq != self.next_seq {
            let last = self.next_seq.checked_sub(1);
            return Err(if Some(record.seq) == last && hash == self.head {
                return Ok(Step::Duplicate { seq: record.seq });
            } else if Some(record.seq) == last {
                at(BreakKind::Conflict)
            } else if record.seq > self.next_seq {
                at(BreakKind::Gap { found: record.seq })
            } else {
                at(BreakKind::Reordered { found: record.seq })
            });
        }
        if record.prev.0 != self.head {
            return Err(at(BreakKind::LinkMismatch));
        }
        if let Body::Checkpoint(cp) = &record.body {
            if Some(cp.seq) != record.seq.checked_sub(1) || cp.head.0 != self.head {
                return Err(at(BreakKind::BadCheckpoint));
            }
        }
        if self.last_boot == Some(record.boot) && record.mono_ms < self.last_mono_ms {
            return Err(at(BreakKind::ClockRegression));
        }
        self.next_seq = self.next_seq.saturating_add(1);
        self.head = hash;
        self.last_boot = Some(record.boot);
        self.last_mono_ms = record.mono_ms;
        Ok(Step::Appended { record, hash })
    }

    /// Checks that the chain ends at `trusted_head` (e.g. the head a
    /// verified checkpoint or an earlier ack committed to), which also
    /// covers the last record against alteration.
    pub fn finish(&self, trusted_head: &[u8; 32]) -> Result<(), ChainBreak> {
        if self.head == *trusted_head {
            Ok(())
        } else {
            Err(ChainBreak {
                seq: self.next_seq.saturating_sub(1),
                kind: BreakKind::HeadMismatch,
            })
        }
    }
}

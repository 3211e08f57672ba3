//! The crate's one error type, its typed parts, and the class of action a
//! caller takes for each.

use core::fmt;

use crate::gate::GateError;
use crate::limits;
use crate::lineage::ChainBreak;

/// Which wire message an error is about. Also names the COSE content type
/// of the signed kinds (see [`crate::cose`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// [`crate::messages::EnrollRequest`].
    EnrollRequest,
    /// [`crate::messages::EnrollChallenge`].
    EnrollChallenge,
    /// [`crate::messages::EnrollProof`].
    EnrollProof,
    /// [`crate::messages::EnrollResult`] (signed).
    EnrollResult,
    /// [`crate::messages::NonceRequest`].
    NonceRequest,
    /// [`crate::messages::Nonce`].
    Nonce,
    /// [`crate::messages::Evidence`].
    Evidence,
    /// [`crate::messages::Refusal`] (signed).
    Refusal,
    /// [`crate::artifact::Claims`] (signed).
    Artifact,
    /// [`crate::messages::Heartbeat`] (signed).
    Heartbeat,
    /// [`crate::messages::Control`] (signed).
    Control,
    /// [`crate::messages::RegistryRecord`] (signed).
    RegistryRecord,
    /// [`crate::messages::LineageBatch`].
    LineageBatch,
    /// [`crate::messages::LineageAck`].
    LineageAck,
    /// [`crate::lineage::Record`].
    Record,
    /// [`crate::receipt::Receipt`] (signed by a collector).
    Receipt,
    /// The COSE_Sign1 envelope around a signed message.
    CoseSign1,
    /// The protected header inside a COSE_Sign1 envelope.
    ProtectedHeader,
}

impl MessageKind {
    /// The most bytes an encoding of this kind may have; decoders reject
    /// longer input before parsing it.
    pub const fn max_len(self) -> usize {
        match self {
            Self::EnrollRequest => limits::MAX_ENROLL_REQUEST_LEN,
            Self::Evidence => limits::MAX_EVIDENCE_LEN,
            Self::LineageBatch => limits::MAX_BATCH_LEN,
            Self::Record => limits::MAX_RECORD_LEN,
            Self::EnrollChallenge
            | Self::EnrollProof
            | Self::NonceRequest
            | Self::Nonce
            | Self::LineageAck => limits::MAX_SMALL_MESSAGE_LEN,
            Self::EnrollResult
            | Self::Refusal
            | Self::Artifact
            | Self::Heartbeat
            | Self::Control
            | Self::RegistryRecord
            | Self::Receipt
            | Self::CoseSign1
            | Self::ProtectedHeader => limits::MAX_SIGNED_LEN,
        }
    }

    /// A stable lower-case name for logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::EnrollRequest => "enroll-request",
            Self::EnrollChallenge => "enroll-challenge",
            Self::EnrollProof => "enroll-proof",
            Self::EnrollResult => "enroll-result",
            Self::NonceRequest => "nonce-request",
            Self::Nonce => "nonce",
            Self::Evidence => "evidence",
            Self::Refusal => "refusal",
            Self::Artifact => "artifact",
            Self::Heartbeat => "heartbeat",
            Self::Control => "control",
            Self::RegistryRecord => "registry-record",
            Self::LineageBatch => "lineage-batch",
            Self::LineageAck => "lineage-ack",
            Self::Record => "lineage-record",
            Self::Receipt => "receipt",
            Self::CoseSign1 => "cose-sign1",
            Self::ProtectedHeader => "protected-header",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What is wrong with a field that decoded but breaks a rule of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Longer than the field's limit (bytes).
    TooLong {
        /// The limit.
        max: usize,
    },
    /// More entries than the field's limit.
    TooMany {
        /// The limit.
        max: usize,
    },
    /// Empty where at least one byte or entry is required.
    Empty,
    /// Characters or structure the field does not allow.
    BadSyntax,
    /// A wire version this implementation does not speak.
    UnsupportedVersion(u8),
    /// A number outside the field's range.
    OutOfRange,
    /// Disagrees with another field of the same message (named in the docs
    /// of the rule).
    Inconsistent,
}

/// A field that breaks a rule of the format: which one and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    /// The field's name as in the wire-format tables.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: Problem,
}

/// Rejections of the COSE_Sign1 envelope around a signed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeError {
    /// The message does not start with CBOR tag 18 (COSE_Sign1).
    NotTagged,
    /// The protected header names an algorithm other than EdDSA (-8).
    UnsupportedAlg(i64),
    /// The protected content type is another kind's: a message of one kind
    /// presented as another.
    WrongContentType {
        /// The kind the caller asked for.
        expected: MessageKind,
    },
    /// The key id matches no trusted authority key (wrong issuer key).
    UnknownKey,
    /// The Ed25519 signature does not verify.
    BadSignature,
}

/// Rejections of an authentic artifact that is not acceptable here and now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactError {
    /// `iss` is not the configured authority.
    WrongIssuer,
    /// `boot` differs from the TPM's current reset/restart counters: issued
    /// for another boot.
    WrongBoot,
    /// `nonce` is not the device's latest nonce (stale or foreign).
    NonceMismatch,
    /// `exp` has passed (trusted wall clock) or the validity is zero.
    Expired,
    /// A claim has a value the device does not accept (named).
    BadClaim(&'static str),
}

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The input is longer than its kind allows; it was not parsed.
    Oversize {
        /// What was being decoded.
        kind: MessageKind,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not well-formed CBOR of the expected shape: bad syntax, wrong type,
    /// unknown, missing or duplicate key, unknown code, trailing bytes.
    Malformed {
        /// What was being decoded.
        kind: MessageKind,
        /// Byte offset the CBOR parser reports (0 when unknown).
        offset: u64,
    },
    /// Well-formed, but not the one canonical encoding of its value
    /// (key order, integer width, indefinite lengths, tags, explicit nulls).
    NonCanonical {
        /// What was being decoded.
        kind: MessageKind,
    },
    /// Decoded, but a field breaks a limit or rule of the format (or the
    /// value to encode does).
    Invalid {
        /// What was being decoded or encoded.
        kind: MessageKind,
        /// Which field and how.
        invalid: Invalid,
    },
    /// The output buffer is too small for the encoding.
    BufferTooSmall {
        /// What was being encoded.
        kind: MessageKind,
    },
    /// The COSE_Sign1 envelope was rejected.
    Envelope(EnvelopeError),
    /// An authentic artifact is not acceptable here and now.
    Artifact(ArtifactError),
    /// An authentic message is addressed to another device or request.
    WrongSubject {
        /// The message kind.
        kind: MessageKind,
    },
    /// A sequence number not above the last one seen: a replay.
    Replay {
        /// The message kind.
        kind: MessageKind,
        /// The sequence number received.
        seq: u64,
        /// The last one accepted.
        last: u64,
    },
    /// The gate refuses the input in its current state.
    Gate(GateError),
    /// A lineage chain is broken.
    Chain(ChainBreak),
    /// The signer could not sign (secure element or key failure).
    Signer,
    /// A string is not a valid device id (see [`crate::DeviceId`]).
    BadDeviceId(Problem),
}

/// What a caller does about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Drop the input, log it, keep all state: malformed, forged, replayed
    /// or misaddressed input.
    Discard,
    /// The input was authentic but cannot be used now: obtain fresh evidence
    /// and a new artifact.
    Reattest,
    /// The gate's state refuses it; only the authority can change that.
    Refused,
    /// A lineage proof is broken: keep the evidence, raise an alarm, stop
    /// trusting that source past the break.
    Tamper,
    /// A local fault (buffer too small, signer failure): a bug or broken
    /// hardware; the operation fails.
    Local,
}

impl Error {
    /// The class of action this error calls for.
    pub const fn class(&self) -> ErrorClass {
        match self {
            Self::Oversize { .. }
            | Self::Malformed { .. }
            | Self::NonCanonical { .. }
            | Self::Invalid { .. }
            | Self::Envelope(_)
            | Self::WrongSubject { .. }
            | Self::Replay { .. }
            | Self::BadDeviceId(_) => ErrorClass::Discard,
            Self::Artifact(_) => ErrorClass::Reattest,
            Self::Gate(_) => ErrorClass::Refused,
            Self::Chain(_) => ErrorClass::Tamper,
            Self::BufferTooSmall { .. } | Self::Signer => ErrorClass::Local,
        }
    }
}

impl From<EnvelopeError> for Error {
    fn from(e: EnvelopeError) -> Self {
        Self::Envelope(e)
    }
}

impl From<ArtifactError> for Error {
    fn from(e: ArtifactError) -> Self {
        Self::Artifact(e)
    }
}

impl From<GateError> for Error {
    fn from(e: GateError) -> Self {
        Self::Gate(e)
    }
}

impl From<ChainBreak> for Error {
    fn from(e: ChainBreak) -> Self {
        Self::Chain(e)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong { max } => write!(f, "longer than {max} bytes"),
            Self::TooMany { max } => write!(f, "more than {max} entries"),
            Self::Empty => f.write_str("empty"),
            Self::BadSyntax => f.write_str("bad syntax"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported version {v}"),
            Self::OutOfRange => f.write_str("out of range"),
            Self::Inconsistent => f.write_str("inconsistent with another field"),
        }
    }
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotTagged => f.write_str("not a tagged COSE_Sign1"),
            Self::UnsupportedAlg(a) => write!(f, "unsupported COSE algorithm {a}"),
            Self::WrongContentType { expected } => {
                write!(f, "content type is not {expected}")
            }
            Self::UnknownKey => f.write_str("signed by an unknown key"),
            Self::BadSignature => f.write_str("bad signature"),
        }
    }
}

impl fmt::Display for ArtifactError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongIssuer => f.write_str("issued by another authority"),
            Self::WrongBoot => f.write_str("issued for another TPM boot"),
            Self::NonceMismatch => f.write_str("does not answer the latest nonce"),
            Self::Expired => f.write_str("expired"),
            Self::BadClaim(c) => write!(f, "unacceptable claim {c}"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Oversize { kind, len, max } => {
                write!(f, "{kind}: {len} bytes, limit {max}")
            }
            Self::Malformed { kind, offset } => write!(f, "{kind}: malformed near byte {offset}"),
            Self::NonCanonical { kind } => write!(f, "{kind}: not canonically encoded"),
            Self::Invalid { kind, invalid } => {
                write!(f, "{kind}: field {}: {}", invalid.field, invalid.problem)
            }
            Self::BufferTooSmall { kind } => write!(f, "{kind}: output buffer too small"),
            Self::Envelope(e) => write!(f, "signed message: {e}"),
            Self::Artifact(e) => write!(f, "artifact: {e}"),
            Self::WrongSubject { kind } => write!(f, "{kind}: addressed to another subject"),
            Self::Replay { kind, seq, last } => {
                write!(f, "{kind}: seq {seq} is not above {last} (replay)")
            }
            Self::Gate(e) => write!(f, "gate: {e}"),
            Self::Chain(e) => write!(f, "lineage: {e}"),
            Self::Signer => f.write_str("signer failed"),
            Self::BadDeviceId(p) => write!(f, "device id: {p}"),
        }
    }
}

impl core::error::Error for Error {}

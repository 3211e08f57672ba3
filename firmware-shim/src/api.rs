//! The device's local API: the gate socket's requests and answers, and the
//! status object (answered on the socket and published, retained, on
//! `mctc/v1/dev/{id}/status`). One schema, typed, for every side that
//! speaks it: the agent serves it, its CLI and the test harness ask with
//! it, a console or a monitor reads the status with it. `agent/README.md`
//! ("Gate socket protocol", "Status JSON") is the specification.
//!
//! The types are JSON-shaped serde structs; this crate does not depend on a
//! JSON library, the edge that speaks JSON does (serde_json in the agent).
//! Field order is the JSON's key order (alphabetical, as the agent has
//! always written it), so the bytes stay what they were.
//!
//! **Versioning.** Every answer and every status carries `v`
//! ([`API_VERSION`]). A change that only adds fields keeps `v` (readers
//! here ignore fields they do not know); any other change raises it.
//! Requests are input to the gate and parsed strictly (unknown fields,
//! including a `v` a newer client might send, are errors, answered with an
//! `error`, which a client treats as a deny).
//!
//! Codes appear by their names from the shim's one table
//! ([`crate::wire::CodeName`]). Needs the `alloc` feature.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::artifact::Currency;
use crate::gate::{ContainedBy, GateState, RevokedBy};
#[cfg(doc)]
use crate::limits::MAX_REFUSAL_PCRS;
use crate::limits::{MAX_EXPLANATION_LEN, MAX_OP_LEN, MAX_REF_LEN};
use crate::lineage::{AttestVerdict, DenyCode};
use crate::messages::{NoncePurpose, PcrFinding, PcrProblem, RefusalCode};
use crate::wire::token_problem;

/// The version of this schema (`v` in every answer and status).
pub const API_VERSION: u32 = 1;

const fn version_one() -> u32 {
    1
}

/// Serde adapters that put a wire code into JSON by its name.
pub mod by_name {
    use core::fmt;
    use core::marker::PhantomData;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    use crate::wire::CodeName;

    /// Writes the code's name.
    pub fn serialize<T: CodeName, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value.name())
    }

    /// Reads a code from its name; an unknown name is an error.
    pub fn deserialize<'de, T: CodeName, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        d.deserialize_str(NameVisitor(PhantomData))
    }

    struct NameVisitor<T>(PhantomData<T>);

    impl<T: CodeName> Visitor<'_> for NameVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a code name")
        }

        fn visit_str<E: de::Error>(self, name: &str) -> Result<T, E> {
            T::from_name(name).ok_or_else(|| E::invalid_value(de::Unexpected::Str(name), &self))
        }
    }

    /// The same for an optional code (`null` when absent).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        use crate::wire::CodeName;

        /// Writes the code's name, or `null`.
        pub fn serialize<T: CodeName, S: Serializer>(
            value: &Option<T>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => s.serialize_some(value.name()),
                None => s.serialize_none(),
            }
        }

        /// Reads a name or `null`.
        pub fn deserialize<'de, T: CodeName, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<T>, D::Error> {
            #[derive(serde::Deserialize)]
            struct Named<T: CodeName>(#[serde(with = "super")] T);
            Ok(Option::<Named<T>>::deserialize(d)?.map(|Named(v)| v))
        }
    }
}

// ---------------------------------------------------------------- requests

/// One request line on the gate socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum Request {
    /// `{"authorize":{…}}`: ask the gate for one operation.
    Authorize(Authorize),
    /// `{"status":{}}`: the status object.
    Status(Empty),
    /// `{"checkpoint":{}}`: a lineage checkpoint covering everything so far.
    Checkpoint(Empty),
}

impl Request {
    /// An authorize request.
    pub fn authorize(
        op: &str,
        amount: Option<u64>,
        currency: Option<&str>,
        reference: Option<&str>,
    ) -> Request {
        Request::Authorize(Authorize {
            amount,
            currency: currency.map(ToOwned::to_owned),
            op: op.to_owned(),
            reference: reference.map(ToOwned::to_owned),
        })
    }

    /// The status request.
    pub const fn status() -> Request {
        Request::Status(Empty {})
    }

    /// The checkpoint request.
    pub const fn checkpoint() -> Request {
        Request::Checkpoint(Empty {})
    }
}

/// The empty object of requests without arguments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// The arguments of an authorize request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorize {
    /// Amount in the currency's minor units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
    /// ISO 4217 code (three upper-case letters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// The operation (a token of at most 32 bytes).
    pub op: String,
    /// The caller's reference, recorded in lineage (at most 64 bytes).
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// Why an authorize request is not one the gate can decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// `op` is not a token of at most [`MAX_OP_LEN`] bytes.
    Op,
    /// `currency` is not three upper-case letters.
    Currency,
    /// `ref` is longer than [`MAX_REF_LEN`] bytes.
    Reference,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Op => write!(
                f,
                "op must be 1-{MAX_OP_LEN} printable ASCII characters without spaces"
            ),
            Self::Currency => f.write_str("currency must be three upper-case letters (ISO 4217)"),
            Self::Reference => write!(f, "ref longer than {MAX_REF_LEN} bytes"),
        }
    }
}

impl core::error::Error for RequestError {}

impl Authorize {
    /// Checks the fields against the wire's rules (what the decision's
    /// lineage record must hold) and returns the currency.
    pub fn check(&self) -> Result<Option<Currency>, RequestError> {
        if token_problem(&self.op, MAX_OP_LEN).is_some() {
            return Err(RequestError::Op);
        }
        let currency = match &self.currency {
            None => None,
            Some(code) => Some(Currency::new(code).ok_or(RequestError::Currency)?),
        };
        if self
            .reference
            .as_ref()
            .is_some_and(|r| r.len() > MAX_REF_LEN)
        {
            return Err(RequestError::Reference);
        }
        Ok(currency)
    }
}

// ----------------------------------------------------------------- answers

/// The gate's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The operation may proceed: its lineage record is durable.
    Permit,
    /// It may not.
    Deny,
}

impl Decision {
    /// The name in the JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Permit => "permit",
            Self::Deny => "deny",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the answer is a deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// The gate's own reason.
    Gate(DenyCode),
    /// The decision's record could not be written (quota or disk failure).
    LineageUnavailable,
    /// No answer within the request timeout.
    Timeout,
    /// The agent is stopping.
    AgentStopping,
}

impl DenyReason {
    /// The reason's name on the socket.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Gate(code) => code.name(),
            Self::LineageUnavailable => "lineage-unavailable",
            Self::Timeout => "timeout",
            Self::AgentStopping => "agent-stopping",
        }
    }

    /// The reason named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "lineage-unavailable" => Some(Self::LineageUnavailable),
            "timeout" => Some(Self::Timeout),
            "agent-stopping" => Some(Self::AgentStopping),
            other => DenyCode::from_name(other).map(Self::Gate),
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for DenyReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for DenyReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DenyReason;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a deny reason")
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<DenyReason, E> {
                DenyReason::from_name(name)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(name), &self))
            }
        }
        d.deserialize_str(V)
    }
}

/// The answer to an authorize request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeAnswer {
    /// Hex `cti` of the artifact the decision was made under.
    pub artifact: Option<String>,
    /// Permit or deny.
    pub decision: Decision,
    /// Why a deny (`null` for a permit).
    pub reason: Option<DenyReason>,
    /// The decision record's lineage seq (`null` if none was written).
    pub seq: Option<u64>,
    /// [`API_VERSION`] (absent in what agents wrote before `v` existed:
    /// the same schema, read as version 1).
    #[serde(default = "version_one")]
    pub v: u32,
}

impl AuthorizeAnswer {
    /// A deny without a record.
    pub const fn deny(reason: DenyReason) -> Self {
        Self {
            artifact: None,
            decision: Decision::Deny,
            reason: Some(reason),
            seq: None,
            v: API_VERSION,
        }
    }

    /// Whether the operation may proceed.
    pub fn permits(&self) -> bool {
        self.decision == Decision::Permit
    }
}

/// The answer to a checkpoint request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointAnswer {
    /// The checkpoint's seq.
    pub checkpoint: u64,
    /// [`API_VERSION`] (absent in what agents wrote before `v` existed:
    /// the same schema, read as version 1).
    #[serde(default = "version_one")]
    pub v: u32,
}

/// The answer to a request that could not be served (malformed, too long,
/// busy, timed out). To the device's software it is a deny.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    /// One line saying what went wrong.
    pub error: String,
    /// [`API_VERSION`] (absent in what agents wrote before `v` existed:
    /// the same schema, read as version 1).
    #[serde(default = "version_one")]
    pub v: u32,
}

impl ErrorAnswer {
    /// An error answer.
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            v: API_VERSION,
        }
    }
}

/// What a client reads back for a request whose answer is `T`: `T`, or an
/// error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply<T> {
    /// The request could not be served.
    Error(ErrorAnswer),
    /// The answer.
    Ok(T),
}

impl<T> Reply<T> {
    /// The answer, or the error's text.
    pub fn into_result(self) -> Result<T, String> {
        match self {
            Self::Ok(answer) => Ok(answer),
            Self::Error(e) => Err(e.error),
        }
    }
}

// ------------------------------------------------------------------ status

/// The gate's state in the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateStatus {
    /// Operations in scope are permitted.
    Open,
    /// Nothing is permitted; a verified artifact reopens.
    Closed,
    /// Nothing is permitted until the authority restores the device.
    Contained,
    /// Nothing is permitted, ever again.
    Revoked,
    /// The agent is not answering (Last Will, clean stop).
    Offline,
}

impl GateStatus {
    /// The name in the JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Contained => "contained",
            Self::Revoked => "revoked",
            Self::Offline => "offline",
        }
    }
}

impl fmt::Display for GateStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the TPM answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TpmHealth {
    /// It does.
    Ok,
    /// It failed or did not answer in time: the gate stays closed.
    Unavailable,
}

impl TpmHealth {
    /// The name in the JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for TpmHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether lineage can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LineageHealth {
    /// It can.
    Ok,
    /// The store is full up to its reserve: only essential records.
    QuotaReached,
    /// Writing failed (`error` says how).
    Failed,
}

impl LineageHealth {
    /// The name in the JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::QuotaReached => "quota-reached",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for LineageHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The status of a device whose agent answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The installed artifact (only while open).
    pub artifact: Option<ArtifactStatus>,
    /// Whether the broker session is up.
    pub connected: bool,
    /// Free text from the operator or the failing component, if any.
    pub detail: Option<String>,
    /// The device id.
    pub device: String,
    /// The last heartbeat's seq.
    pub heartbeat_seq: Option<u64>,
    /// The last attestation round's outcome.
    pub last_attestation: Option<AttestationStatus>,
    /// The local lineage.
    pub lineage: LineageStatus,
    /// `true` (an offline status says `false`).
    pub online: bool,
    /// Why the gate is in its state (kebab-case; see [`GateSummary`]).
    pub reason: String,
    /// Broker sessions since start (1 for the first connection).
    pub session: u64,
    /// The gate's state.
    pub state: GateStatus,
    /// Whether the TPM answers.
    pub tpm: TpmHealth,
    /// [`API_VERSION`] (absent in what agents wrote before `v` existed:
    /// the same schema, read as version 1).
    #[serde(default = "version_one")]
    pub v: u32,
    /// The agent's software version.
    pub version: String,
    /// The agent's wall clock, Unix ms.
    pub wall_ms: u64,
    /// Why the gate is not open, explained (absent while open, and in what
    /// agents wrote before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<Explanation>,
}

/// Why a gate is not open: the cause, since when, the underlying error
/// and what an operator does about it. Bounded: `error` at most
/// [`MAX_EXPLANATION_LEN`] bytes, `pcrs` at most [`MAX_REFUSAL_PCRS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The cause.
    pub cause: Cause,
    /// Which check failed, by its stable name, where one did: an
    /// artifact's (`signature`, `issuer`, `device`, `boot`, `expired`, …),
    /// the authority's refusal code, the drift kind, the revocation's
    /// source.
    pub check: Option<String>,
    /// The underlying error in one line (the broker's, the TPM's, the
    /// operator's reason), if there is one.
    pub error: Option<String>,
    /// How long the gate has been in this state (CLOCK_BOOTTIME).
    pub for_ms: u64,
    /// One line saying what to do.
    pub hint: String,
    /// The PCRs the authority named when it refused the evidence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pcrs: Vec<PcrStatus>,
    /// Since when, Unix ms (the agent's wall clock).
    pub since_wall_ms: u64,
}

impl Explanation {
    /// `text` cut to [`MAX_EXPLANATION_LEN`] bytes at a character boundary.
    pub fn bounded(text: &str) -> String {
        let mut end = text.len().min(MAX_EXPLANATION_LEN);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.get(..end).unwrap_or_default().to_owned()
    }
}

/// One PCR the authority named, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcrStatus {
    /// Hex prefix of a value the class allows, if it has one.
    pub expected: Option<String>,
    /// Hex prefix of the quoted value, if quoted.
    pub got: Option<String>,
    /// The PCR index.
    pub pcr: u8,
    /// How it disagrees.
    #[serde(with = "by_name")]
    pub problem: PcrProblem,
}

impl From<&PcrFinding> for PcrStatus {
    fn from(f: &PcrFinding) -> Self {
        fn hex(bytes: &[u8]) -> String {
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
        PcrStatus {
            expected: f.expected.as_ref().map(|d| hex(&d.0)),
            got: f.got.as_ref().map(|d| hex(&d.0)),
            pcr: f.pcr,
            problem: f.problem,
        }
    }
}

impl fmt::Display for PcrStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PCR {} {}", self.pcr, self.problem.name())?;
        match (&self.expected, &self.got) {
            (Some(e), Some(g)) => write!(f, " (expected {e}…, got {g}…)"),
            (Some(e), None) => write!(f, " (expected {e}…)"),
            (None, Some(g)) => write!(f, " (got {g}…)"),
            (None, None) => Ok(()),
        }
    }
}

/// Why a gate is not open, by a stable kebab-case name (the same
/// convention as every other code the status prints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// The agent started and has no artifact yet.
    AwaitingAttestation,
    /// The device has not enrolled its TPM with the authority.
    NotEnrolled,
    /// The authority refused the evidence (`check`: its code; `pcrs`).
    RefusedEvidence,
    /// An artifact from the authority failed a check on the device
    /// (`check`: which).
    ArtifactRejected,
    /// The authority did not answer in time.
    NoAnswer,
    /// The broker cannot be reached or refused the session (`error`).
    BrokerUnreachable,
    /// The device's client certificate has expired (`error`: since when).
    CertificateExpired,
    /// The artifact's validity ended and no renewal arrived.
    ArtifactExpired,
    /// No valid fleet heartbeat within the window.
    HeartbeatLapsed,
    /// The platform changed (`check`: the drift kind; `error`: what).
    Drift,
    /// The TPM fails or does not answer.
    TpmUnavailable,
    /// Lineage cannot be written.
    LineageUnavailable,
    /// A heartbeat shows the device may have missed a revocation.
    RevocationGap,
    /// The clock went backwards.
    ClockRegression,
    /// The authority holds the device contained.
    Contained,
    /// The device is revoked.
    Revoked,
    /// The agent is stopping.
    Shutdown,
    /// A cause a newer agent names that this reader does not know (so a
    /// new cause never makes an older reader drop the whole status).
    #[serde(other)]
    Other,
}

impl Cause {
    /// Every cause.
    pub const ALL: &'static [Cause] = &[
        Cause::AwaitingAttestation,
        Cause::NotEnrolled,
        Cause::RefusedEvidence,
        Cause::ArtifactRejected,
        Cause::NoAnswer,
        Cause::BrokerUnreachable,
        Cause::CertificateExpired,
        Cause::ArtifactExpired,
        Cause::HeartbeatLapsed,
        Cause::Drift,
        Cause::TpmUnavailable,
        Cause::LineageUnavailable,
        Cause::RevocationGap,
        Cause::ClockRegression,
        Cause::Contained,
        Cause::Revoked,
        Cause::Shutdown,
    ];

    /// The name in the JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Cause::AwaitingAttestation => "awaiting-attestation",
            Cause::NotEnrolled => "not-enrolled",
            Cause::RefusedEvidence => "refused-evidence",
            Cause::ArtifactRejected => "artifact-rejected",
            Cause::NoAnswer => "no-answer",
            Cause::BrokerUnreachable => "broker-unreachable",
            Cause::CertificateExpired => "certificate-expired",
            Cause::ArtifactExpired => "artifact-expired",
            Cause::HeartbeatLapsed => "heartbeat-lapsed",
            Cause::Drift => "drift",
            Cause::TpmUnavailable => "tpm-unavailable",
            Cause::LineageUnavailable => "lineage-unavailable",
            Cause::RevocationGap => "revocation-gap",
            Cause::ClockRegression => "clock-regression",
            Cause::Contained => "contained",
            Cause::Revoked => "revoked",
            Cause::Shutdown => "shutdown",
            Cause::Other => "other",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The installed artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactStatus {
    /// Hex of its `cti`.
    pub cti: String,
    /// Its `exp`, Unix seconds.
    pub exp: u64,
    /// Time left, counted on CLOCK_BOOTTIME.
    pub expires_in_ms: u64,
    /// The operations it authorizes.
    pub scope: Vec<String>,
}

/// The last attestation round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationStatus {
    /// How long ago it ended.
    pub ago_ms: u64,
    /// Renewal or fresh operation.
    #[serde(with = "by_name")]
    pub purpose: NoncePurpose,
    /// The refusal's code when refused.
    #[serde(with = "by_name::option")]
    pub refusal: Option<RefusalCode>,
    /// How it ended.
    #[serde(with = "by_name")]
    pub verdict: AttestVerdict,
}

/// The local lineage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageStatus {
    /// The seq of the latest verified collector receipt.
    pub acked_seq: Option<u64>,
    /// The collector's last anomaly report.
    pub anomaly: Option<String>,
    /// Records not yet acknowledged.
    pub backlog: u64,
    /// Why writing failed.
    pub error: Option<String>,
    /// Whether lineage can be written.
    pub health: LineageHealth,
    /// The newest checkpoint's seq.
    pub last_checkpoint: Option<u64>,
    /// The next record's seq (everything below is durable).
    pub next_seq: u64,
    /// The checkpoint of the persisted receipt: records through it may be
    /// pruned.
    pub pruned_through: Option<u64>,
    /// The store's quota.
    pub quota_bytes: u64,
    /// Records written since start.
    pub records: u64,
    /// Receipts that changed nothing since start.
    pub rejected_receipts: u64,
    /// fdatasyncs since start (group commit: records per sync).
    pub syncs: u64,
    /// Bytes the store uses.
    pub used_bytes: u64,
}

/// The status published when the agent does not answer: its Last Will
/// (`reason: connection-lost`) and its clean stop (`reason: shutdown`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineStatus {
    /// The device id.
    pub device: String,
    /// Always `false`.
    pub online: bool,
    /// `connection-lost` or `shutdown`.
    pub reason: String,
    /// Always [`GateStatus::Offline`].
    pub state: GateStatus,
    /// [`API_VERSION`] (absent in what agents wrote before `v` existed:
    /// the same schema, read as version 1).
    #[serde(default = "version_one")]
    pub v: u32,
    /// The agent's software version.
    pub version: String,
    /// The agent's wall clock, Unix ms.
    pub wall_ms: u64,
}

impl OfflineStatus {
    /// An offline status.
    pub fn new(device: &str, version: &str, reason: &str, wall_ms: u64) -> Self {
        Self {
            device: device.to_owned(),
            online: false,
            reason: reason.to_owned(),
            state: GateStatus::Offline,
            v: API_VERSION,
            version: version.to_owned(),
            wall_ms,
        }
    }
}

/// Any payload of the status topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StatusMessage {
    /// The agent answers.
    Online(alloc::boxed::Box<Status>),
    /// It does not.
    Offline(OfflineStatus),
}

/// State, reason and detail of a gate state: the status vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateSummary {
    /// The state.
    pub state: GateStatus,
    /// `artifact-valid` when open; the close reason when closed
    /// (`CloseReason`'s name); `contained-by-control` or
    /// `contained-by-refusal`; `revoked-by-control`, `revoked-by-heartbeat`,
    /// `revoked-by-refusal` or `revoked-persisted`.
    pub reason: String,
    /// The operator's reason, the refusal code or the heartbeat's seq.
    pub detail: Option<String>,
}

impl GateSummary {
    /// The summary of `state`.
    pub fn of(state: &GateState) -> GateSummary {
        let (state, reason, detail) = match state {
            GateState::Open(_) => (GateStatus::Open, "artifact-valid".to_owned(), None),
            GateState::Closed(reason) => (GateStatus::Closed, format!("{reason}"), None),
            GateState::Contained(ContainedBy::Control { reason, .. }) => (
                GateStatus::Contained,
                "contained-by-control".to_owned(),
                Some(reason.as_str().to_owned()),
            ),
            GateState::Contained(ContainedBy::Refusal { code }) => (
                GateStatus::Contained,
                "contained-by-refusal".to_owned(),
                Some(code.name().to_owned()),
            ),
            GateState::Revoked(RevokedBy::Control { reason, .. }) => (
                GateStatus::Revoked,
                "revoked-by-control".to_owned(),
                Some(reason.as_str().to_owned()),
            ),
            GateState::Revoked(RevokedBy::Heartbeat { seq, .. }) => (
                GateStatus::Revoked,
                "revoked-by-heartbeat".to_owned(),
                Some(format!("heartbeat seq {seq}")),
            ),
            GateState::Revoked(RevokedBy::Refusal) => {
                (GateStatus::Revoked, "revoked-by-refusal".to_owned(), None)
            }
            GateState::Revoked(RevokedBy::Persisted) => {
                (GateStatus::Revoked, "revoked-persisted".to_owned(), None)
            }
        };
        GateSummary {
            state,
            reason,
            detail,
        }
    }
}

//! The fail-closed gate: the state machine that alone answers "may this
//! device execute this operation now?".
//!
//! Sans-IO: the caller passes time in as `now`, CLOCK_BOOTTIME in ms (it
//! keeps counting through suspend, so a deadline cannot stretch across
//! one), and writes every returned [`GateEvent`] to lineage. Each input
//! first applies the deadlines at `now`, so the gate is closed *at* its
//! deadline, not at the next poll; [`Gate::next_deadline`] tells the caller
//! when to arm its one timer so the close is also recorded promptly.
//!
//! ```mermaid
//! stateDiagram-v2
//!     [*] --> Closed: start (reason Startup)
//!     [*] --> Revoked: start with persisted revocation
//!     Closed --> Open: install(VerifiedArtifact, quoted in this generation)
//!     Open --> Open: install (renewal, quoted in this generation) / valid heartbeat
//!     Open --> Closed: deadline passed / heartbeat lapsed (generation kept)
//!     Open --> Closed: drift / refusal / revocation gap / close(reason) / clock went back (generation + 1)
//!     Closed --> Closed: drift / TPM loss / refusal / clock went back, found while closed (generation + 1)
//!     Closed --> Contained: control contain / refusal (contained) (generation + 1)
//!     Open --> Contained: control contain / refusal (contained) (generation + 1)
//!     Contained --> Closed: control restore (reason Restored)
//!     Closed --> Revoked: control revoke / listed in heartbeat / refusal (revoked) (generation + 1)
//!     Open --> Revoked: control revoke / listed in heartbeat / refusal (revoked) (generation + 1)
//!     Contained --> Revoked: control revoke / listed in heartbeat / refusal (revoked) (generation + 1)
//!     Revoked --> [*]
//! ```
//!
//! Rules, precisely:
//!
//! - **Open** is reachable only through [`Gate::install`], which takes a
//!   [`VerifiedArtifact`] — a proof token only
//!   [`crate::artifact::verify_artifact`] makes — and the [`Generation`]
//!   the evidence it answers was quoted in. The gate starts Closed and
//!   never persists Open.
//! - **Generations.** The gate counts the events that make earlier
//!   evidence worthless: every close except artifact expiry and heartbeat
//!   lapse ([`CloseReason::voids_evidence`]: drift, TPM loss, a refusal, a
//!   revocation gap, a clock regression, lineage loss, shutdown), whether
//!   the gate was open or already closed, and every containment and
//!   revocation. The caller takes [`Gate::generation`] when it quotes and
//!   hands it back with the answer; [`Gate::install`] and
//!   [`Gate::decide_fresh`] refuse an artifact answering evidence quoted in
//!   an earlier generation ([`GateError::StaleEvidence`]). So an artifact
//!   in flight when the platform changed (PCRs extended, the TPM gone, the
//!   clock broken) cannot reopen the gate; only evidence quoted after the
//!   close can. Expiry and heartbeat lapse keep the generation: the
//!   platform did not change, and renewal proceeds as before.
//! - **Deadlines.** Open ends at the artifact's deadline (`received +
//!   ttl_ms`, earlier if a trusted wall clock puts `exp` first) and when no
//!   valid heartbeat arrived within the window (the smaller of the
//!   artifact's `hb_ms` and the last heartbeat's `hb_ms`), counted from the
//!   artifact's receipt and then from each accepted heartbeat. A deadline
//!   is exclusive: at `now == deadline` the gate is already closed.
//! - **Heartbeats** must have a seq above every one seen (and above the
//!   artifact's `hb_seq`), or they are replays and change nothing. A
//!   heartbeat listing this device revokes it in any state. While Open, a
//!   heartbeat whose `since_epoch` is above the epoch the device knows
//!   (the artifact's `epoch`, raised by each contiguous heartbeat) closes
//!   the gate with `RevocationGap`: the device may have missed its own
//!   revocation and must re-attest.
//! - **Contained** is entered by a `contain` control or a refusal with
//!   `contained` set. While contained, [`Gate::install`] refuses every
//!   artifact. Only a `restore` control leaves it, to Closed(`Restored`);
//!   the device then re-attests with a fresh nonce, and only that new
//!   artifact reopens. (The agent discards its outstanding nonce when
//!   containment begins, so an artifact answering pre-containment evidence
//!   cannot verify.)
//! - **Revoked** is terminal: entered by a `revoke` control, a heartbeat
//!   listing the device, or a refusal with code `Revoked`; nothing leaves
//!   it. The agent persists it ([`Gate::persisted`]) and starts in it.
//! - **Controls** must have a seq above the last accepted one (persisted
//!   by the agent), or they are replays.
//! - **Time going backwards** (a caller bug or a broken clock) closes the
//!   gate with `ClockRegression` (a new generation: nothing quoted on the
//!   broken clock reopens it).

use core::fmt;

use crate::artifact::{Currency, Scope, VerifiedArtifact};
use crate::cose::{AuthorityKey, Signed};
use crate::crypto::Crypto;
use crate::error::{Error, MessageKind};
use crate::id::DeviceId;
use crate::limits::MAX_REASON_LEN;
use crate::lineage::{
    ArtifactInstalled, Body, CloseCode, DenyCode, DriftKind, GateClosed, GateContained, GateOpened,
    GateRestored, GateRevoked, Source,
};
use crate::messages::{Control, ControlAction, Heartbeat, Refusal, RefusalCode};
use crate::wire::{Bytes, Text};

/// A free-text reason held by the gate.
pub type Reason = heapless::String<MAX_REASON_LEN>;

fn reason_of(text: &str) -> Reason {
    // Control reasons are validated to at most MAX_REASON_LEN bytes, so
    // this copy is whole; an empty reason is the fallback, never a panic.
    Reason::try_from(text).unwrap_or_default()
}

/// Why the gate is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The agent started.
    Startup,
    /// The artifact's deadline passed.
    ArtifactExpired,
    /// No valid heartbeat within the window.
    HeartbeatLapsed,
    /// The agent detected drift.
    Drift(DriftKind),
    /// The authority refused evidence.
    Refused(RefusalCode),
    /// Containment was lifted; waiting for a new artifact.
    Restored,
    /// A heartbeat showed the device may have missed a revocation.
    RevocationGap,
    /// Lineage could not be persisted.
    LineageUnavailable,
    /// The agent is stopping.
    Shutdown,
    /// `now` went backwards.
    ClockRegression,
    /// Attestation failed on the device.
    AttestationFailed,
}

impl CloseReason {
    /// The lineage code.
    pub const fn code(&self) -> CloseCode {
        match self {
            Self::Startup => CloseCode::Startup,
            Self::ArtifactExpired => CloseCode::ArtifactExpired,
            Self::HeartbeatLapsed => CloseCode::HeartbeatLapsed,
            Self::Drift(_) => CloseCode::Drift,
            Self::Refused(_) => CloseCode::Refused,
            Self::Restored => CloseCode::Restored,
            Self::RevocationGap => CloseCode::RevocationGap,
            Self::LineageUnavailable => CloseCode::LineageUnavailable,
            Self::Shutdown => CloseCode::Shutdown,
            Self::ClockRegression => CloseCode::ClockRegression,
            Self::AttestationFailed => CloseCode::AttestationFailed,
        }
    }

    /// Whether this close makes evidence quoted before it worthless (a new
    /// [`Generation`]): every reason but the two that only say time ran
    /// out — the artifact's deadline and the heartbeat window — after which
    /// the platform is what it was and renewal proceeds as before.
    pub const fn voids_evidence(&self) -> bool {
        !matches!(self, Self::ArtifactExpired | Self::HeartbeatLapsed)
    }

    /// The lineage detail: the drift kind or refusal code.
    pub const fn detail(&self) -> Option<u16> {
        match self {
            Self::Drift(kind) => Some(kind.code() as u16),
            Self::Refused(code) => Some(code.code()),
            _ => None,
        }
    }
}

/// The kebab-case name of a close (status JSON, logs): the close code's
/// name, except that a drift says what drifted (`drift-pcr`) and a refusal
/// its code (`refused-bad-evidence`).
impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Drift(kind) => f.write_str(kind.name()),
            Self::Refused(code) => write!(f, "refused-{}", code.name()),
            other => f.write_str(other.code().name()),
        }
    }
}

/// Who contained the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainedBy {
    /// A control message.
    Control {
        /// Its seq.
        seq: u64,
        /// The operator's reason.
        reason: Reason,
    },
    /// A refusal with `contained` set.
    Refusal {
        /// Its code.
        code: RefusalCode,
    },
}

/// Who revoked the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokedBy {
    /// A control message.
    Control {
        /// Its seq.
        seq: u64,
        /// The operator's reason.
        reason: Reason,
    },
    /// A heartbeat listing the device.
    Heartbeat {
        /// Its seq.
        seq: u64,
        /// Its epoch.
        epoch: u64,
    },
    /// A refusal with code `Revoked`.
    Refusal,
    /// The persisted state at start.
    Persisted,
}

/// The gate's state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "no alloc to box into; one gate per device holds one state"
)]
pub enum GateState {
    /// Nothing is permitted; a verified artifact opens.
    Closed(CloseReason),
    /// Operations within the artifact's scope are permitted until its
    /// deadlines.
    Open(VerifiedArtifact),
    /// Nothing is permitted and no artifact is accepted until a restore.
    Contained(ContainedBy),
    /// Nothing is permitted, ever again.
    Revoked(RevokedBy),
}

/// A transition, for the agent to write to lineage ([`GateEvent::body`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateEvent {
    /// Closed → Open.
    Opened {
        /// The artifact id.
        cti: [u8; 16],
        /// Its deadline.
        deadline_ms: u64,
    },
    /// Open → Open with a new artifact.
    Renewed {
        /// The artifact id.
        cti: [u8; 16],
        /// Its deadline.
        deadline_ms: u64,
        /// Its `exp`.
        exp: u64,
    },
    /// Open → Closed.
    Closed(CloseReason),
    /// → Contained.
    Contained(ContainedBy),
    /// Contained → Closed(Restored).
    Restored {
        /// The restoring control's seq.
        control_seq: u64,
    },
    /// → Revoked (persist it).
    Revoked(RevokedBy),
}

impl GateEvent {
    /// The lineage record body for this event.
    pub fn body(&self) -> Body<'_> {
        match self {
            Self::Opened { cti, deadline_ms } => Body::GateOpened(GateOpened {
                cti: Bytes(*cti),
                deadline_ms: *deadline_ms,
            }),
            Self::Renewed {
                cti,
                deadline_ms,
                exp,
            } => Body::ArtifactInstalled(ArtifactInstalled {
                cti: Bytes(*cti),
                deadline_ms: *deadline_ms,
                exp: *exp,
            }),
            Self::Closed(reason) => Body::GateClosed(GateClosed {
                reason: reason.code(),
                detail: reason.detail(),
            }),
            Self::Contained(ContainedBy::Control { seq, reason }) => {
                Body::GateContained(GateContained {
                    source: Source::Control,
                    control_seq: Some(*seq),
                    refusal: None,
                    reason: Text(reason.as_str()),
                })
            }
            Self::Contained(ContainedBy::Refusal { code }) => Body::GateContained(GateContained {
                source: Source::Refusal,
                control_seq: None,
                refusal: Some(*code),
                reason: Text(""),
            }),
            Self::Restored { control_seq } => Body::GateRestored(GateRestored {
                control_seq: *control_seq,
            }),
            Self::Revoked(by) => Body::GateRevoked(match by {
                RevokedBy::Control { seq, reason } => GateRevoked {
                    source: Source::Control,
                    seq: Some(*seq),
                    reason: Text(reason.as_str()),
                },
                RevokedBy::Heartbeat { seq, .. } => GateRevoked {
                    source: Source::Heartbeat,
                    seq: Some(*seq),
                    reason: Text(""),
                },
                RevokedBy::Refusal => GateRevoked {
                    source: Source::Refusal,
                    seq: None,
                    reason: Text(""),
                },
                RevokedBy::Persisted => GateRevoked {
                    source: Source::Persisted,
                    seq: None,
                    reason: Text(""),
                },
            }),
        }
    }
}

/// The events one input caused, in order (at most two: a deadline close
/// and the input's own transition).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Events(heapless::Vec<GateEvent, 2>);

impl Events {
    fn push(&mut self, event: GateEvent) {
        // Every input causes at most one deadline transition and one of its
        // own; if that ever changed, dropping an event would only lose a
        // log line, while the state itself is already updated.
        let _ = self.0.push(event);
    }

    /// The events.
    pub fn as_slice(&self) -> &[GateEvent] {
        &self.0
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'e> IntoIterator for &'e Events {
    type Item = &'e GateEvent;
    type IntoIter = core::slice::Iter<'e, GateEvent>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Why the gate refuses an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateError {
    /// The device is revoked.
    Revoked,
    /// The device is contained; a restore must come first.
    Contained,
    /// The artifact says it was received after `now`.
    ReceivedInFuture,
    /// The artifact answers evidence quoted before the gate last closed
    /// for a cause other than expiry (an earlier [`Generation`]).
    StaleEvidence,
}

impl fmt::Display for GateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Revoked => "device is revoked",
            Self::Contained => "device is contained",
            Self::ReceivedInFuture => "artifact received after now",
            Self::StaleEvidence => "artifact answers evidence quoted before the last close",
        })
    }
}

/// A request for a governed operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpRequest<'r> {
    /// The operation name.
    pub op: &'r str,
    /// The amount in minor units, if the operation has one.
    pub amount: Option<u64>,
    /// The currency, if the operation has one.
    pub currency: Option<Currency>,
}

/// The gate's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Permit,
    /// In scope, but the scope demands a fresh attestation for each
    /// operation: obtain one ([`crate::messages::NoncePurpose::FreshOp`])
    /// and ask again with [`Gate::decide_fresh`].
    NeedsFreshAttestation,
    /// No.
    Deny(DenyCode),
}

/// A decision and what it is based on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The answer.
    pub verdict: Verdict,
    /// The artifact it was decided under (for a fresh decision: the fresh
    /// artifact), when the gate was open.
    pub cti: Option<[u8; 16]>,
    /// Transitions the decision's time caused (a deadline close).
    pub events: Events,
}

impl Decision {
    /// Whether the operation may proceed.
    pub const fn is_permit(&self) -> bool {
        matches!(self.verdict, Verdict::Permit)
    }

    /// The lineage record body for this decision (write it before
    /// answering).
    pub fn body<'r>(&self, request: &OpRequest<'r>, reference: Option<&'r str>) -> Body<'r> {
        let (verdict, deny) = match self.verdict {
            Verdict::Permit => (crate::lineage::VerdictCode::Permit, None),
            Verdict::NeedsFreshAttestation => {
                (crate::lineage::VerdictCode::NeedsFreshAttestation, None)
            }
            Verdict::Deny(code) => (crate::lineage::VerdictCode::Deny, Some(code)),
        };
        Body::Decision(crate::lineage::Decision {
            op: crate::wire::Token(request.op),
            amount: request.amount,
            currency: request.currency,
            reference: reference.map(Text),
            verdict,
            deny,
            cti: self.cti.map(Bytes),
        })
    }
}

/// A heartbeat whose signature verified. Only [`verify_heartbeat`] makes
/// one; [`Gate::on_heartbeat`] checks it is not a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedHeartbeat(Heartbeat);

impl VerifiedHeartbeat {
    /// The heartbeat.
    pub const fn message(&self) -> &Heartbeat {
        &self.0
    }
}

/// Verifies a heartbeat's envelope and encoding.
pub fn verify_heartbeat(
    bytes: &[u8],
    keys: &[AuthorityKey],
    crypto: &dyn Crypto,
) -> Result<VerifiedHeartbeat, Error> {
    Heartbeat::open(bytes, keys, crypto).map(VerifiedHeartbeat)
}

/// A control message for this device whose signature verified. Only
/// [`verify_control`] makes one; [`Gate::on_control`] checks it is not a
/// replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedControl<'a>(Control<'a>);

impl<'a> VerifiedControl<'a> {
    /// The control message.
    pub const fn message(&self) -> &Control<'a> {
        &self.0
    }
}

/// Verifies a control message's envelope, encoding and subject.
pub fn verify_control<'a>(
    bytes: &'a [u8],
    keys: &[AuthorityKey],
    crypto: &dyn Crypto,
    device: &DeviceId,
) -> Result<VerifiedControl<'a>, Error> {
    let control = Control::open(bytes, keys, crypto)?;
    if control.sub != *device {
        return Err(Error::WrongSubject {
            kind: MessageKind::Control,
        });
    }
    Ok(VerifiedControl(control))
}

/// A refusal for this device's outstanding evidence whose signature
/// verified. Only [`verify_refusal`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRefusal(Refusal);

impl VerifiedRefusal {
    /// The refusal.
    pub const fn message(&self) -> &Refusal {
        &self.0
    }
}

/// Verifies a refusal's envelope, encoding, subject and nonce (it must
/// answer the evidence the device sent last, so an old refusal cannot be
/// replayed).
pub fn verify_refusal(
    bytes: &[u8],
    keys: &[AuthorityKey],
    crypto: &dyn Crypto,
    device: &DeviceId,
    nonce: &[u8; 32],
) -> Result<VerifiedRefusal, Error> {
    let refusal = Refusal::open(bytes, keys, crypto)?;
    if refusal.sub != *device {
        return Err(Error::WrongSubject {
            kind: MessageKind::Refusal,
        });
    }
    if refusal.nonce.0 != *nonce {
        return Err(crate::error::ArtifactError::NonceMismatch.into());
    }
    Ok(VerifiedRefusal(refusal))
}

/// What the agent persists across restarts (never Open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Persisted {
    /// The device is revoked.
    pub revoked: bool,
    /// The last accepted control seq.
    pub control_seq: Option<u64>,
}

/// Gate settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateConfig {
    /// This device.
    pub device: DeviceId,
    /// How old (since receipt) a fresh-attestation artifact may be when
    /// [`Gate::decide_fresh`] uses it.
    pub max_fresh_age_ms: u64,
}

/// Default for [`GateConfig::max_fresh_age_ms`]: 10 s.
pub const DEFAULT_MAX_FRESH_AGE_MS: u64 = 10_000;

/// Which stretch of the gate's life evidence was quoted in: it changes at
/// every close that voids evidence ([`CloseReason::voids_evidence`]), every
/// containment and every revocation. Taken from [`Gate::generation`] when
/// the quote is made, handed back to [`Gate::install`] and
/// [`Gate::decide_fresh`] with the artifact that answers it.
///
/// Only equality means anything: evidence counts in the generation it was
/// quoted in and no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Generation(u64);

impl Generation {
    /// The count, for logs.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// The gate. See the module docs for the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    config: GateConfig,
    state: GateState,
    /// Heartbeat deadline; meaningful while Open.
    hb_deadline_ms: u64,
    hb_last_seq: Option<u64>,
    /// Revocation epoch the device knows it was not revoked up to;
    /// meaningful while Open.
    epoch: u64,
    control_seq: Option<u64>,
    last_now: u64,
    /// The last fresh artifact a permit consumed: the same one never
    /// permits twice in a row (the agent's nonce rotation is the primary
    /// guard; this catches a second verification of the same bytes).
    fresh_used: Option<[u8; 16]>,
    /// Evidence quoted in an earlier generation installs nothing.
    generation: Generation,
}

impl Gate {
    /// A gate at start: Closed(Startup), or Revoked if persisted so.
    pub fn new(config: GateConfig, persisted: Persisted) -> Self {
        let state = if persisted.revoked {
            GateState::Revoked(RevokedBy::Persisted)
        } else {
            GateState::Closed(CloseReason::Startup)
        };
        Self {
            config,
            state,
            hb_deadline_ms: 0,
            hb_last_seq: None,
            epoch: 0,
            control_seq: persisted.control_seq,
            last_now: 0,
            fresh_used: None,
            generation: Generation(0),
        }
    }

    /// The current generation: take it when quoting evidence, hand it back
    /// with the artifact that answers the evidence.
    pub const fn generation(&self) -> Generation {
        self.generation
    }

    /// The current state (as of the last input; call [`Gate::tick`] to
    /// apply deadlines first).
    pub const fn state(&self) -> &GateState {
        &self.state
    }

    /// The device.
    pub const fn device(&self) -> &DeviceId {
        &self.config.device
    }

    /// The installed artifact, while Open: its boot counters, PCR selection
    /// and digest are what the agent's drift check compares against.
    pub const fn artifact(&self) -> Option<&VerifiedArtifact> {
        match &self.state {
            GateState::Open(artifact) => Some(artifact),
            _ => None,
        }
    }

    /// What to persist now.
    pub const fn persisted(&self) -> Persisted {
        Persisted {
            revoked: matches!(self.state, GateState::Revoked(_)),
            control_seq: self.control_seq,
        }
    }

    /// The last heartbeat seq accepted (or the artifact's baseline).
    pub const fn heartbeat_seq(&self) -> Option<u64> {
        self.hb_last_seq
    }

    /// When the gate will close by itself (CLOCK_BOOTTIME ms), while Open:
    /// arm one timer for it and call [`Gate::tick`].
    pub fn next_deadline(&self) -> Option<u64> {
        self.artifact()
            .map(|a| a.deadline_ms().min(self.hb_deadline_ms))
    }

    /// Applies the deadlines at `now`.
    pub fn tick(&mut self, now: u64) -> Events {
        let mut events = Events::default();
        self.advance(now, &mut events);
        events
    }

    /// Installs a verified artifact answering evidence quoted in
    /// `quoted_in`: Closed → Open, or a renewal while Open. Refused while
    /// Contained or Revoked, and when the evidence is from an earlier
    /// generation (see the module docs).
    pub fn install(
        &mut self,
        artifact: VerifiedArtifact,
        quoted_in: Generation,
        now: u64,
    ) -> Result<Events, Error> {
        let mut events = Events::default();
        self.advance(now, &mut events);
        if *artifact.sub() != self.config.device {
            return Err(Error::WrongSubject {
                kind: MessageKind::Artifact,
            });
        }
        match self.state {
            GateState::Revoked(_) => return Err(GateError::Revoked.into()),
            GateState::Contained(_) => return Err(GateError::Contained.into()),
            GateState::Open(_) | GateState::Closed(_) => {}
        }
        if quoted_in != self.generation {
            return Err(GateError::StaleEvidence.into());
        }
        if artifact.received_ms() > now {
            return Err(GateError::ReceivedInFuture.into());
        }
        if now >= artifact.deadline_ms() {
            return Err(crate::error::ArtifactError::Expired.into());
        }
        let hb_deadline = artifact
            .received_ms()
            .saturating_add(u64::from(artifact.hb_ms()));
        let renewal = match &self.state {
            GateState::Open(_) => {
                self.hb_deadline_ms = self.hb_deadline_ms.max(hb_deadline);
                self.epoch = self.epoch.max(artifact.epoch());
                true
            }
            _ => {
                self.hb_deadline_ms = hb_deadline;
                self.epoch = artifact.epoch();
                false
            }
        };
        self.hb_last_seq = Some(
            self.hb_last_seq
                .map_or(artifact.hb_seq(), |s| s.max(artifact.hb_seq())),
        );
        let cti = *artifact.cti();
        let deadline_ms = artifact.deadline_ms();
        events.push(if renewal {
            GateEvent::Renewed {
                cti,
                deadline_ms,
                exp: artifact.exp(),
            }
        } else {
            GateEvent::Opened { cti, deadline_ms }
        });
        self.state = GateState::Open(artifact);
        Ok(events)
    }

    /// Applies a verified heartbeat received at `now`.
    pub fn on_heartbeat(&mut self, hb: &VerifiedHeartbeat, now: u64) -> Result<Events, Error> {
        let hb = hb.message();
        let mut events = Events::default();
        self.advance(now, &mut events);
        if let Some(last) = self.hb_last_seq {
            if hb.seq <= last {
                return Err(Error::Replay {
                    kind: MessageKind::Heartbeat,
                    seq: hb.seq,
                    last,
                });
            }
        }
        self.hb_last_seq = Some(hb.seq);
        if matches!(self.state, GateState::Revoked(_)) {
            return Ok(events);
        }
        if hb.revoked.contains(&self.config.device) {
            self.revoke(
                RevokedBy::Heartbeat {
                    seq: hb.seq,
                    epoch: hb.epoch,
                },
                &mut events,
            );
            return Ok(events);
        }
        if let GateState::Open(artifact) = &self.state {
            if hb.since_epoch > self.epoch {
                self.close(CloseReason::RevocationGap, &mut events);
            } else {
                self.epoch = self.epoch.max(hb.epoch);
                let window = artifact.hb_ms().min(hb.hb_ms);
                self.hb_deadline_ms = now.saturating_add(u64::from(window));
            }
        }
        Ok(events)
    }

    /// Applies a verified control message received at `now`.
    pub fn on_control(&mut self, control: &VerifiedControl<'_>, now: u64) -> Result<Events, Error> {
        let control = control.message();
        let mut events = Events::default();
        self.advance(now, &mut events);
        if let Some(last) = self.control_seq {
            if control.seq <= last {
                return Err(Error::Replay {
                    kind: MessageKind::Control,
                    seq: control.seq,
                    last,
                });
            }
        }
        self.control_seq = Some(control.seq);
        let reason = reason_of(control.reason.as_str());
        match (control.action, &self.state) {
            (_, GateState::Revoked(_)) => {}
            (ControlAction::Revoke, _) => self.revoke(
                RevokedBy::Control {
                    seq: control.seq,
                    reason,
                },
                &mut events,
            ),
            (ControlAction::Contain, GateState::Contained(_)) => {}
            (ControlAction::Contain, _) => self.contain(
                ContainedBy::Control {
                    seq: control.seq,
                    reason,
                },
                &mut events,
            ),
            (ControlAction::Restore, GateState::Contained(_)) => {
                self.state = GateState::Closed(CloseReason::Restored);
                events.push(GateEvent::Restored {
                    control_seq: control.seq,
                });
            }
            (ControlAction::Restore, _) => {}
        }
        Ok(events)
    }

    /// Applies a verified refusal received at `now`.
    pub fn on_refusal(&mut self, refusal: &VerifiedRefusal, now: u64) -> Events {
        let refusal = refusal.message();
        let mut events = Events::default();
        self.advance(now, &mut events);
        match (&self.state, refusal.reason, refusal.contained) {
            (GateState::Revoked(_), _, _) => {}
            (_, RefusalCode::Revoked, _) => {
                self.revoke(RevokedBy::Refusal, &mut events);
            }
            (GateState::Contained(_), _, _) => {}
            (_, code, true) => self.contain(ContainedBy::Refusal { code }, &mut events),
            (_, code, false) => self.close(CloseReason::Refused(code), &mut events),
        }
        events
    }

    /// Reports drift at `now`: closes an open gate.
    pub fn drift(&mut self, kind: DriftKind, now: u64) -> Events {
        self.close_at(CloseReason::Drift(kind), now)
    }

    /// Closes an open gate for a reason of the agent's (lineage failure,
    /// shutdown, attestation failure).
    pub fn close_at(&mut self, reason: CloseReason, now: u64) -> Events {
        let mut events = Events::default();
        self.advance(now, &mut events);
        self.close(reason, &mut events);
        events
    }

    /// Decides a request at `now`. Applies the deadlines first.
    pub fn decide(&mut self, request: &OpRequest<'_>, now: u64) -> Decision {
        let mut events = Events::default();
        self.advance(now, &mut events);
        let (verdict, cti) = match &self.state {
            GateState::Open(artifact) => (
                match check_scope(artifact, request) {
                    Ok(scope) if scope.fresh_attestation() => Verdict::NeedsFreshAttestation,
                    Ok(_) => Verdict::Permit,
                    Err(code) => Verdict::Deny(code),
                },
                Some(*artifact.cti()),
            ),
            state => (Verdict::Deny(deny_code(state)), None),
        };
        Decision {
            verdict,
            cti,
            events,
        }
    }

    /// Decides a request whose scope demands fresh attestation, with the
    /// artifact that answered the fresh nonce (consumed: one operation per
    /// fresh attestation). Permits only if the gate is open and would
    /// permit the request but for freshness, and the fresh artifact is for
    /// this device and boot, answers evidence quoted in the current
    /// generation (`quoted_in`), was received at most `max_fresh_age_ms`
    /// ago, is within its own deadline, authorizes the request too, and did
    /// not permit the previous fresh operation.
    pub fn decide_fresh(
        &mut self,
        request: &OpRequest<'_>,
        fresh: VerifiedArtifact,
        quoted_in: Generation,
        now: u64,
    ) -> Decision {
        let mut events = Events::default();
        self.advance(now, &mut events);
        let artifact = match &self.state {
            GateState::Open(artifact) => artifact,
            state => {
                return Decision {
                    verdict: Verdict::Deny(deny_code(state)),
                    cti: None,
                    events,
                };
            }
        };
        if let Err(code) = check_scope(artifact, request) {
            return Decision {
                verdict: Verdict::Deny(code),
                cti: Some(*artifact.cti()),
                events,
            };
        }
        let fresh_ok = *fresh.sub() == self.config.device
            && quoted_in == self.generation
            && self.fresh_used != Some(*fresh.cti())
            && fresh.boot() == artifact.boot()
            && fresh.received_ms() <= now
            && now - fresh.received_ms() <= self.config.max_fresh_age_ms
            && now < fresh.deadline_ms()
            && check_scope(&fresh, request).is_ok();
        if fresh_ok {
            self.fresh_used = Some(*fresh.cti());
        }
        Decision {
            verdict: if fresh_ok {
                Verdict::Permit
            } else {
                Verdict::Deny(DenyCode::FreshAttestationInvalid)
            },
            cti: Some(*fresh.cti()),
            events,
        }
    }

    fn advance(&mut self, now: u64, events: &mut Events) {
        if now < self.last_now {
            self.last_now = now;
            self.close(CloseReason::ClockRegression, events);
            return;
        }
        self.last_now = now;
        if let GateState::Open(artifact) = &self.state {
            let deadline = artifact.deadline_ms();
            if now >= deadline.min(self.hb_deadline_ms) {
                let reason = if deadline <= self.hb_deadline_ms {
                    CloseReason::ArtifactExpired
                } else {
                    CloseReason::HeartbeatLapsed
                };
                self.close(reason, events);
            }
        }
    }

    /// Open → Closed(reason); other states keep theirs. A reason that voids
    /// evidence starts a new generation in every state: evidence quoted
    /// before it is worthless even if the gate was already closed (a drift
    /// or TPM loss found while a renewal is in flight after an expiry).
    fn close(&mut self, reason: CloseReason, events: &mut Events) {
        if reason.voids_evidence() {
            self.next_generation();
        }
        if matches!(self.state, GateState::Open(_)) {
            self.state = GateState::Closed(reason);
            events.push(GateEvent::Closed(reason));
        }
    }

    fn contain(&mut self, by: ContainedBy, events: &mut Events) {
        self.next_generation();
        events.push(GateEvent::Contained(by.clone()));
        self.state = GateState::Contained(by);
    }

    fn revoke(&mut self, by: RevokedBy, events: &mut Events) {
        self.next_generation();
        events.push(GateEvent::Revoked(by.clone()));
        self.state = GateState::Revoked(by);
    }

    fn next_generation(&mut self) {
        // 2^64 closes never happen; wrapping keeps it panic-free anyway.
        self.generation = Generation(self.generation.0.wrapping_add(1));
    }
}

fn deny_code(state: &GateState) -> DenyCode {
    match state {
        GateState::Closed(_) | GateState::Open(_) => DenyCode::Closed,
        GateState::Contained(_) => DenyCode::Contained,
        GateState::Revoked(_) => DenyCode::Revoked,
    }
}

fn check_scope<'s>(
    artifact: &'s VerifiedArtifact,
    request: &OpRequest<'_>,
) -> Result<&'s Scope, DenyCode> {
    let scope = artifact.scope_for(request.op).ok_or(DenyCode::OutOfScope)?;
    if let Some(currency) = scope.currency() {
        if request.currency != Some(currency) {
            return Err(DenyCode::CurrencyMismatch);
        }
    }
    if let Some(max) = scope.max_amount() {
        match request.amount {
            None => return Err(DenyCode::AmountRequired),
            Some(amount) if amount > max => return Err(DenyCode::OverLimit),
            Some(_) => {}
        }
    }
    Ok(scope)
}

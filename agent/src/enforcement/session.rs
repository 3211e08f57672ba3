//! The attestation session and the gate's owner as a sans-IO state
//! machine: inputs in (a broker message, a quote result, a drift finding,
//! lineage health, an authorize request, the passing of time), [`Action`]s
//! out (record this, publish that, quote this nonce, answer that client,
//! write the revocation marker, set the drift baseline). It reads no clock,
//! touches no channel, file or socket and spawns nothing: every entry point
//! takes the time ([`At`]) and returns what to do, so the tests drive it
//! without a runtime. [`super::Enforcer`] is the executor: it owns the
//! channels, the outbox, the lineage handle, the TPM and the timers, feeds
//! inputs in and carries actions out, in order.
//!
//! ```mermaid
//! stateDiagram-v2
//!     [*] --> Idle: start (renewal scheduled now)
//!     Idle --> AwaitNonce: due, no nonce / Publish(nonce request)
//!     Idle --> Quoting: due, nonce known / Quote
//!     AwaitNonce --> Quoting: nonce / Quote
//!     Quoting --> AwaitAnswer: quote / Publish(evidence)
//!     Quoting --> Idle: quote failed (retry: same nonce; reattest, fatal: new nonce)
//!     AwaitAnswer --> Idle: artifact (renewal at half-life) / refusal / no answer (backoff)
//!     AwaitNonce --> Idle: no nonce in time (backoff)
//!     Idle --> Idle: a close that voids evidence parks every round
//! ```
//!
//! Two sessions run this way independently: the *renewal* keeps the gate's
//! artifact fresh and reopens a closed gate, the *fresh* session serves
//! operations whose scope demands their own attestation, one at a time
//! (`rounds.rs`). The gate itself is the shim's ([`Gate`]), which applies
//! its deadlines on every input.

mod explain;
mod phase;
mod rounds;

use std::collections::VecDeque;

use mctc_shim::artifact::Currency;
use mctc_shim::crypto::RingCrypto;
use mctc_shim::gate::{
    self, CloseReason, Decision, Gate, GateEvent, GateState, OpRequest, RevokedBy, Verdict,
};
use mctc_shim::lineage::{AttestVerdict, DenyCode};
use mctc_shim::messages::{NoncePurpose, RefusalCode};
use mctc_shim::tpm::BootCounters;
use mctc_shim::{AuthorityKey, DeviceId};

use super::names;
use crate::drift::{Baseline, Finding};
use crate::lineage::entry::Entry;
use crate::lineage::writer::Health;
use crate::platform::{PlatformError, Quote};
use crate::state::RevokedMarker;

pub use explain::Why;
use phase::Sessions;
pub use phase::{QUOTE_TIMEOUT, Which};

/// Which device topic a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    Nonce,
    Artifact,
    Control,
    Heartbeat,
}

/// A request for a governed operation, as validated by the gate socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    pub op: String,
    pub amount: Option<u64>,
    pub currency: Option<Currency>,
    pub reference: Option<String>,
}

impl AuthorizeRequest {
    fn op_request(&self) -> OpRequest<'_> {
        OpRequest {
            op: &self.op,
            amount: self.amount,
            currency: self.currency,
        }
    }
}

/// The executor's handle on one client's pending answer.
pub type Ticket = u64;

/// Tuning of the session (and of the executor: `status_interval_ms`,
/// `version`, `watchdog` are its).
#[derive(Debug, Clone)]
pub struct Settings {
    pub issuer: String,
    pub answer_timeout_ms: u64,
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    pub status_interval_ms: u64,
    pub fresh_timeout_ms: u64,
    pub max_fresh_age_ms: u64,
    /// The PCRs the operator expects to be quoted (`attestation.pcrs`).
    /// The authority names the selection with each nonce and its choice
    /// wins; a difference is logged (once per change) so the
    /// configuration can be fixed.
    pub pcrs: mctc_shim::tpm::PcrSelection,
    pub version: &'static str,
    /// systemd watchdog period (`WATCHDOG_USEC`), if enabled.
    pub watchdog: Option<std::time::Duration>,
    /// Whether the device enrolled (explains a gate that cannot open).
    pub enrolled: bool,
    /// The device certificate's notAfter, Unix ms, if it could be read
    /// (explains a broker that refuses the session).
    pub cert_not_after_ms: Option<u64>,
}

/// The time (and the TPM boot) an input is handled at, read by the
/// executor from its clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    /// CLOCK_BOOTTIME ms: every deadline is decided on this.
    pub now_ms: u64,
    /// Unix ms if the wall clock is trusted (artifact `exp`).
    pub wall_ms: Option<u64>,
    /// Unix ms as the system says (for people: the revocation marker).
    pub wall_display_ms: u64,
    /// The TPM boot counters last observed.
    pub boot: BootCounters,
}

/// A state file to write (off the loop; the result comes back through
/// [`Core::on_persisted`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateWrite {
    Revoked(RevokedMarker),
    ControlSeq(u64),
}

/// What the executor does, in order.
#[derive(Debug)]
pub enum Action {
    /// Queue a lineage record (its failure shows in lineage health).
    Record(Entry),
    /// Publish on a device topic (QoS 1, not retained); a refused publish
    /// is reported back with [`Core::publish_failed`].
    Publish {
        topic: String,
        payload: Vec<u8>,
        round: Which,
    },
    /// Quote `nonce` over `selection` (the authority's); the result comes
    /// back with [`Core::on_quote`].
    Quote {
        round: u64,
        nonce: [u8; 32],
        selection: mctc_shim::tpm::PcrSelection,
    },
    /// Record the decision (the client's answer waits for it to be
    /// durable) and hand the client `ticket` its pending answer.
    Answer {
        ticket: Ticket,
        permit: bool,
        reason: Option<DenyCode>,
        cti: Option<[u8; 16]>,
        valid_until_ms: Option<u64>,
        record: Entry,
    },
    /// The drift check's baseline (none while the gate is not open).
    Baseline(Option<Baseline>),
    /// The TPM boot as a quote showed it.
    Boot(BootCounters),
    /// Write a state file.
    Persist(StateWrite),
    /// The status changed: publish it now.
    Status,
}

/// The last attestation round's outcome, for the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastAttestation {
    pub verdict: AttestVerdict,
    pub purpose: NoncePurpose,
    pub refusal: Option<RefusalCode>,
    pub at_ms: u64,
}

struct FreshRequest {
    ticket: Ticket,
    request: AuthorizeRequest,
    deadline_ms: u64,
}

fn decision_deny(code: DenyCode, cti: Option<[u8; 16]>) -> Decision {
    Decision {
        verdict: Verdict::Deny(code),
        cti,
        events: gate::Events::default(),
    }
}

/// The gate, the attestation sessions and what the agent knows about its
/// connection, TPM and lineage.
pub struct Core {
    settings: Settings,
    device: DeviceId,
    keys: Vec<AuthorityKey>,
    crypto: RingCrypto,
    gate: Gate,
    sessions: Sessions,
    fresh_queue: VecDeque<FreshRequest>,
    connected: bool,
    session: u64,
    last_attestation: Option<LastAttestation>,
    last_heartbeat_hb_ms: Option<u32>,
    tpm_ok: bool,
    persist_error: Option<String>,
    /// The PCR selection the authority last asked for.
    authority_selection: Option<mctc_shim::tpm::PcrSelection>,
    /// Lineage can be written (the writer's last health).
    lineage_ok: bool,
    /// The lineage store failed (IO) since it was last healthy.
    lineage_failed: bool,
    /// What explains a gate that is not open.
    notes: explain::Notes,
    /// The input being handled.
    at: At,
    out: Vec<Action>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("device", &self.device)
            .field("gate", self.gate.state())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// `revoked`, `control_seq`: what the state directory remembers;
    /// `lineage_ok`: the writer's health at start.
    pub fn new(
        settings: Settings,
        device: DeviceId,
        keys: Vec<AuthorityKey>,
        revoked: bool,
        control_seq: Option<u64>,
        lineage_ok: bool,
    ) -> Core {
        let gate = Gate::new(
            gate::GateConfig {
                device: device.clone(),
                max_fresh_age_ms: settings.max_fresh_age_ms,
            },
            gate::Persisted {
                revoked,
                control_seq,
            },
        );
        let notes = explain::Notes {
            enrolled: settings.enrolled,
            cert_not_after_ms: settings.cert_not_after_ms,
            ..explain::Notes::default()
        };
        Core {
            notes,
            sessions: Sessions::new(&device, settings.retry_min_ms, settings.retry_max_ms),
            settings,
            device,
            keys,
            crypto: RingCrypto,
            gate,
            fresh_queue: VecDeque::new(),
            connected: false,
            session: 0,
            last_attestation: None,
            last_heartbeat_hb_ms: None,
            tpm_ok: true,
            persist_error: None,
            authority_selection: None,
            lineage_ok,
            lineage_failed: false,
            at: At {
                now_ms: 0,
                wall_ms: None,
                wall_display_ms: 0,
                boot: BootCounters::default(),
            },
            out: Vec::new(),
        }
    }

    // --- what the executor reads ---

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn connected(&self) -> bool {
        self.connected
    }

    /// Broker sessions since start.
    pub fn session(&self) -> u64 {
        self.session
    }

    pub fn tpm_ok(&self) -> bool {
        self.tpm_ok
    }

    pub fn last_attestation(&self) -> Option<LastAttestation> {
        self.last_attestation
    }

    /// Why the gate is not open (`None` while it is).
    pub fn why(&self) -> Option<Why> {
        self.notes.why(
            self.gate.state(),
            self.device.as_str(),
            self.last_attestation.map(|l| explain::Last {
                verdict: l.verdict,
                at_ms: l.at_ms,
            }),
            self.connected,
            self.tpm_ok,
            self.at.wall_display_ms,
        )
    }

    /// The last failure to persist state, if any.
    pub fn persist_error(&self) -> Option<&str> {
        self.persist_error.as_deref()
    }

    /// When the core next needs [`Core::tick`]: the gate's deadline, a
    /// round's start or timeout, a fresh request's deadline.
    pub fn next_wake(&self) -> Option<u64> {
        [
            self.gate.next_deadline(),
            self.sessions.next_wake(),
            self.fresh_queue.front().map(|f| f.deadline_ms),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // --- inputs ---

    fn begin(&mut self, at: At) {
        self.at = at;
    }

    fn end(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    fn now(&self) -> u64 {
        self.at.now_ms
    }

    /// The executor starts: the renewal runs as soon as it can.
    pub fn start(&mut self, at: At) -> Vec<Action> {
        self.begin(at);
        self.note_state();
        if matches!(self.gate.state(), GateState::Revoked(_)) {
            tracing::warn!(device = %self.device, "device is revoked (persisted); the gate stays closed until re-provisioning");
        }
        self.sessions.schedule_renewal(at.now_ms, None);
        self.end()
    }

    /// Time passed: the gate's deadlines, the rounds' timers, the fresh
    /// requests' deadlines. `client_gone(ticket)`: whether that client
    /// stopped waiting (its request is dropped early).
    pub fn tick(&mut self, at: At, client_gone: &dyn Fn(Ticket) -> bool) -> Vec<Action> {
        self.begin(at);
        self.on_time(client_gone);
        self.end()
    }

    fn on_time(&mut self, client_gone: &dyn Fn(Ticket) -> bool) {
        let now = self.now();
        let events = self.gate.tick(now);
        self.apply(events.as_slice());
        self.session_timers(now);
        self.expire_fresh(now, client_gone);
    }

    /// A message on a subscribed topic.
    pub fn on_message(
        &mut self,
        at: At,
        kind: Inbound,
        payload: &[u8],
        received_ms: u64,
    ) -> Vec<Action> {
        self.begin(at);
        match kind {
            Inbound::Heartbeat => self.on_heartbeat(payload),
            Inbound::Control => self.on_control(payload),
            Inbound::Nonce => self.on_nonce(payload),
            Inbound::Artifact => self.on_artifact_topic(payload, received_ms),
        }
        self.end()
    }

    /// A new broker session.
    pub fn on_connected(&mut self, at: At, session: u64) -> Vec<Action> {
        self.begin(at);
        self.connected = true;
        self.notes.broker_error = None;
        self.session = session;
        self.sessions.on_connected(at.now_ms);
        self.restart_fresh_round();
        self.out.push(Action::Status);
        self.end()
    }

    /// The broker session ended (`error`: the link's reason, shown in
    /// the status while disconnected).
    pub fn on_disconnected(&mut self, error: &str) {
        self.connected = false;
        self.notes.broker_error = Some(mctc_shim::api::Explanation::bounded(error));
    }

    /// A publish of `round` was refused by the outbox: the round failed.
    pub fn publish_failed(&mut self, at: At, round: Which) -> Vec<Action> {
        self.begin(at);
        self.round_failed(round, at.now_ms);
        self.end()
    }

    /// A quote finished.
    pub fn on_quote(
        &mut self,
        at: At,
        round: u64,
        result: Result<Quote, PlatformError>,
    ) -> Vec<Action> {
        self.begin(at);
        self.quote_done(round, result);
        self.end()
    }

    /// A drift check's finding.
    pub fn on_finding(&mut self, at: At, finding: Finding) -> Vec<Action> {
        self.begin(at);
        self.finding(finding);
        self.end()
    }

    /// The lineage writer's health changed.
    pub fn on_lineage_health(&mut self, at: At, health: &Health) -> Vec<Action> {
        self.begin(at);
        self.lineage_health(health);
        self.end()
    }

    /// The lineage writer is gone: nothing can be recorded any more.
    pub fn on_lineage_gone(&mut self, at: At) -> Vec<Action> {
        self.begin(at);
        self.lineage_ok = false;
        let events = self
            .gate
            .close_at(CloseReason::LineageUnavailable, at.now_ms);
        self.apply(events.as_slice());
        self.end()
    }

    /// A state file was written, or not.
    pub fn on_persisted(
        &mut self,
        what: &StateWrite,
        result: Result<(), crate::AgentError>,
    ) -> Vec<Action> {
        match (what, result) {
            (StateWrite::Revoked(_), Ok(())) => {
                tracing::info!(device = %self.device, "revocation persisted");
            }
            (StateWrite::Revoked(_), Err(e)) => {
                tracing::error!(error = %e, "REVOCATION NOT PERSISTED: a restart would not know it");
                self.persist_error = Some(e.to_string());
                self.out.push(Action::Status);
            }
            (StateWrite::ControlSeq(_), Ok(())) => {}
            (StateWrite::ControlSeq(seq), Err(e)) => {
                tracing::error!(error = %e, seq, "control seq not persisted");
                self.persist_error = Some(e.to_string());
                self.out.push(Action::Status);
            }
        }
        self.end()
    }

    /// A client asks for a governed operation; it is answered with
    /// [`Action::Answer`] for `ticket`, now or after a fresh round.
    pub fn authorize(&mut self, at: At, ticket: Ticket, request: AuthorizeRequest) -> Vec<Action> {
        self.begin(at);
        let now = at.now_ms;
        let decision = self.gate.decide(&request.op_request(), now);
        self.apply(decision.events.as_slice());
        if decision.verdict == Verdict::NeedsFreshAttestation {
            tracing::debug!(op = %request.op, "operation needs a fresh attestation");
            self.out.push(Action::Record(Entry::Decision {
                verdict: decision.verdict,
                cti: decision.cti,
                op: request.op.clone(),
                amount: request.amount,
                currency: request.currency,
                reference: request.reference.clone(),
                valid_until_ms: None,
            }));
            self.fresh_queue.push_back(FreshRequest {
                ticket,
                request,
                deadline_ms: now.saturating_add(self.settings.fresh_timeout_ms),
            });
            self.start_fresh_round();
        } else {
            self.answer(ticket, request, decision);
        }
        self.end()
    }

    /// The agent stops: the gate closes and waiting clients are denied.
    pub fn shutdown(&mut self, at: At) -> Vec<Action> {
        self.begin(at);
        let events = self.gate.close_at(CloseReason::Shutdown, at.now_ms);
        self.apply(events.as_slice());
        self.fail_fresh_queue(DenyCode::Closed);
        self.end()
    }

    // --- the gate's events ---

    /// Records the events (in order) and reacts to them.
    fn apply(&mut self, events: &[GateEvent]) {
        let now = self.now();
        for event in events {
            self.out.push(Action::Record(Entry::Gate(event.clone())));
            match event {
                GateEvent::Opened { cti, deadline_ms } => {
                    tracing::info!(device = %self.device, cti = %hex::encode(cti), expires_in_ms = deadline_ms.saturating_sub(now), "gate opened");
                }
                GateEvent::Renewed {
                    cti, deadline_ms, ..
                } => {
                    tracing::debug!(cti = %hex::encode(cti), expires_in_ms = deadline_ms.saturating_sub(now), "artifact renewed");
                }
                GateEvent::Closed(reason) => {
                    tracing::warn!(device = %self.device, reason = %names::close(*reason), "gate closed");
                    if *reason == CloseReason::HeartbeatLapsed {
                        self.out.push(Action::Record(Entry::HeartbeatLapse {
                            last_seq: self.gate.heartbeat_seq(),
                            window_ms: self.hb_window(),
                        }));
                    }
                    self.out.push(Action::Baseline(None));
                    if reason.voids_evidence() {
                        // Drift, TPM loss, a revocation gap, a clock
                        // regression…: nothing quoted before this close may
                        // reopen the gate (the gate refuses it as stale).
                        // Expiry and heartbeat lapse keep the renewal: the
                        // platform did not change.
                        // (A queued fresh operation gets a new round on
                        // the next tick, `expire_fresh`.)
                        self.sessions.void_rounds();
                    }
                    // Recovery: re-attest with a fresh nonce (after the
                    // backoff if the authority refused).
                    let delay = match reason {
                        CloseReason::Refused(_) | CloseReason::AttestationFailed => {
                            Some(self.sessions.failure_delay())
                        }
                        _ => None,
                    };
                    self.sessions.schedule_fresh_renewal(now, delay);
                }
                GateEvent::Contained(_) => {
                    tracing::warn!(device = %self.device, "gate contained");
                    self.out.push(Action::Baseline(None));
                    // An artifact answering pre-containment evidence must
                    // never verify: forget every outstanding nonce.
                    self.sessions.discard_all();
                    self.fail_fresh_queue(DenyCode::Contained);
                }
                GateEvent::Restored { control_seq } => {
                    tracing::info!(device = %self.device, control_seq, "containment lifted; re-attesting");
                    self.sessions.schedule_fresh_renewal(now, None);
                }
                GateEvent::Revoked(by) => {
                    tracing::error!(device = %self.device, ?by, "device revoked");
                    self.out.push(Action::Baseline(None));
                    self.sessions.discard_all();
                    self.fail_fresh_queue(DenyCode::Revoked);
                    self.persist_revocation(by);
                }
            }
        }
        if !events.is_empty() {
            self.note_state();
            self.out.push(Action::Status);
        }
    }

    /// Remembers when the gate entered its state (the status's "since"),
    /// and forgets, once it opens, what explained it closed.
    fn note_state(&mut self) {
        let class = explain::Class::of(self.gate.state());
        if self.notes.since.is_some_and(|(c, _, _)| c == class) {
            return;
        }
        self.notes.since = Some((class, self.at.now_ms, self.at.wall_display_ms));
        if class == explain::Class::Open {
            self.notes.rejection = None;
            self.notes.refusal = None;
            self.notes.drift = None;
        }
    }

    fn hb_window(&self) -> u32 {
        let artifact = self.gate.artifact().map(mctc_shim::VerifiedArtifact::hb_ms);
        match (artifact, self.last_heartbeat_hb_ms) {
            (Some(a), Some(h)) => a.min(h),
            (Some(a), None) => a,
            (None, Some(h)) => h,
            (None, None) => 0,
        }
    }

    fn persist_revocation(&mut self, by: &RevokedBy) {
        let (source, detail) = match by {
            RevokedBy::Control { seq, reason } => {
                ("control", format!("seq {seq}: {}", reason.as_str()))
            }
            RevokedBy::Heartbeat { seq, epoch } => {
                ("heartbeat", format!("seq {seq}, epoch {epoch}"))
            }
            RevokedBy::Refusal => ("refusal", String::new()),
            RevokedBy::Persisted => return,
        };
        self.out
            .push(Action::Persist(StateWrite::Revoked(RevokedMarker {
                source: source.into(),
                detail,
                wall_ms: self.at.wall_display_ms,
            })));
    }

    // --- broker messages other than the session's ---

    fn on_heartbeat(&mut self, payload: &[u8]) {
        let heartbeat = match gate::verify_heartbeat(payload, &self.keys, &self.crypto) {
            Ok(hb) => hb,
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat rejected");
                return;
            }
        };
        let now = self.now();
        let hb_ms = heartbeat.message().hb_ms;
        match self.gate.on_heartbeat(&heartbeat, now) {
            Ok(events) => {
                self.last_heartbeat_hb_ms = Some(hb_ms);
                self.apply(events.as_slice());
            }
            Err(e) => tracing::debug!(error = %e, "heartbeat not applied"),
        }
    }

    fn on_control(&mut self, payload: &[u8]) {
        let control = match gate::verify_control(payload, &self.keys, &self.crypto, &self.device) {
            Ok(control) => control,
            Err(e) => {
                tracing::warn!(error = %e, "control message rejected");
                return;
            }
        };
        let now = self.now();
        let (seq, action) = (control.message().seq, control.message().action);
        match self.gate.on_control(&control, now) {
            Ok(events) => {
                tracing::info!(device = %self.device, seq, ?action, reason = control.message().reason.as_str(), "control accepted");
                self.out
                    .push(Action::Record(Entry::ControlReceived { seq, action }));
                self.out.push(Action::Persist(StateWrite::ControlSeq(seq)));
                self.apply(events.as_slice());
            }
            Err(e) => tracing::warn!(error = %e, "control message not applied"),
        }
    }

    // --- the platform and lineage ---

    fn finding(&mut self, finding: Finding) {
        let now = self.now();
        match finding {
            Finding::Drift { kind, detail, cti } => {
                let current = self.gate.artifact().map(|a| *a.cti());
                if cti.is_some() && cti != current {
                    return;
                }
                tracing::error!(device = %self.device, what = names::drift(kind), %detail, "drift detected");
                self.notes.drift = Some((kind, mctc_shim::api::Explanation::bounded(&detail)));
                self.out.push(Action::Record(Entry::drift(kind, &detail)));
                let events = self.gate.drift(kind, now);
                self.apply(events.as_slice());
            }
            Finding::TpmUnavailable { detail, class } => {
                // Reported on every drift check while the TPM is away: each
                // report closes again (and voids evidence), so nothing keeps
                // the gate open without a TPM, and no round starts — whatever
                // the class: a TPM busy for longer than a drift read cannot
                // vouch for the gate either.
                let class = crate::platform::class_name(class);
                self.notes.tpm_error = Some(mctc_shim::api::Explanation::bounded(&detail));
                if std::mem::replace(&mut self.tpm_ok, false) {
                    tracing::error!(%detail, class, "TPM unavailable: closing the gate");
                } else {
                    tracing::debug!(%detail, class, "TPM still unavailable");
                }
                let events = self.gate.close_at(CloseReason::AttestationFailed, now);
                self.apply(events.as_slice());
            }
            Finding::TpmBack => {
                tracing::info!("TPM answers again; re-attesting");
                self.tpm_ok = true;
                if !matches!(self.gate.state(), GateState::Open(_)) {
                    self.sessions.schedule_fresh_renewal(now, None);
                }
                self.start_fresh_round();
                self.out.push(Action::Status);
            }
        }
    }

    fn lineage_health(&mut self, health: &Health) {
        let now = self.now();
        self.lineage_ok = health.is_ok();
        match health {
            Health::Ok => {
                if std::mem::take(&mut self.lineage_failed)
                    && self.gate.state() == &GateState::Closed(CloseReason::LineageUnavailable)
                {
                    // The failed store refused the record of this close;
                    // written now, so the lineage says why decisions
                    // stopped before the gate reopens.
                    self.out.push(Action::Record(Entry::Gate(GateEvent::Closed(
                        CloseReason::LineageUnavailable,
                    ))));
                }
                // Writable again: a closed gate may reopen through a new
                // attestation.
                if matches!(self.gate.state(), GateState::Closed(_)) {
                    self.sessions.schedule_fresh_renewal(now, None);
                }
            }
            Health::QuotaReached | Health::Failed(_) => {
                self.lineage_failed |= matches!(health, Health::Failed(_));
                let events = self.gate.close_at(CloseReason::LineageUnavailable, now);
                self.apply(events.as_slice());
            }
        }
        self.out.push(Action::Status);
    }

    // --- answers ---

    /// Queues `decision`'s record and the client's pending answer.
    fn answer(&mut self, ticket: Ticket, request: AuthorizeRequest, decision: Decision) {
        let (permit, reason) = match decision.verdict {
            Verdict::Permit => (true, None),
            Verdict::Deny(code) => (false, Some(code)),
            Verdict::NeedsFreshAttestation => (false, Some(DenyCode::FreshAttestationInvalid)),
        };
        tracing::debug!(op = %request.op, permit, reason = reason.map(DenyCode::name), "decision");
        let cti = decision.cti;
        let valid_until_ms = if permit {
            self.gate.next_deadline()
        } else {
            None
        };
        self.out.push(Action::Answer {
            ticket,
            permit,
            reason,
            cti,
            valid_until_ms,
            record: Entry::Decision {
                verdict: decision.verdict,
                cti,
                op: request.op,
                amount: request.amount,
                currency: request.currency,
                reference: request.reference,
                valid_until_ms,
            },
        });
    }

    fn fail_fresh_queue(&mut self, code: DenyCode) {
        self.sessions.discard_fresh();
        while let Some(fresh) = self.fresh_queue.pop_front() {
            self.answer(fresh.ticket, fresh.request, decision_deny(code, None));
        }
    }

    fn expire_fresh(&mut self, now: u64, client_gone: &dyn Fn(Ticket) -> bool) {
        while self
            .fresh_queue
            .front()
            .is_some_and(|f| now >= f.deadline_ms || client_gone(f.ticket))
        {
            if let Some(fresh) = self.fresh_queue.pop_front() {
                tracing::warn!(op = %fresh.request.op, "fresh attestation did not complete in time");
                self.sessions.discard_fresh();
                self.answer(
                    fresh.ticket,
                    fresh.request,
                    decision_deny(DenyCode::FreshAttestationInvalid, None),
                );
            }
        }
        self.start_fresh_round();
    }
}

#[cfg(test)]
mod tests;

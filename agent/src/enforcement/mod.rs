//! The enforcement task: the one owner of the shim's [`Gate`].
//!
//! Everything that changes or asks the gate is a message to this task
//! ([`Input`]): broker messages (nonces, artifacts and refusals,
//! heartbeats, controls), authorize and status requests from the gate
//! socket, quote results, drift findings, lineage health, shutdown. It
//! arms one timer for the earliest of its deadlines (the gate's own, the
//! next renewal, answer timeouts, the status period, the watchdog), but the
//! gate applies its deadlines itself on every input, so it is closed *at*
//! the deadline whatever the timer does.
//!
//! Every gate event and every decision is queued to the lineage writer in
//! the same step it is made, so lineage order is decision order. A permit
//! is given to the client only once its record is durable (see
//! [`Pending`]).
//!
//! The attestation session lives here too ([`attestation`]): nonce →
//! quote → evidence → artifact or refusal, renewal at half-life with ±10 %
//! jitter using `next_nonce`, fresh rounds for operations that need them.

mod attestation;
pub mod names;
pub mod status;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use mctc_service::link::QoS;
use mctc_shim::artifact::Currency;
use mctc_shim::crypto::RingCrypto;
use mctc_shim::gate::{
    self, CloseReason, Decision, Gate, GateEvent, GateState, OpRequest, RevokedBy, Verdict,
};
use mctc_shim::lineage::DenyCode;
use mctc_shim::{AuthorityKey, DeviceId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::{Clock, CurrentBoot};
use crate::drift::{Baseline, Finding};
use crate::lineage::entry::Entry;
use crate::lineage::forwarder::ForwardStatus;
use crate::lineage::writer::{Health, LineageHandle, LineageStatus, Refused};
use crate::outbox::Outbox;
use crate::platform::{Platform, Quote};
use crate::state::{RevokedMarker, StateDir};
use attestation::Sessions;
use mctc_shim::api::{GateSummary, LineageHealth, TpmHealth};
use status::{ArtifactCore, AttestationCore, LineageCore, StatusCore};

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

/// The gate's answer, valid only once `durable` says the decision record
/// is on disk. A permit whose record is not durable is a deny, and so is one
/// whose record became durable only at or after `valid_until_ms`.
#[derive(Debug)]
pub struct Pending {
    pub permit: bool,
    pub reason: Option<DenyCode>,
    pub cti: Option<[u8; 16]>,
    /// For a permit: the gate's deadline when it was decided (CLOCK_BOOTTIME
    /// ms, the artifact's or the heartbeat window's). A client told
    /// "permit" later would act on a lapsed authorization — after a stalled
    /// fdatasync, or a suspension (SIGSTOP) between decision and answer.
    pub valid_until_ms: Option<u64>,
    pub durable: oneshot::Receiver<Result<u64, Refused>>,
}

/// Everything the enforcement task reacts to.
#[derive(Debug)]
pub enum Input {
    /// A message on a subscribed topic, with its CLOCK_BOOTTIME arrival.
    Message {
        kind: Inbound,
        payload: Vec<u8>,
        received_ms: u64,
    },
    Connected {
        session: u64,
    },
    Disconnected,
    Authorize {
        request: AuthorizeRequest,
        reply: oneshot::Sender<Pending>,
    },
    Status {
        reply: oneshot::Sender<mctc_shim::api::Status>,
    },
    QuoteDone {
        round: u64,
        result: Result<Quote, String>,
    },
    Finding(Finding),
    /// Close the gate, record the stop, answer when the stop record is
    /// durable.
    Shutdown {
        reason: String,
        reply: oneshot::Sender<()>,
    },
}

/// Tuning of the enforcement task.
#[derive(Debug, Clone)]
pub struct Settings {
    pub issuer: String,
    pub answer_timeout_ms: u64,
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    pub status_interval_ms: u64,
    pub fresh_timeout_ms: u64,
    pub max_fresh_age_ms: u64,
    /// The PCRs quoted as evidence (what the platform's quote covers).
    pub pcrs: mctc_shim::tpm::PcrSelection,
    pub version: &'static str,
    /// systemd watchdog period (`WATCHDOG_USEC`), if enabled.
    pub watchdog: Option<Duration>,
}

/// Sends `WATCHDOG=1`; a trait so that tests need no systemd.
pub trait Watchdog: Send + 'static {
    fn ping(&mut self);
}

/// The wiring the enforcement task needs.
#[derive(Debug)]
pub struct Parts<P: Platform, O: Outbox> {
    pub device: DeviceId,
    pub keys: Vec<AuthorityKey>,
    pub revoked: bool,
    pub control_seq: Option<u64>,
    pub clock: Arc<dyn Clock>,
    pub boot: CurrentBoot,
    pub platform: P,
    pub outbox: O,
    pub lineage: LineageHandle,
    pub forward: watch::Receiver<ForwardStatus>,
    pub state: StateDir,
    pub inbox: mpsc::Sender<Input>,
    pub baseline: watch::Sender<Option<Baseline>>,
}

struct FreshRequest {
    request: AuthorizeRequest,
    reply: oneshot::Sender<Pending>,
    deadline_ms: u64,
}

/// The gate's owner.
pub struct Enforcer<P: Platform, O: Outbox> {
    settings: Settings,
    device: DeviceId,
    keys: Vec<AuthorityKey>,
    crypto: RingCrypto,
    gate: Gate,
    clock: Arc<dyn Clock>,
    boot: CurrentBoot,
    platform: P,
    outbox: O,
    lineage: LineageHandle,
    lineage_status: watch::Receiver<LineageStatus>,
    forward: watch::Receiver<ForwardStatus>,
    state: StateDir,
    inbox: mpsc::Sender<Input>,
    baseline: watch::Sender<Option<Baseline>>,
    sessions: Sessions,
    fresh_queue: VecDeque<FreshRequest>,
    connected: bool,
    session: u64,
    last_attestation: Option<AttestationCore>,
    last_heartbeat_hb_ms: Option<u32>,
    tpm_ok: bool,
    persist_error: Option<String>,
    /// The lineage store failed (IO) since it was last healthy.
    lineage_failed: bool,
    published: Option<StatusCore>,
    next_status_ms: u64,
    watchdog: Option<Box<dyn Watchdog>>,
    next_watchdog_ms: u64,
    status_topic: String,
}

impl<P: Platform, O: Outbox> std::fmt::Debug for Enforcer<P, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer")
            .field("device", &self.device)
            .field("gate", self.gate.state())
            .finish_non_exhaustive()
    }
}

fn decision_deny(code: DenyCode, cti: Option<[u8; 16]>) -> Decision {
    Decision {
        verdict: Verdict::Deny(code),
        cti,
        events: gate::Events::default(),
    }
}

impl<P: Platform, O: Outbox> Enforcer<P, O> {
    pub fn new(
        settings: Settings,
        parts: Parts<P, O>,
        watchdog: Option<Box<dyn Watchdog>>,
    ) -> Self {
        let gate = Gate::new(
            gate::GateConfig {
                device: parts.device.clone(),
                max_fresh_age_ms: settings.max_fresh_age_ms,
            },
            gate::Persisted {
                revoked: parts.revoked,
                control_seq: parts.control_seq,
            },
        );
        let status_topic = mctc_shim::topics::DeviceTopic::Status
            .topic(&parts.device)
            .as_str()
            .to_owned();
        let lineage_status = parts.lineage.status();
        Enforcer {
            sessions: Sessions::new(&parts.device, settings.retry_min_ms, settings.retry_max_ms),
            settings,
            device: parts.device,
            keys: parts.keys,
            crypto: RingCrypto,
            gate,
            clock: parts.clock,
            boot: parts.boot,
            platform: parts.platform,
            outbox: parts.outbox,
            lineage: parts.lineage,
            lineage_status,
            forward: parts.forward,
            state: parts.state,
            inbox: parts.inbox,
            baseline: parts.baseline,
            fresh_queue: VecDeque::new(),
            connected: false,
            session: 0,
            last_attestation: None,
            last_heartbeat_hb_ms: None,
            tpm_ok: true,
            persist_error: None,
            lineage_failed: false,
            published: None,
            next_status_ms: 0,
            watchdog,
            next_watchdog_ms: 0,
            status_topic,
        }
    }

    /// The gate (for tests and status).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Runs until shutdown or until every input sender is gone.
    pub async fn run(mut self, mut inbox: mpsc::Receiver<Input>) {
        let mut lineage = self.lineage.status();
        let mut forward = self.forward.clone();
        // A watch whose sender is gone would wake the loop forever.
        let (mut lineage_open, mut forward_open) = (true, true);
        let now = self.now();
        if matches!(self.gate.state(), GateState::Revoked(_)) {
            tracing::warn!(device = %self.device, "device is revoked (persisted); the gate stays closed until re-provisioning");
        }
        self.sessions.schedule_renewal(now, None);
        loop {
            let now = self.now();
            let wake = self.next_wake(now);
            let sleep = Duration::from_millis(wake.saturating_sub(now).max(1));
            tokio::select! {
                input = inbox.recv() => match input {
                    Some(Input::Shutdown { reason, reply }) => {
                        self.shutdown(&reason).await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(input) => {
                        // Deadlines first: an input that arrives after one
                        // (a status request in the same millisecond as the
                        // timer) sees the gate as it is now.
                        self.on_time();
                        self.handle(input);
                    }
                    None => return,
                },
                changed = lineage.changed(), if lineage_open => {
                    if changed.is_ok() {
                        let health = lineage.borrow_and_update().health.clone();
                        self.on_lineage_health(&health);
                    } else {
                        lineage_open = false;
                        let now = self.now();
                        let events = self.gate.close_at(CloseReason::LineageUnavailable, now);
                        self.apply(events.as_slice());
                    }
                }
                changed = forward.changed(), if forward_open => {
                    if changed.is_ok() {
                        forward.borrow_and_update();
                    } else {
                        forward_open = false;
                    }
                }
                () = tokio::time::sleep(sleep) => {}
            }
            self.on_time();
            self.publish_status(false);
            self.feed_watchdog();
        }
    }

    fn next_wake(&self, now: u64) -> u64 {
        let mut wake = self.next_status_ms.max(now);
        let mut consider = |t: Option<u64>| {
            if let Some(t) = t {
                wake = wake.min(t);
            }
        };
        consider(self.gate.next_deadline());
        consider(self.sessions.next_wake());
        consider(self.fresh_queue.front().map(|f| f.deadline_ms));
        if self.watchdog.is_some() {
            consider(Some(self.next_watchdog_ms));
        }
        wake
    }

    fn feed_watchdog(&mut self) {
        let now = self.now();
        let Some(period) = self.settings.watchdog else {
            return;
        };
        if now < self.next_watchdog_ms {
            return;
        }
        if let Some(dog) = self.watchdog.as_mut() {
            dog.ping();
        }
        let half = u64::try_from(period.as_millis() / 2)
            .unwrap_or(u64::MAX)
            .max(1);
        self.next_watchdog_ms = now.saturating_add(half);
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Message {
                kind,
                payload,
                received_ms,
            } => match kind {
                Inbound::Heartbeat => self.on_heartbeat(&payload),
                Inbound::Control => self.on_control(&payload),
                Inbound::Nonce => self.on_nonce(&payload),
                Inbound::Artifact => self.on_artifact_topic(&payload, received_ms),
            },
            Input::Connected { session } => {
                self.connected = true;
                self.session = session;
                let now = self.now();
                self.sessions.on_connected(now);
                self.restart_fresh_round();
                self.publish_status(true);
            }
            Input::Disconnected => {
                self.connected = false;
            }
            Input::Authorize { request, reply } => self.authorize(request, reply),
            Input::Status { reply } => {
                let now = self.now();
                let _ = reply.send(status::render(
                    &self.status_core(now),
                    now,
                    mctc_service::clock::wall_ms(),
                ));
            }
            Input::QuoteDone { round, result } => self.on_quote(round, result),
            Input::Finding(finding) => self.on_finding(finding),
            Input::Shutdown { .. } => {}
        }
    }

    /// Applies the gate's deadlines and the session timers.
    fn on_time(&mut self) {
        let now = self.now();
        let events = self.gate.tick(now);
        self.apply(events.as_slice());
        self.session_timers(now);
        self.expire_fresh(now);
    }

    /// Writes the events to lineage (in order) and reacts to them.
    fn apply(&mut self, events: &[GateEvent]) {
        for event in events {
            self.lineage.record(Entry::Gate(event.clone()));
            let now = self.now();
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
                        self.lineage.record(Entry::HeartbeatLapse {
                            last_seq: self.gate.heartbeat_seq(),
                            window_ms: self.hb_window(),
                        });
                    }
                    self.baseline.send_replace(None);
                    if reason.voids_evidence() {
                        // Drift, TPM loss, a revocation gap, a clock
                        // regression…: nothing quoted before this close may
                        // reopen the gate (the gate refuses it as stale).
                        // Expiry and heartbeat lapse keep the renewal: the
                        // platform did not change.
                        // (A queued fresh operation gets a new round on
                        // the next pass of the loop, `expire_fresh`.)
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
                    self.baseline.send_replace(None);
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
                    self.baseline.send_replace(None);
                    self.sessions.discard_all();
                    self.fail_fresh_queue(DenyCode::Revoked);
                    self.persist_revocation(by);
                }
            }
        }
        if !events.is_empty() {
            self.publish_status(true);
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
        let marker = RevokedMarker {
            source: source.into(),
            detail,
            wall_ms: mctc_service::clock::wall_ms(),
        };
        if let Err(e) = self.state.set_revoked(&marker) {
            tracing::error!(error = %e, "REVOCATION NOT PERSISTED: a restart would not know it");
            self.persist_error = Some(e.to_string());
        }
    }

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
                self.lineage.record(Entry::ControlReceived { seq, action });
                if let Err(e) = self.state.set_control_seq(seq) {
                    tracing::error!(error = %e, "control seq not persisted");
                    self.persist_error = Some(e.to_string());
                }
                self.apply(events.as_slice());
            }
            Err(e) => tracing::warn!(error = %e, "control message not applied"),
        }
    }

    fn on_finding(&mut self, finding: Finding) {
        let now = self.now();
        match finding {
            Finding::Drift { kind, detail, cti } => {
                let current = self.gate.artifact().map(|a| *a.cti());
                if cti.is_some() && cti != current {
                    return;
                }
                tracing::error!(device = %self.device, what = names::drift(kind), %detail, "drift detected");
                self.lineage.record(Entry::drift(kind, &detail));
                let events = self.gate.drift(kind, now);
                self.apply(events.as_slice());
            }
            Finding::TpmUnavailable { detail } => {
                // Reported on every drift check while the TPM is away: each
                // report closes again (and voids evidence), so nothing keeps
                // the gate open without a TPM, and no round starts.
                if std::mem::replace(&mut self.tpm_ok, false) {
                    tracing::error!(%detail, "TPM unavailable: closing the gate");
                } else {
                    tracing::debug!(%detail, "TPM still unavailable");
                }
                let events = self.gate.close_at(CloseReason::AttestationFailed, now);
                self.apply(events.as_slice());
                self.publish_status(false);
            }
            Finding::TpmBack => {
                tracing::info!("TPM answers again; re-attesting");
                self.tpm_ok = true;
                if !matches!(self.gate.state(), GateState::Open(_)) {
                    self.sessions.schedule_fresh_renewal(now, None);
                }
                self.start_fresh_round();
                self.publish_status(true);
            }
        }
    }

    fn on_lineage_health(&mut self, health: &Health) {
        let now = self.now();
        match health {
            Health::Ok => {
                if std::mem::take(&mut self.lineage_failed)
                    && self.gate.state() == &GateState::Closed(CloseReason::LineageUnavailable)
                {
                    // The failed store refused the record of this close;
                    // written now, so the lineage says why decisions
                    // stopped before the gate reopens.
                    self.lineage.record(Entry::Gate(GateEvent::Closed(
                        CloseReason::LineageUnavailable,
                    )));
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
        self.publish_status(true);
    }

    fn lineage_ok(&self) -> bool {
        self.lineage_status.borrow().health.is_ok()
    }

    fn authorize(&mut self, request: AuthorizeRequest, reply: oneshot::Sender<Pending>) {
        let now = self.now();
        let decision = self.gate.decide(&request.op_request(), now);
        self.apply(decision.events.as_slice());
        if decision.verdict == Verdict::NeedsFreshAttestation {
            tracing::debug!(op = %request.op, "operation needs a fresh attestation");
            self.lineage.record(Entry::Decision {
                verdict: decision.verdict,
                cti: decision.cti,
                op: request.op.clone(),
                amount: request.amount,
                currency: request.currency,
                reference: request.reference.clone(),
                valid_until_ms: None,
            });
            self.fresh_queue.push_back(FreshRequest {
                request,
                reply,
                deadline_ms: now.saturating_add(self.settings.fresh_timeout_ms),
            });
            self.start_fresh_round();
            return;
        }
        self.answer(request, reply, decision);
    }

    /// Records `decision` and hands the client its pending answer.
    fn answer(
        &mut self,
        request: AuthorizeRequest,
        reply: oneshot::Sender<Pending>,
        decision: Decision,
    ) {
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
        let durable = self.lineage.append(Entry::Decision {
            verdict: decision.verdict,
            cti,
            op: request.op,
            amount: request.amount,
            currency: request.currency,
            reference: request.reference,
            valid_until_ms,
        });
        let _ = reply.send(Pending {
            permit,
            reason,
            cti,
            valid_until_ms,
            durable,
        });
    }

    fn fail_fresh_queue(&mut self, code: DenyCode) {
        self.sessions.discard_fresh();
        while let Some(fresh) = self.fresh_queue.pop_front() {
            self.answer(fresh.request, fresh.reply, decision_deny(code, None));
        }
    }

    fn expire_fresh(&mut self, now: u64) {
        while self
            .fresh_queue
            .front()
            .is_some_and(|f| now >= f.deadline_ms || f.reply.is_closed())
        {
            if let Some(fresh) = self.fresh_queue.pop_front() {
                tracing::warn!(op = %fresh.request.op, "fresh attestation did not complete in time");
                self.sessions.discard_fresh();
                self.answer(
                    fresh.request,
                    fresh.reply,
                    decision_deny(DenyCode::FreshAttestationInvalid, None),
                );
            }
        }
        self.start_fresh_round();
    }

    async fn shutdown(&mut self, reason: &str) {
        let now = self.now();
        let events = self.gate.close_at(CloseReason::Shutdown, now);
        self.apply(events.as_slice());
        self.fail_fresh_queue(DenyCode::Closed);
        let stop = self.lineage.append(Entry::agent_stop(reason));
        match tokio::time::timeout(Duration::from_secs(5), stop).await {
            Ok(Ok(Ok(seq))) => tracing::info!(seq, "stop recorded"),
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "stop not recorded"),
            _ => tracing::error!("stop record not confirmed"),
        }
    }

    fn status_core(&self, now: u64) -> StatusCore {
        let GateSummary {
            state,
            reason,
            detail,
        } = GateSummary::of(self.gate.state());
        let artifact = self.gate.artifact().map(|a| ArtifactCore {
            cti: hex::encode(a.cti()),
            deadline_ms: a.deadline_ms(),
            exp: a.exp(),
            scope: a.scope().iter().map(|s| s.op().to_owned()).collect(),
        });
        let lineage = self.lineage_status.borrow().clone();
        let forward = self.forward.borrow().clone();
        let (health, error) = match &lineage.health {
            Health::Ok => (LineageHealth::Ok, None),
            Health::QuotaReached => (LineageHealth::QuotaReached, None),
            Health::Failed(e) => (LineageHealth::Failed, Some(e.clone())),
        };
        let acked_next = forward
            .acked
            .map_or(lineage.first_seq.unwrap_or(0), |a| a + 1);
        let detail = detail.or_else(|| self.persist_error.clone());
        let _ = now;
        StatusCore {
            device: self.device.as_str().to_owned(),
            state,
            reason,
            detail,
            artifact,
            last_attestation: self.last_attestation.clone(),
            heartbeat_seq: self.gate.heartbeat_seq(),
            connected: self.connected,
            session: self.session,
            tpm: if self.tpm_ok {
                TpmHealth::Ok
            } else {
                TpmHealth::Unavailable
            },
            lineage: LineageCore {
                health,
                error,
                next_seq: lineage.next_seq,
                acked_seq: forward.acked,
                pruned_through: forward.pruned_through,
                rejected_receipts: forward.rejected_receipts,
                backlog: lineage.next_seq.saturating_sub(acked_next),
                used_bytes: lineage.used_bytes,
                quota_bytes: lineage.quota_bytes,
                last_checkpoint: lineage.last_checkpoint,
                anomaly: forward.anomaly,
                records: lineage.records,
                syncs: lineage.syncs,
            },
            version: self.settings.version,
        }
    }

    /// Publishes the retained status when it changed (or `force`), and at
    /// least every status interval.
    fn publish_status(&mut self, force: bool) {
        let now = self.now();
        let core = self.status_core(now);
        let changed = self.published.as_ref() != Some(&core);
        if !(force || changed || now >= self.next_status_ms) {
            return;
        }
        if !self.connected {
            // Published on the next connection (which forces a publish).
            self.published = Some(core);
            self.next_status_ms = now.saturating_add(self.settings.status_interval_ms);
            return;
        }
        let json = status::render(&core, now, mctc_service::clock::wall_ms());
        let payload = serde_json::to_vec(&json).unwrap_or_default();
        if self
            .outbox
            .try_publish(&self.status_topic, payload, QoS::AtLeastOnce, true)
        {
            self.published = Some(core);
            self.next_status_ms = now.saturating_add(self.settings.status_interval_ms);
        }
    }
}

#[cfg(test)]
mod tests;

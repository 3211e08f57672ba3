//! The enforcement task: the executor of the session core.
//!
//! [`session::Core`] owns the shim's [`Gate`](mctc_shim::gate::Gate) and the
//! attestation session and does no IO; this task feeds it everything that
//! changes or asks the gate ([`Input`]: broker messages — nonces, artifacts
//! and refusals, heartbeats, controls —, authorize and status requests from
//! the gate socket, quote results, drift findings, lineage health, state
//! files written, shutdown) with the time read from the [`Clock`], and
//! carries out the [`Action`]s it returns, in order: lineage records and
//! answers, publishes, quotes (spawned, with a timeout), the drift baseline,
//! state files (written off the loop by one writer task), the status. It
//! arms one timer for the earliest of the core's deadlines (the gate's own,
//! the next round, answer timeouts, fresh requests), the status period and
//! the watchdog, but the gate applies its deadlines itself on every input,
//! so it is closed *at* the deadline whatever the timer does.
//!
//! Every gate event and every decision is queued to the lineage writer in
//! the order the core made them, so lineage order is decision order. A
//! permit is given to the client only once its record is durable (see
//! [`Pending`]).

pub mod names;
pub mod session;
pub mod status;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mctc_service::link::QoS;
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::{Clock, CurrentBoot};
use crate::drift::{Baseline, Finding};
use crate::lineage::entry::Entry;
use crate::lineage::forwarder::ForwardStatus;
use crate::lineage::writer::{Health, LineageHandle, LineageStatus, Refused};
use crate::outbox::Outbox;
use crate::platform::{Platform, PlatformError, PlatformOp, Quote};
use crate::state::StateDir;
use mctc_shim::api::{GateSummary, LineageHealth, TpmHealth};
use mctc_shim::lineage::DenyCode;
use session::{Action, At, Core, Ticket};
pub use session::{AuthorizeRequest, Inbound, Settings, StateWrite};
use status::{ArtifactCore, AttestationCore, LineageCore, StatusCore};

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
    /// The broker session ended, with the link's reason.
    Disconnected {
        error: String,
    },
    Authorize {
        request: AuthorizeRequest,
        reply: oneshot::Sender<Pending>,
    },
    Status {
        reply: oneshot::Sender<mctc_shim::api::Status>,
    },
    QuoteDone {
        round: u64,
        result: Result<Quote, PlatformError>,
    },
    Finding(Finding),
    /// A state file written off the loop ([`StateWrite`]) is durable, or
    /// failed.
    Persisted {
        what: StateWrite,
        result: Result<(), crate::AgentError>,
    },
    /// Close the gate, record the stop, answer when the stop record is
    /// durable.
    Shutdown {
        reason: String,
        reply: oneshot::Sender<()>,
    },
}

impl StateWrite {
    fn write(&self, state: &StateDir) -> Result<(), crate::AgentError> {
        match self {
            StateWrite::Revoked(marker) => state.set_revoked(marker),
            StateWrite::ControlSeq(seq) => state.set_control_seq(*seq),
        }
    }
}

/// Writes state files in order until `writes` closes: each is an atomic
/// write with fsyncs, which must not stall the loop (the gate's deadlines,
/// the socket's answers), and one task writes them one at a time, so a
/// later control seq never lands before an earlier one. The result comes
/// back as [`Input::Persisted`]. Neither can open anything: the revoked
/// gate is closed for good in this process whether or not its marker is
/// durable yet; a failure is reported loudly and shown in the status.
async fn write_state(
    state: StateDir,
    mut writes: mpsc::UnboundedReceiver<StateWrite>,
    inbox: mpsc::Sender<Input>,
) {
    while let Some(what) = writes.recv().await {
        let dir = state.clone();
        let job = what.clone();
        let result = match tokio::task::spawn_blocking(move || job.write(&dir)).await {
            Ok(result) => result,
            Err(e) => Err(crate::AgentError::Startup(format!("state write task: {e}"))),
        };
        // Not awaited: during shutdown nobody reads the inbox any more,
        // so a failure is logged here then.
        if let Err(e) = inbox.try_send(Input::Persisted { what, result })
            && let Input::Persisted {
                what,
                result: Err(error),
            } = e.into_inner()
        {
            tracing::error!(%error, ?what, "STATE FILE NOT WRITTEN");
        }
    }
}

/// The drift check reports into the inbox.
impl crate::drift::Findings for mpsc::Sender<Input> {
    async fn report(&self, finding: Finding) -> bool {
        self.send(Input::Finding(finding)).await.is_ok()
    }
}

/// Sends `WATCHDOG=1`; a trait so that tests need no systemd.
pub trait Watchdog: Send + 'static {
    fn ping(&mut self);
}

/// The wiring the enforcement task needs.
#[derive(Debug)]
pub struct Parts<P: Platform, O: Outbox> {
    pub device: mctc_shim::DeviceId,
    pub keys: Vec<mctc_shim::AuthorityKey>,
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

/// The executor: the session core plus everything it needs done.
pub struct Enforcer<P: Platform, O: Outbox> {
    core: Core,
    clock: Arc<dyn Clock>,
    boot: CurrentBoot,
    platform: P,
    outbox: O,
    lineage: LineageHandle,
    lineage_status: watch::Receiver<LineageStatus>,
    forward: watch::Receiver<ForwardStatus>,
    state: StateDir,
    /// The queue of [`StateWrite`]s and the task that writes them (started
    /// by `run`).
    state_writes: Option<(
        mpsc::UnboundedSender<StateWrite>,
        tokio::task::JoinHandle<()>,
    )>,
    inbox: mpsc::Sender<Input>,
    baseline: watch::Sender<Option<Baseline>>,
    /// Clients waiting for their answer, by ticket.
    replies: HashMap<Ticket, oneshot::Sender<Pending>>,
    next_ticket: Ticket,
    published: Option<StatusCore>,
    next_status_ms: u64,
    watchdog: Option<Box<dyn Watchdog>>,
    next_watchdog_ms: u64,
    status_topic: String,
}

impl<P: Platform, O: Outbox> std::fmt::Debug for Enforcer<P, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer")
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl<P: Platform, O: Outbox> Enforcer<P, O> {
    pub fn new(
        settings: Settings,
        parts: Parts<P, O>,
        watchdog: Option<Box<dyn Watchdog>>,
    ) -> Self {
        let status_topic = mctc_shim::topics::DeviceTopic::Status
            .topic(&parts.device)
            .as_str()
            .to_owned();
        let lineage_status = parts.lineage.status();
        let lineage_ok = lineage_status.borrow().health.is_ok();
        Enforcer {
            core: Core::new(
                settings,
                parts.device,
                parts.keys,
                parts.revoked,
                parts.control_seq,
                lineage_ok,
            ),
            clock: parts.clock,
            boot: parts.boot,
            platform: parts.platform,
            outbox: parts.outbox,
            lineage: parts.lineage,
            lineage_status,
            forward: parts.forward,
            state: parts.state,
            state_writes: None,
            inbox: parts.inbox,
            baseline: parts.baseline,
            replies: HashMap::new(),
            next_ticket: 0,
            published: None,
            next_status_ms: 0,
            watchdog,
            next_watchdog_ms: 0,
            status_topic,
        }
    }

    /// The gate (for tests and status).
    pub fn gate(&self) -> &mctc_shim::gate::Gate {
        self.core.gate()
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The time an input is handled at, as the core takes it.
    fn at(&self) -> At {
        At {
            now_ms: self.clock.now_ms(),
            wall_ms: self.clock.wall_ms(),
            wall_display_ms: self.clock.wall_display_ms(),
            boot: self.boot.get(),
        }
    }

    /// Runs until shutdown or until every input sender is gone.
    pub async fn run(mut self, mut inbox: mpsc::Receiver<Input>) {
        let mut lineage = self.lineage.status();
        let mut forward = self.forward.clone();
        // A watch whose sender is gone would wake the loop forever.
        let (mut lineage_open, mut forward_open) = (true, true);
        let (writes, queue) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_state(self.state.clone(), queue, self.inbox.clone()));
        self.state_writes = Some((writes, writer));
        let actions = self.core.start(self.at());
        self.execute(actions);
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
                        // Lineage health first: the core must not install
                        // an artifact on a store that just failed.
                        if lineage_open && lineage.has_changed().unwrap_or(false) {
                            let health = lineage.borrow_and_update().health.clone();
                            let actions = self.core.on_lineage_health(self.at(), &health);
                            self.execute(actions);
                        }
                        // Deadlines next: an input that arrives after one
                        // (a status request in the same millisecond as the
                        // timer) sees the gate as it is now.
                        self.tick();
                        self.handle(input);
                    }
                    None => return,
                },
                changed = lineage.changed(), if lineage_open => {
                    let actions = if changed.is_ok() {
                        let health = lineage.borrow_and_update().health.clone();
                        self.core.on_lineage_health(self.at(), &health)
                    } else {
                        lineage_open = false;
                        self.core.on_lineage_gone(self.at())
                    };
                    self.execute(actions);
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
            self.tick();
            self.publish_status(false);
            self.feed_watchdog();
        }
    }

    fn next_wake(&self, now: u64) -> u64 {
        let mut wake = self.next_status_ms.max(now);
        if let Some(t) = self.core.next_wake() {
            wake = wake.min(t);
        }
        if self.watchdog.is_some() {
            wake = wake.min(self.next_watchdog_ms);
        }
        wake
    }

    fn feed_watchdog(&mut self) {
        let now = self.now();
        let Some(period) = self.core.settings().watchdog else {
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

    /// Time passed: the core's deadlines and timers.
    fn tick(&mut self) {
        let replies = &self.replies;
        let gone = |ticket: Ticket| replies.get(&ticket).is_none_or(oneshot::Sender::is_closed);
        let actions = self.core.tick(self.at(), &gone);
        self.execute(actions);
    }

    fn handle(&mut self, input: Input) {
        let at = self.at();
        let actions = match input {
            Input::Message {
                kind,
                payload,
                received_ms,
            } => self.core.on_message(at, kind, &payload, received_ms),
            Input::Connected { session } => self.core.on_connected(at, session),
            Input::Disconnected { error } => {
                self.core.on_disconnected(&error);
                Vec::new()
            }
            Input::Authorize { request, reply } => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.replies.insert(ticket, reply);
                self.core.authorize(at, ticket, request)
            }
            Input::Status { reply } => {
                let _ = reply.send(status::render(
                    &self.status_core(at.now_ms),
                    at.now_ms,
                    at.wall_display_ms,
                ));
                Vec::new()
            }
            Input::QuoteDone { round, result } => self.core.on_quote(at, round, result),
            Input::Finding(finding) => self.core.on_finding(at, finding),
            Input::Persisted { what, result } => self.core.on_persisted(&what, result),
            Input::Shutdown { .. } => Vec::new(),
        };
        self.execute(actions);
    }

    /// Carries out the core's actions in order (a refused publish is fed
    /// back, and what the core does about it is carried out too).
    fn execute(&mut self, actions: Vec<Action>) {
        let mut queue = std::collections::VecDeque::from(actions);
        let mut status = false;
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Record(entry) => self.lineage.record(entry),
                Action::Publish {
                    topic,
                    payload,
                    round,
                } => {
                    if !self
                        .outbox
                        .try_publish(&topic, payload, QoS::AtLeastOnce, false)
                    {
                        tracing::warn!(%topic, "publish refused by the outbox; the round failed");
                        queue.extend(self.core.publish_failed(self.at(), round));
                    }
                }
                Action::Quote {
                    round,
                    nonce,
                    selection,
                } => self.quote(round, nonce, selection),
                Action::Answer {
                    ticket,
                    permit,
                    reason,
                    cti,
                    valid_until_ms,
                    record,
                } => {
                    let durable = self.lineage.append(record);
                    if let Some(reply) = self.replies.remove(&ticket) {
                        let _ = reply.send(Pending {
                            permit,
                            reason,
                            cti,
                            valid_until_ms,
                            durable,
                        });
                    }
                }
                Action::Baseline(baseline) => {
                    self.baseline.send_replace(baseline);
                }
                Action::Boot(boot) => self.boot.set(boot),
                Action::Persist(what) => self.write_state(what),
                Action::Status => status = true,
            }
        }
        if status {
            self.publish_status(true);
        }
    }

    /// Quotes off the loop; the result comes back as [`Input::QuoteDone`].
    fn quote(&self, round: u64, nonce: [u8; 32], selection: mctc_shim::tpm::PcrSelection) {
        let platform = self.platform.clone();
        let inbox = self.inbox.clone();
        tokio::spawn(async move {
            // A hung TPM must not hold the round forever: no answer in
            // time is a transient error like a busy TPM.
            let result =
                tokio::time::timeout(session::QUOTE_TIMEOUT, platform.quote(nonce, selection))
                    .await
                    .unwrap_or(Err(PlatformError::Timeout {
                        op: PlatformOp::Quote,
                        within: session::QUOTE_TIMEOUT,
                    }));
            let _ = inbox.send(Input::QuoteDone { round, result }).await;
        });
    }

    /// Queues `what` to the state writer. Without one (`run` not started,
    /// or stopping) it is written here, blocking: it must not be lost.
    fn write_state(&mut self, what: StateWrite) {
        let unsent = match &self.state_writes {
            Some((writes, _)) => writes.send(what).err().map(|e| e.0),
            None => Some(what),
        };
        if let Some(what) = unsent {
            let result = what.write(&self.state);
            let actions = self.core.on_persisted(&what, result);
            self.execute(actions);
        }
    }

    async fn shutdown(&mut self, reason: &str) {
        let actions = self.core.shutdown(self.at());
        self.execute(actions);
        // The state files queued so far are written before the stop: a
        // revocation heard just before must survive the restart.
        if let Some((writes, writer)) = self.state_writes.take() {
            drop(writes);
            if tokio::time::timeout(Duration::from_secs(5), writer)
                .await
                .is_err()
            {
                tracing::error!("state files not written within 5 s of the stop");
            }
        }
        let stop = self.lineage.append(Entry::agent_stop(reason));
        match tokio::time::timeout(Duration::from_secs(5), stop).await {
            Ok(Ok(Ok(seq))) => tracing::info!(seq, "stop recorded"),
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "stop not recorded"),
            _ => tracing::error!("stop record not confirmed"),
        }
    }

    fn status_core(&self, now: u64) -> StatusCore {
        let gate = self.core.gate();
        let GateSummary {
            state,
            reason,
            detail,
        } = GateSummary::of(gate.state());
        let artifact = gate.artifact().map(|a| ArtifactCore {
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
            Health::Failed(e) => (LineageHealth::Failed, Some(e.to_string())),
        };
        let acked_next = forward
            .acked
            .map_or(lineage.first_seq.unwrap_or(0), |a| a + 1);
        let detail = detail.or_else(|| self.core.persist_error().map(str::to_owned));
        let _ = now;
        let last_attestation = self.core.last_attestation().map(|a| AttestationCore {
            verdict: a.verdict,
            purpose: a.purpose,
            refusal: a.refusal,
            at_ms: a.at_ms,
        });
        StatusCore {
            why: self.core.why(),
            device: self.core.device().as_str().to_owned(),
            state,
            reason,
            detail,
            artifact,
            last_attestation,
            heartbeat_seq: gate.heartbeat_seq(),
            connected: self.core.connected(),
            session: self.core.session(),
            tpm: if self.core.tpm_ok() {
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
            version: self.core.settings().version,
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
        if !self.core.connected() {
            // Published on the next connection (which forces a publish).
            self.published = Some(core);
            self.next_status_ms = now.saturating_add(self.core.settings().status_interval_ms);
            return;
        }
        let json = status::render(&core, now, self.clock.wall_display_ms());
        let payload = serde_json::to_vec(&json).unwrap_or_default();
        if self
            .outbox
            .try_publish(&self.status_topic, payload, QoS::AtLeastOnce, true)
        {
            self.published = Some(core);
            self.next_status_ms = now.saturating_add(self.core.settings().status_interval_ms);
        }
    }
}

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

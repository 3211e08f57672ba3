//! The attestation session: nonce → quote → evidence → artifact or signed
//! refusal, verified with the shim against the authority keys, this
//! device, the TPM's current boot and the outstanding nonce.
//!
//! Two sessions run independently: the *renewal* session keeps the gate's
//! artifact fresh (renewing at half-life ±10 % with the artifact's
//! `next_nonce`, falling back to a requested nonce when that gets no
//! answer), and reopens a closed gate; the *fresh* session serves, one at
//! a time, operations whose scope demands their own attestation. An answer
//! is matched to a session by its nonce.
//!
//! Failed rounds back off (jittered, doubling from `retry_min_ms` to
//! `retry_max_ms`). No round runs while the device is contained or revoked,
//! disconnected, or while lineage cannot be written.
//!
//! One deliberate deviation from "every refusal closes": a refusal with
//! code `StaleNonce` of a *renewal* is not fed to the gate. It says only
//! that the nonce is no longer known to the authority (ask for a new one);
//! the installed artifact stays valid until its own deadline, and the
//! session immediately asks for a fresh nonce. It is still recorded.

use mctc_service::link::QoS;
use mctc_shim::crypto::nonce_hash;
use mctc_shim::error::{ArtifactError, EnvelopeError, ErrorClass};
use mctc_shim::gate::{self, GateState, Generation};
use mctc_shim::limits::{MAX_EVIDENCE_LEN, MAX_SMALL_MESSAGE_LEN};
use mctc_shim::lineage::AttestVerdict;
use mctc_shim::messages::{Evidence, Nonce, NoncePurpose, NonceRequest, RefusalCode};
use mctc_shim::topics::DeviceTopic;
use mctc_shim::wire::{Bstr, Bytes, List, Message, Version};
use mctc_shim::{DeviceId, Error, VerifiedArtifact, VerifyContext, verify_artifact};
use ring::rand::SecureRandom;

use super::status::AttestationCore;
use super::{Enforcer, Input, names};
use crate::drift::Baseline;
use crate::lineage::entry::Entry;
use crate::outbox::Outbox;
use crate::platform::{Platform, Quote};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    Renewal,
    Fresh,
}

impl Which {
    fn purpose(self) -> NoncePurpose {
        match self {
            Which::Renewal => NoncePurpose::Renew,
            Which::Fresh => NoncePurpose::FreshOp,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Not attesting; start at `start_at` (with a known nonce, or by asking
    /// for one). `start_at: None` = parked until something schedules it.
    Idle {
        start_at: Option<u64>,
        nonce: Option<[u8; 32]>,
    },
    AwaitNonce {
        deadline: u64,
    },
    /// The gate's generation is taken when the quote starts: the answer
    /// installs only if the gate has not closed for a cause other than
    /// expiry since ([`mctc_shim::gate`], "Generations").
    Quoting {
        round: u64,
        nonce: [u8; 32],
        quoted_in: Generation,
    },
    AwaitAnswer {
        nonce: [u8; 32],
        quoted_in: Generation,
        deadline: u64,
    },
}

const PARKED: Phase = Phase::Idle {
    start_at: None,
    nonce: None,
};

/// Both sessions' state.
#[derive(Debug)]
pub(super) struct Sessions {
    renewal: Phase,
    fresh: Phase,
    rounds: u64,
    failures: u32,
    retry_min_ms: u64,
    retry_max_ms: u64,
    nonce_topic: String,
    evidence_topic: String,
    rng: ring::rand::SystemRandom,
}

/// A uniformly random fraction in [0, 1).
fn random_fraction(rng: &ring::rand::SystemRandom) -> f64 {
    let mut bytes = [0u8; 4];
    // A failing system RNG leaves zeros: no jitter, still correct.
    let _ = rng.fill(&mut bytes);
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

/// `base` scaled by a random factor in `[1 - spread, 1 + spread)`.
fn jittered(rng: &ring::rand::SystemRandom, base: u64, spread: f64) -> u64 {
    let factor = 1.0 - spread + 2.0 * spread * random_fraction(rng);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a delay in ms, far below 2^52; the factor is positive"
    )]
    let scaled = (base as f64 * factor) as u64;
    scaled
}

impl Sessions {
    pub(super) fn new(device: &DeviceId, retry_min_ms: u64, retry_max_ms: u64) -> Sessions {
        Sessions {
            renewal: PARKED,
            fresh: PARKED,
            rounds: 0,
            failures: 0,
            retry_min_ms,
            retry_max_ms,
            nonce_topic: DeviceTopic::NonceRequest.topic(device).as_str().to_owned(),
            evidence_topic: DeviceTopic::Evidence.topic(device).as_str().to_owned(),
            rng: ring::rand::SystemRandom::new(),
        }
    }

    fn phase(&self, which: Which) -> Phase {
        match which {
            Which::Renewal => self.renewal,
            Which::Fresh => self.fresh,
        }
    }

    fn set(&mut self, which: Which, phase: Phase) {
        match which {
            Which::Renewal => self.renewal = phase,
            Which::Fresh => self.fresh = phase,
        }
    }

    /// Starts the renewal session at `now` (with `nonce`, or asking).
    pub(super) fn schedule_renewal(&mut self, now: u64, nonce: Option<[u8; 32]>) {
        self.renewal = Phase::Idle {
            start_at: Some(now),
            nonce,
        };
    }

    /// Reattests with a requested nonce after `delay`, unless a round is
    /// already under way or due sooner.
    pub(super) fn schedule_fresh_renewal(&mut self, now: u64, delay: Option<u64>) {
        let at = now.saturating_add(delay.unwrap_or(0));
        if let Phase::Idle { start_at, .. } = self.renewal {
            let start_at = Some(start_at.map_or(at, |s| s.min(at)));
            self.renewal = Phase::Idle {
                start_at,
                nonce: None,
            };
        }
    }

    /// The backoff before the next round after a failure.
    pub(super) fn failure_delay(&self) -> u64 {
        let (min, max) = (self.retry_min_ms, self.retry_max_ms);
        let base = min
            .saturating_mul(1u64 << self.failures.min(20))
            .min(max)
            .max(min);
        jittered(&self.rng, base, 0.2)
    }

    pub(super) fn discard_all(&mut self) {
        self.renewal = PARKED;
        self.fresh = PARKED;
    }

    pub(super) fn discard_fresh(&mut self) {
        self.fresh = PARKED;
    }

    /// The gate closed for a cause that voids evidence: no round quoted
    /// before it may be answered, and the renewal's `next_nonce` belongs to
    /// the artifact that is gone. Both sessions start over with requested
    /// nonces (the renewal when the close schedules it, the fresh one for
    /// the queue's head). The gate refuses such an answer anyway
    /// ([`gate::GateError::StaleEvidence`]); dropping the rounds here means
    /// it is not even matched, and nothing waits for an answer that
    /// cannot count.
    pub(super) fn void_rounds(&mut self) {
        self.renewal = PARKED;
        self.fresh = PARKED;
    }

    /// A new broker session: whatever was in flight is lost (clean
    /// sessions), so in-flight rounds start over.
    pub(super) fn on_connected(&mut self, now: u64) {
        match self.renewal {
            Phase::Idle {
                start_at: Some(_), ..
            } => {}
            Phase::Idle {
                start_at: None,
                nonce,
            } => {
                self.renewal = Phase::Idle {
                    start_at: Some(now),
                    nonce,
                };
            }
            Phase::AwaitNonce { .. } | Phase::Quoting { .. } | Phase::AwaitAnswer { .. } => {
                self.renewal = Phase::Idle {
                    start_at: Some(now),
                    nonce: None,
                };
            }
        }
    }

    pub(super) fn next_wake(&self) -> Option<u64> {
        let wake = |phase: Phase| match phase {
            Phase::Idle { start_at, .. } => start_at,
            Phase::AwaitNonce { deadline } | Phase::AwaitAnswer { deadline, .. } => Some(deadline),
            Phase::Quoting { .. } => None,
        };
        match (wake(self.renewal), wake(self.fresh)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl<P: Platform, O: Outbox> Enforcer<P, O> {
    fn can_attest(&self) -> bool {
        // A TPM that does not answer cannot quote; a round started anyway
        // would only fail and back off. TpmBack reschedules.
        self.connected
            && self.tpm_ok
            && self.lineage_ok()
            && !matches!(
                self.gate.state(),
                GateState::Contained(_) | GateState::Revoked(_)
            )
    }

    /// A failed round: back off, then ask for a new nonce.
    fn round_failed(&mut self, which: Which, now: u64) {
        match which {
            Which::Renewal => {
                let delay = self.sessions.failure_delay();
                self.sessions.failures = self.sessions.failures.saturating_add(1);
                self.sessions.renewal = Phase::Idle {
                    start_at: Some(now.saturating_add(delay)),
                    nonce: None,
                };
            }
            Which::Fresh => {
                self.sessions.fresh = PARKED;
                if let Some(head) = self.fresh_queue.pop_front() {
                    self.answer(
                        head.request,
                        head.reply,
                        super::decision_deny(
                            mctc_shim::lineage::DenyCode::FreshAttestationInvalid,
                            None,
                        ),
                    );
                }
                self.start_fresh_round();
            }
        }
    }

    fn note_attestation(
        &mut self,
        which: Which,
        verdict: AttestVerdict,
        refusal: Option<RefusalCode>,
    ) {
        self.last_attestation = Some(AttestationCore {
            verdict,
            purpose: which.purpose(),
            refusal,
            at_ms: self.now(),
        });
    }

    fn record_attested(
        &mut self,
        which: Which,
        nonce: &[u8; 32],
        verdict: AttestVerdict,
        refusal: Option<RefusalCode>,
        cti: Option<[u8; 16]>,
    ) {
        self.lineage.record(Entry::Attested {
            nonce_hash: nonce_hash(&self.crypto, nonce),
            verdict,
            refusal,
            cti,
        });
        self.note_attestation(which, verdict, refusal);
    }

    /// Starts rounds that are due and ends rounds that got no answer.
    pub(super) fn session_timers(&mut self, now: u64) {
        match self.sessions.renewal {
            Phase::Idle {
                start_at: Some(at),
                nonce,
            } if now >= at => self.start_round(Which::Renewal, now, nonce),
            Phase::AwaitNonce { deadline } if now >= deadline => {
                tracing::warn!("no nonce from the authority in time");
                self.note_attestation(Which::Renewal, AttestVerdict::NoAnswer, None);
                self.round_failed(Which::Renewal, now);
            }
            Phase::AwaitAnswer {
                nonce, deadline, ..
            } if now >= deadline => {
                tracing::warn!("no artifact from the authority in time");
                self.record_attested(Which::Renewal, &nonce, AttestVerdict::NoAnswer, None, None);
                self.round_failed(Which::Renewal, now);
            }
            _ => {}
        }
        match self.sessions.fresh {
            Phase::AwaitNonce { deadline } if now >= deadline => {
                self.note_attestation(Which::Fresh, AttestVerdict::NoAnswer, None);
                self.round_failed(Which::Fresh, now);
            }
            Phase::AwaitAnswer {
                nonce, deadline, ..
            } if now >= deadline => {
                self.record_attested(Which::Fresh, &nonce, AttestVerdict::NoAnswer, None, None);
                self.round_failed(Which::Fresh, now);
            }
            _ => {}
        }
    }

    fn start_round(&mut self, which: Which, now: u64, nonce: Option<[u8; 32]>) {
        if !self.can_attest() {
            // Parked; connection, restore or lineage recovery reschedule.
            self.sessions.set(
                which,
                Phase::Idle {
                    start_at: None,
                    nonce,
                },
            );
            return;
        }
        match nonce {
            Some(nonce) => self.start_quote(which, nonce),
            None => self.request_nonce(which, now),
        }
    }

    fn request_nonce(&mut self, which: Which, now: u64) {
        let request = NonceRequest {
            v: Version::CURRENT,
            device: self.device.clone(),
            purpose: which.purpose(),
        };
        let mut buf = [0u8; MAX_SMALL_MESSAGE_LEN];
        let sent = match request.encode(&mut buf) {
            Ok(bytes) => self.outbox.try_publish(
                &self.sessions.nonce_topic,
                bytes.to_vec(),
                QoS::AtLeastOnce,
                false,
            ),
            Err(e) => {
                tracing::error!(error = %e, "nonce request does not encode");
                false
            }
        };
        if sent {
            tracing::debug!(purpose = names::purpose(which.purpose()), "nonce requested");
            self.sessions.set(
                which,
                Phase::AwaitNonce {
                    deadline: now.saturating_add(self.settings.answer_timeout_ms),
                },
            );
        } else {
            self.round_failed(which, now);
        }
    }

    fn start_quote(&mut self, which: Which, nonce: [u8; 32]) {
        self.sessions.rounds += 1;
        let round = self.sessions.rounds;
        let quoted_in = self.gate.generation();
        self.sessions.set(
            which,
            Phase::Quoting {
                round,
                nonce,
                quoted_in,
            },
        );
        let platform = self.platform.clone();
        let inbox = self.inbox.clone();
        tokio::spawn(async move {
            let result = platform.quote(nonce).await;
            let _ = inbox.send(Input::QuoteDone { round, result }).await;
        });
    }

    pub(super) fn on_nonce(&mut self, payload: &[u8]) {
        let nonce = match Nonce::decode(payload) {
            Ok(nonce) => nonce,
            Err(e) => {
                tracing::warn!(error = %e, "nonce message dropped");
                return;
            }
        };
        let which = match nonce.purpose {
            NoncePurpose::Renew => Which::Renewal,
            NoncePurpose::FreshOp => Which::Fresh,
        };
        if matches!(self.sessions.phase(which), Phase::AwaitNonce { .. }) {
            self.start_quote(which, nonce.nonce.0);
        } else {
            tracing::debug!("unrequested nonce dropped");
        }
    }

    pub(super) fn on_quote(&mut self, round: u64, result: Result<Quote, String>) {
        let which = [Which::Renewal, Which::Fresh].into_iter().find(
            |w| matches!(self.sessions.phase(*w), Phase::Quoting { round: r, .. } if r == round),
        );
        let Some(which) = which else {
            return;
        };
        let Phase::Quoting {
            nonce, quoted_in, ..
        } = self.sessions.phase(which)
        else {
            return;
        };
        let now = self.now();
        let quote = match result {
            Ok(quote) => quote,
            Err(e) => {
                tracing::error!(error = %e, "quote failed");
                self.note_attestation(which, AttestVerdict::Rejected, None);
                self.round_failed(which, now);
                return;
            }
        };
        self.boot.set(quote.boot);
        let mut values = List::new();
        for value in &quote.pcr_values {
            if values.push(Bytes(*value)).is_err() {
                break;
            }
        }
        let evidence = Evidence {
            v: Version::CURRENT,
            device: self.device.clone(),
            nonce: Bytes(nonce),
            attest: Bstr(&quote.attest),
            signature: Bstr(&quote.signature),
            pcr_alg: self.settings.pcrs.alg,
            pcr_mask: self.settings.pcrs.mask,
            pcr_values: values,
        };
        let mut buf = [0u8; MAX_EVIDENCE_LEN];
        let sent = match evidence.encode(&mut buf) {
            Ok(bytes) => self.outbox.try_publish(
                &self.sessions.evidence_topic,
                bytes.to_vec(),
                QoS::AtLeastOnce,
                false,
            ),
            Err(e) => {
                tracing::error!(error = %e, "evidence does not encode");
                false
            }
        };
        if sent {
            tracing::debug!(purpose = names::purpose(which.purpose()), "evidence sent");
            self.sessions.set(
                which,
                Phase::AwaitAnswer {
                    nonce,
                    quoted_in,
                    deadline: now.saturating_add(self.settings.answer_timeout_ms),
                },
            );
        } else {
            self.round_failed(which, now);
        }
    }

    /// A message on the artifact topic: an artifact or a refusal, matched
    /// to a session by the nonce it answers.
    pub(super) fn on_artifact_topic(&mut self, payload: &[u8], received_ms: u64) {
        // An answer that comes after its round's deadline is no answer, and
        // the deadline is applied before the message, not only when the
        // timer fires: after a suspension (SIGSTOP, a frozen VM, a stalled
        // runtime) an artifact that waited in the socket would otherwise be
        // installed with a full ttl counted from now, on evidence quoted
        // longer ago than any ttl.
        self.on_time();
        let waiting: Vec<(Which, [u8; 32], Generation)> = [Which::Renewal, Which::Fresh]
            .into_iter()
            .filter_map(|w| match self.sessions.phase(w) {
                Phase::AwaitAnswer {
                    nonce, quoted_in, ..
                } => Some((w, nonce, quoted_in)),
                _ => None,
            })
            .collect();
        if waiting.is_empty() {
            tracing::warn!("artifact-topic message while no evidence is outstanding; dropped");
            return;
        }
        for (which, nonce, quoted_in) in waiting {
            let boot = self.boot.get();
            let wall_ms = self.clock.wall_ms();
            let ctx = VerifyContext {
                device: &self.device,
                issuer: &self.settings.issuer,
                keys: &self.keys,
                nonce: &nonce,
                boot,
                received_ms,
                wall_ms,
            };
            match verify_artifact(payload, &ctx, &self.crypto) {
                Ok(artifact) => {
                    match which {
                        Which::Renewal => self.renewal_artifact(artifact, quoted_in),
                        Which::Fresh => self.fresh_artifact(&nonce, artifact, quoted_in),
                    }
                    return;
                }
                Err(Error::Artifact(ArtifactError::NonceMismatch)) => {}
                Err(Error::Envelope(EnvelopeError::WrongContentType { .. })) => {
                    match gate::verify_refusal(
                        payload,
                        &self.keys,
                        &self.crypto,
                        &self.device,
                        &nonce,
                    ) {
                        Ok(refusal) => {
                            self.refusal(which, &nonce, &refusal);
                            return;
                        }
                        Err(Error::Artifact(ArtifactError::NonceMismatch)) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "artifact-topic message rejected");
                            return;
                        }
                    }
                }
                Err(e) if e.class() == ErrorClass::Reattest => {
                    // Signed by the authority, answering our nonce (or
                    // failing before the nonce check) but not for this boot,
                    // issuer or time: reattest.
                    tracing::warn!(error = %e, "artifact rejected on the device");
                    self.record_attested(which, &nonce, AttestVerdict::Rejected, None, None);
                    let now = self.now();
                    self.round_failed(which, now);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "artifact-topic message rejected");
                    return;
                }
            }
        }
        tracing::warn!("artifact-topic message answers no outstanding nonce; dropped");
    }

    fn renewal_artifact(&mut self, artifact: VerifiedArtifact, quoted_in: Generation) {
        let now = self.now();
        let nonce = *artifact.nonce();
        let cti = *artifact.cti();
        if !self.lineage_ok() {
            tracing::error!("artifact not installed: lineage cannot be written");
            self.record_attested(
                Which::Renewal,
                &nonce,
                AttestVerdict::Rejected,
                None,
                Some(cti),
            );
            self.round_failed(Which::Renewal, now);
            return;
        }
        let baseline = Baseline {
            cti,
            selection: artifact.pcr_selection(),
            pcr_digest: *artifact.pcr_digest(),
            boot: artifact.boot(),
        };
        let received = artifact.received_ms();
        let deadline = artifact.deadline_ms();
        let next_nonce = *artifact.next_nonce();
        match self.gate.install(artifact, quoted_in, now) {
            Ok(events) => {
                self.record_attested(
                    Which::Renewal,
                    &nonce,
                    AttestVerdict::Affirmed,
                    None,
                    Some(cti),
                );
                self.sessions.failures = 0;
                self.apply(events.as_slice());
                self.baseline.send_replace(Some(baseline));
                let half = deadline.saturating_sub(received) / 2;
                let renew_at = received.saturating_add(jittered(&self.sessions.rng, half, 0.1));
                self.sessions.renewal = Phase::Idle {
                    start_at: Some(renew_at),
                    nonce: Some(next_nonce),
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "artifact not installed");
                self.record_attested(
                    Which::Renewal,
                    &nonce,
                    AttestVerdict::Rejected,
                    None,
                    Some(cti),
                );
                self.round_failed(Which::Renewal, now);
            }
        }
    }

    fn fresh_artifact(
        &mut self,
        nonce: &[u8; 32],
        artifact: VerifiedArtifact,
        quoted_in: Generation,
    ) {
        let now = self.now();
        let cti = *artifact.cti();
        self.record_attested(
            Which::Fresh,
            nonce,
            AttestVerdict::Affirmed,
            None,
            Some(cti),
        );
        self.sessions.fresh = PARKED;
        if let Some(head) = self.fresh_queue.pop_front() {
            let decision =
                self.gate
                    .decide_fresh(&head.request.op_request(), artifact, quoted_in, now);
            self.apply(decision.events.as_slice());
            self.answer(head.request, head.reply, decision);
        }
        self.start_fresh_round();
    }

    fn refusal(&mut self, which: Which, nonce: &[u8; 32], refusal: &gate::VerifiedRefusal) {
        let now = self.now();
        let message = refusal.message();
        tracing::warn!(
            device = %self.device,
            reason = names::refusal(message.reason),
            contained = message.contained,
            purpose = names::purpose(which.purpose()),
            "authority refused the evidence"
        );
        self.record_attested(
            which,
            nonce,
            AttestVerdict::Refused,
            Some(message.reason),
            None,
        );
        let stale = message.reason == RefusalCode::StaleNonce && !message.contained;
        if which == Which::Renewal && stale {
            // Ask for a new nonce; the installed artifact stays valid until
            // its own deadline (see the module docs).
            self.sessions.renewal = PARKED;
            let delay = if self.sessions.failures == 0 {
                0
            } else {
                self.sessions.failure_delay()
            };
            self.sessions.failures = self.sessions.failures.saturating_add(1);
            self.sessions.schedule_fresh_renewal(now, Some(delay));
            return;
        }
        let events = self.gate.on_refusal(refusal, now);
        match which {
            Which::Renewal => {
                let delay = self.sessions.failure_delay();
                self.sessions.failures = self.sessions.failures.saturating_add(1);
                self.sessions.renewal = PARKED;
                self.apply(events.as_slice());
                self.sessions.schedule_fresh_renewal(now, Some(delay));
            }
            Which::Fresh => {
                self.apply(events.as_slice());
                self.sessions.fresh = PARKED;
                if let Some(head) = self.fresh_queue.pop_front() {
                    let decision = self.gate.decide(&head.request.op_request(), now);
                    let decision = match decision.verdict {
                        gate::Verdict::Deny(_) => decision,
                        _ => super::decision_deny(
                            mctc_shim::lineage::DenyCode::FreshAttestationInvalid,
                            decision.cti,
                        ),
                    };
                    self.answer(head.request, head.reply, decision);
                }
                self.start_fresh_round();
            }
        }
    }

    /// Starts a fresh round for the head of the queue, if none is running.
    pub(super) fn start_fresh_round(&mut self) {
        if self.fresh_queue.is_empty() || !matches!(self.sessions.fresh, Phase::Idle { .. }) {
            return;
        }
        if !self.can_attest() {
            // Disconnected: the requests wait for their deadline (the
            // connection may come back); contained/revoked fail them when
            // that happens.
            return;
        }
        let now = self.now();
        self.request_nonce(Which::Fresh, now);
    }

    /// After a reconnect: a fresh round in flight lost its messages.
    pub(super) fn restart_fresh_round(&mut self) {
        if !matches!(self.sessions.fresh, Phase::Idle { .. }) {
            self.sessions.fresh = PARKED;
        }
        self.start_fresh_round();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_spread() {
        let rng = ring::rand::SystemRandom::new();
        for _ in 0..1000 {
            let j = jittered(&rng, 10_000, 0.1);
            assert!((9_000..11_000).contains(&j), "{j}");
        }
        assert_eq!(jittered(&rng, 0, 0.1), 0);
    }
}

//! The attestation rounds of the session core: nonce → quote → evidence → artifact or signed
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

use mctc_shim::crypto::nonce_hash;
use mctc_shim::error::{ArtifactError, EnvelopeError, ErrorClass};
use mctc_shim::gate::{self, CloseReason, GateState, Generation};
use mctc_shim::limits::{MAX_EVIDENCE_LEN, MAX_SMALL_MESSAGE_LEN};
use mctc_shim::lineage::{AttestVerdict, DenyCode};
use mctc_shim::messages::{Evidence, Nonce, NoncePurpose, NonceRequest, RefusalCode};
use mctc_shim::tpm::PcrSelection;
use mctc_shim::wire::{Bstr, Bytes, List, Message, Version};
use mctc_shim::{Error, VerifiedArtifact, VerifyContext, verify_artifact};

use super::phase::{Challenge, PARKED, Phase, jittered};
use super::{Action, Core, LastAttestation, Which, decision_deny, explain, names};
use crate::drift::Baseline;
use crate::lineage::entry::Entry;
use crate::platform::{PlatformError, Quote, TpmClass};
use mctc_shim::api::PcrStatus;

impl Core {
    fn can_attest(&self) -> bool {
        // A TPM that does not answer cannot quote; a round started anyway
        // would only fail and back off. TpmBack reschedules.
        self.connected
            && self.tpm_ok
            && self.lineage_ok
            && !matches!(
                self.gate.state(),
                GateState::Contained(_) | GateState::Revoked(_)
            )
    }

    /// A failed round: back off, then ask for a new nonce.
    pub(super) fn round_failed(&mut self, which: Which, now: u64) {
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
                        head.ticket,
                        head.request,
                        decision_deny(DenyCode::FreshAttestationInvalid, None),
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
        self.last_attestation = Some(LastAttestation {
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
        self.out.push(Action::Record(Entry::Attested {
            nonce_hash: nonce_hash(&self.crypto, nonce),
            verdict,
            refusal,
            cti,
        }));
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
            Phase::Idle {
                start_at: Some(at),
                nonce,
            } if now >= at => self.start_round(Which::Fresh, now, nonce),
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

    fn start_round(&mut self, which: Which, now: u64, nonce: Option<Challenge>) {
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
        match request.encode(&mut buf) {
            Ok(bytes) => {
                tracing::debug!(purpose = names::purpose(which.purpose()), "nonce requested");
                self.sessions.set(
                    which,
                    Phase::AwaitNonce {
                        deadline: now.saturating_add(self.settings.answer_timeout_ms),
                    },
                );
                self.out.push(Action::Publish {
                    topic: self.sessions.nonce_topic.clone(),
                    payload: bytes.to_vec(),
                    round: which,
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "nonce request does not encode");
                self.round_failed(which, now);
            }
        }
    }

    fn start_quote(&mut self, which: Which, challenge: Challenge) {
        self.sessions.rounds += 1;
        let round = self.sessions.rounds;
        let quoted_in = self.gate.generation();
        self.sessions.set(
            which,
            Phase::Quoting {
                round,
                challenge,
                quoted_in,
            },
        );
        self.out.push(Action::Quote {
            round,
            nonce: challenge.nonce,
            selection: challenge.selection,
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
            // Decoding refused an empty or out-of-range selection; the
            // authority's selection wins over `attestation.pcrs`, which
            // only says what the operator expected.
            let selection = nonce.pcr_selection();
            self.note_selection(selection);
            self.start_quote(
                which,
                Challenge {
                    nonce: nonce.nonce.0,
                    selection,
                },
            );
        } else {
            tracing::debug!("unrequested nonce dropped");
        }
    }

    /// Remembers the authority's PCR selection and says so when it differs
    /// from `attestation.pcrs` (once per change, not every round).
    fn note_selection(&mut self, selection: PcrSelection) {
        if self.authority_selection == Some(selection) {
            return;
        }
        self.authority_selection = Some(selection);
        let list = |s: PcrSelection| {
            s.indices()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        if selection == self.settings.pcrs {
            tracing::info!(device = %self.device, pcrs = %list(selection), "quoting the PCRs the authority asks for");
        } else {
            tracing::warn!(
                device = %self.device,
                pcrs = %list(selection),
                configured = %list(self.settings.pcrs),
                "the authority's PCR selection differs from attestation.pcrs; quoting the authority's (fix the configuration)"
            );
        }
    }

    /// The PCR selection the authority last asked for, if any nonce came.
    pub fn authority_selection(&self) -> Option<PcrSelection> {
        self.authority_selection
    }

    /// Acts on a failed quote by its class: a transient error retries the
    /// same nonce after the backoff (the gate keeps its artifact); a quote
    /// that cannot be used re-attests with a new nonce; a fatal one closes
    /// the gate at once, loudly (what the TPM would attest is unknown), and
    /// the next round waits the longest backoff.
    fn quote_failed(&mut self, which: Which, nonce: Challenge, e: &PlatformError, now: u64) {
        let class = e.class();
        let class_name = crate::platform::class_name(class);
        match class {
            TpmClass::Retry => {
                tracing::warn!(error = %e, op = %e.op(), class = class_name, "quote failed; retrying the same nonce after a backoff");
                let delay = self.sessions.failure_delay();
                self.sessions.failures = self.sessions.failures.saturating_add(1);
                self.sessions.set(
                    which,
                    Phase::Idle {
                        start_at: Some(now.saturating_add(delay)),
                        nonce: Some(nonce),
                    },
                );
            }
            TpmClass::Reattest => {
                tracing::warn!(error = %e, op = %e.op(), class = class_name, "quote failed; re-attesting with a new nonce");
                self.round_failed(which, now);
            }
            TpmClass::Fatal => {
                tracing::error!(device = %self.device, error = %e, op = %e.op(), class = class_name, "TPM FAILED: closing the gate");
                self.round_failed(which, now);
                let events = self.gate.close_at(CloseReason::AttestationFailed, now);
                self.apply(events.as_slice());
                // After `apply` (which schedules recovery without a
                // backoff): the TPM gets the longest one.
                self.sessions
                    .fail_renewal_for(now, self.settings.retry_max_ms);
            }
        }
    }

    pub(super) fn quote_done(&mut self, round: u64, result: Result<Quote, PlatformError>) {
        let which = [Which::Renewal, Which::Fresh].into_iter().find(
            |w| matches!(self.sessions.phase(*w), Phase::Quoting { round: r, .. } if r == round),
        );
        let Some(which) = which else {
            return;
        };
        let Phase::Quoting {
            challenge,
            quoted_in,
            ..
        } = self.sessions.phase(which)
        else {
            return;
        };
        let nonce = challenge.nonce;
        let now = self.now();
        let quote = match result {
            Ok(quote) => quote,
            Err(e) => {
                self.note_attestation(which, AttestVerdict::Rejected, None);
                self.quote_failed(which, challenge, &e, now);
                return;
            }
        };
        self.at.boot = quote.boot;
        self.out.push(Action::Boot(quote.boot));
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
            pcr_alg: challenge.selection.alg,
            pcr_mask: challenge.selection.mask,
            pcr_values: values,
        };
        let mut buf = [0u8; MAX_EVIDENCE_LEN];
        match evidence.encode(&mut buf) {
            Ok(bytes) => {
                tracing::debug!(purpose = names::purpose(which.purpose()), "evidence sent");
                self.sessions.set(
                    which,
                    Phase::AwaitAnswer {
                        nonce,
                        quoted_in,
                        deadline: now.saturating_add(self.settings.answer_timeout_ms),
                    },
                );
                self.out.push(Action::Publish {
                    topic: self.sessions.evidence_topic.clone(),
                    payload: bytes.to_vec(),
                    round: which,
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "evidence does not encode");
                self.round_failed(which, now);
            }
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
        // (The executor ticks before every input; this keeps the core right
        // without it.)
        self.on_time(&|_| false);
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
            let boot = self.at.boot;
            let wall_ms = self.at.wall_ms;
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
                            self.note_rejection(&e);
                            return;
                        }
                    }
                }
                Err(e) if e.class() == ErrorClass::Reattest => {
                    // Signed by the authority, answering our nonce (or
                    // failing before the nonce check) but not for this boot,
                    // issuer or time: reattest.
                    tracing::warn!(error = %e, "artifact rejected on the device");
                    self.note_rejection(&e);
                    self.record_attested(which, &nonce, AttestVerdict::Rejected, None, None);
                    let now = self.now();
                    self.round_failed(which, now);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "artifact-topic message rejected");
                    self.note_rejection(&e);
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
        if !self.lineage_ok {
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
                self.out.push(Action::Baseline(Some(baseline)));
                let half = deadline.saturating_sub(received) / 2;
                let renew_at = received.saturating_add(jittered(&self.sessions.rng, half, 0.1));
                self.sessions.renewal = Phase::Idle {
                    start_at: Some(renew_at),
                    nonce: Some(Challenge {
                        nonce: next_nonce,
                        selection: baseline.selection,
                    }),
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "artifact not installed");
                self.note_rejection(&e);
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
            self.answer(head.ticket, head.request, decision);
        }
        self.start_fresh_round();
    }

    /// An answer from the authority failed a check here: the status says
    /// which until the gate opens.
    fn note_rejection(&mut self, error: &Error) {
        let check = explain::check_name(error);
        self.notes.rejection = Some(explain::Rejection {
            check,
            error: mctc_shim::api::Explanation::bounded(&error.to_string()),
            at_ms: self.now(),
        });
    }

    fn refusal(&mut self, which: Which, nonce: &[u8; 32], refusal: &gate::VerifiedRefusal) {
        let now = self.now();
        let message = refusal.message();
        self.notes.refusal = Some(explain::RefusalNote {
            code: message.reason,
            pcrs: message
                .pcrs
                .as_ref()
                .map(|list| list.as_slice().iter().map(PcrStatus::from).collect())
                .unwrap_or_default(),
            at_ms: now,
        });
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
                        _ => decision_deny(DenyCode::FreshAttestationInvalid, decision.cti),
                    };
                    self.answer(head.ticket, head.request, decision);
                }
                self.start_fresh_round();
            }
        }
    }

    /// Starts a fresh round for the head of the queue, if none is running.
    pub(super) fn start_fresh_round(&mut self) {
        // Only from parked (a retry parked for want of a connection or a
        // TPM starts over with a new nonce); a scheduled retry keeps its
        // nonce and time, a round under way runs on.
        let parked = matches!(self.sessions.fresh, Phase::Idle { start_at: None, .. });
        if self.fresh_queue.is_empty() || !parked {
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
        self.sessions.fresh = PARKED;
        self.start_fresh_round();
    }
}

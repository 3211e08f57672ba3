//! Why the gate is not open, explained: the session core keeps what the
//! last rounds, the broker and the drift check said ([`Notes`]) and turns
//! it, with the gate's state, into a cause, the failed check, the
//! underlying error and a one-line operator hint ([`Why`]). Pure: the
//! executor renders it into the status (`mctc_shim::api::Explanation`).
//!
//! The gate's own reason comes first (revoked, contained, drift, …); the
//! reasons that only say "no artifact yet" (start, expiry, a lifted
//! containment, a failed quote) are explained by what stands in the way of
//! the next one: no enrollment, no TPM, no broker, then the last round's
//! outcome (an artifact rejected on the device, a refusal, no answer).

use mctc_shim::api::{Cause, Explanation, PcrStatus};
use mctc_shim::error::{ArtifactError, EnvelopeError};
use mctc_shim::gate::{CloseReason, ContainedBy, GateError, GateState, RevokedBy};
use mctc_shim::lineage::{AttestVerdict, DriftKind};
use mctc_shim::messages::RefusalCode;

/// The status's explanation, without the part that grows with time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Why {
    pub cause: Cause,
    pub check: Option<String>,
    pub error: Option<String>,
    pub hint: String,
    pub pcrs: Vec<PcrStatus>,
    /// CLOCK_BOOTTIME ms the gate entered its state.
    pub since_ms: u64,
    /// Unix ms (display clock) of the same moment.
    pub since_wall_ms: u64,
}

impl Why {
    /// The status form at `now_ms`.
    pub fn render(&self, now_ms: u64) -> Explanation {
        Explanation {
            cause: self.cause,
            check: self.check.clone(),
            error: self.error.as_deref().map(Explanation::bounded),
            for_ms: now_ms.saturating_sub(self.since_ms),
            hint: self.hint.clone(),
            pcrs: self.pcrs.clone(),
            since_wall_ms: self.since_wall_ms,
        }
    }
}

/// An artifact-topic message from the authority that failed a check on
/// the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The check's stable name ([`check_name`]).
    pub check: &'static str,
    /// The error in words.
    pub error: String,
    pub at_ms: u64,
}

/// The last refusal the authority sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalNote {
    pub code: RefusalCode,
    pub pcrs: Vec<PcrStatus>,
    pub at_ms: u64,
}

/// What the core remembers to explain a closed gate.
#[derive(Debug, Clone, Default)]
pub struct Notes {
    /// Whether the device enrolled (the state directory says).
    pub enrolled: bool,
    /// The gate's state class and since when (boot ms, wall ms).
    pub since: Option<(Class, u64, u64)>,
    pub rejection: Option<Rejection>,
    pub refusal: Option<RefusalNote>,
    pub drift: Option<(DriftKind, String)>,
    /// The broker's last error, while disconnected.
    pub broker_error: Option<String>,
    /// The device certificate's notAfter, Unix ms.
    pub cert_not_after_ms: Option<u64>,
    pub tpm_error: Option<String>,
}

/// The last attestation round's outcome and when it ended (boot ms).
#[derive(Debug, Clone, Copy)]
pub struct Last {
    pub verdict: AttestVerdict,
    pub at_ms: u64,
}

/// The broker link as the explanation needs it.
#[derive(Debug, Clone, Copy)]
struct Link {
    connected: bool,
    /// Unix ms now (display clock): is the certificate expired?
    wall_ms: u64,
}

/// The state as the status names it (what "since" counts from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Open,
    Closed,
    Contained,
    Revoked,
}

impl Class {
    pub fn of(state: &GateState) -> Class {
        match state {
            GateState::Open(_) => Class::Open,
            GateState::Closed(_) => Class::Closed,
            GateState::Contained(_) => Class::Contained,
            GateState::Revoked(_) => Class::Revoked,
        }
    }
}

/// The stable name of the check an artifact-topic message failed: what
/// the status shows as `why.check` for [`Cause::ArtifactRejected`].
pub fn check_name(error: &mctc_shim::Error) -> &'static str {
    use mctc_shim::Error as E;
    match error {
        E::Envelope(EnvelopeError::UnknownKey) => "signing-key",
        E::Envelope(EnvelopeError::BadSignature) => "signature",
        E::Envelope(_) => "envelope",
        E::Artifact(ArtifactError::WrongIssuer) => "issuer",
        E::Artifact(ArtifactError::WrongBoot) => "boot",
        E::Artifact(ArtifactError::NonceMismatch) => "nonce",
        E::Artifact(ArtifactError::Expired) => "expired",
        E::Artifact(ArtifactError::BadClaim(_)) => "claim",
        E::WrongSubject { .. } => "device",
        E::Replay { .. } => "replay",
        E::Gate(GateError::StaleEvidence) => "stale-evidence",
        E::Gate(GateError::ReceivedInFuture) => "not-yet-valid",
        E::Gate(GateError::Revoked | GateError::Contained) => "gate",
        E::Oversize { .. } | E::Malformed { .. } | E::NonCanonical { .. } | E::Invalid { .. } => {
            "format"
        }
        _ => "other",
    }
}

fn rejection_hint(check: &str) -> &'static str {
    match check {
        "issuer" => {
            "the agent's `[authority] issuer` must equal the authority's `authority_id`: fix the agent config"
        }
        "signing-key" | "signature" => {
            "the agent's `[authority] public_keys` must hold the authority's current public key"
        }
        "device" => {
            "the authority answered for another device id: check `device_id` and the registration"
        }
        "expired" | "not-yet-valid" => {
            "check the device's clock (or `[attestation] wall_clock_trusted`); the agent re-attests"
        }
        "boot" | "stale-evidence" | "nonce" => {
            "transient: the TPM or gate changed since the quote; the agent re-attests"
        }
        _ => {
            "the authority's answer does not parse here: are the agent and authority versions compatible?"
        }
    }
}

fn refusal_hint(code: RefusalCode, device: &str, pcrs: &[PcrStatus]) -> String {
    let show = format!("`mctc-authority devices show {device}`");
    match code {
        RefusalCode::PolicyMismatch => match pcrs.first() {
            Some(p) => format!(
                "PCR {} {} the class policy: ask the fleet manager: {show}",
                p.pcr,
                match p.problem {
                    mctc_shim::messages::PcrProblem::Differs => "differs from",
                    mctc_shim::messages::PcrProblem::NoReference => "has no reference value in",
                    mctc_shim::messages::PcrProblem::NotQuoted => "is required but not quoted by",
                    mctc_shim::messages::PcrProblem::NotInPolicy => "is quoted but not in",
                }
            ),
            None => format!(
                "the PCR values do not match the class policy: ask the fleet manager: {show}"
            ),
        },
        RefusalCode::BadEvidence => match pcrs.first() {
            Some(_) => format!(
                "the quote covered other PCRs than the class asks for (its selection changed since the last artifact?): the agent asks again with a new nonce; if it persists ask the fleet manager: {show}"
            ),
            None => format!("the quote does not verify: ask the fleet manager: {show}"),
        },
        RefusalCode::StaleNonce => {
            "transient: the nonce expired; the agent asks for a new one".to_owned()
        }
        RefusalCode::NotEnrolled => "run `mctc-agent enroll`".to_owned(),
        RefusalCode::Revoked | RefusalCode::Contained => format!("ask the fleet manager: {show}"),
        RefusalCode::BootAnomaly => {
            format!(
                "the TPM's counters or clock went back (restored TPM state?): ask the fleet manager: {show}"
            )
        }
        RefusalCode::Internal => {
            "the authority failed; the agent retries (see the authority's log)".to_owned()
        }
    }
}

impl Notes {
    /// Why `state` is not open (`None` when it is). `last`: the last
    /// round's outcome; `connected`, `tpm_ok`: the link and the TPM now;
    /// `wall_ms`: Unix ms now (the certificate's expiry).
    pub fn why(
        &self,
        state: &GateState,
        device: &str,
        last: Option<Last>,
        connected: bool,
        tpm_ok: bool,
        wall_ms: u64,
    ) -> Option<Why> {
        let (since_ms, since_wall_ms) = self.since.map_or((0, 0), |(_, b, w)| (b, w));
        let show = format!("`mctc-authority devices show {device}`");
        let mut why = Why {
            cause: Cause::AwaitingAttestation,
            check: None,
            error: None,
            hint: String::new(),
            pcrs: Vec::new(),
            since_ms,
            since_wall_ms,
        };
        match state {
            GateState::Open(_) => return None,
            GateState::Revoked(by) => {
                why.cause = Cause::Revoked;
                let source = match by {
                    RevokedBy::Control { reason, .. } => {
                        why.error = Some(reason.as_str().to_owned());
                        "control"
                    }
                    RevokedBy::Heartbeat { .. } => "heartbeat",
                    RevokedBy::Refusal => "refusal",
                    RevokedBy::Persisted => "persisted",
                };
                why.check = Some(source.to_owned());
                why.hint = format!(
                    "revoked for good: only re-provisioning clears it; ask the fleet manager: {show}"
                );
            }
            GateState::Contained(by) => {
                why.cause = Cause::Contained;
                match by {
                    ContainedBy::Control { reason, .. } => {
                        why.check = Some("control".to_owned());
                        why.error = Some(reason.as_str().to_owned());
                    }
                    ContainedBy::Refusal { code } => {
                        why.check = Some(code.name().to_owned());
                        if let Some(note) = &self.refusal {
                            why.pcrs.clone_from(&note.pcrs);
                        }
                        why.error = Some(refusal_error(*code, &why.pcrs));
                    }
                }
                why.hint = match by {
                    ContainedBy::Refusal { code } => refusal_hint(*code, device, &why.pcrs),
                    ContainedBy::Control { .. } => format!(
                        "held by the fleet manager: {show}; `mctc-authority devices restore {device}` lifts it"
                    ),
                };
            }
            GateState::Closed(reason) => {
                let link = Link { connected, wall_ms };
                self.closed(&mut why, *reason, device, last, link, tpm_ok);
            }
        }
        Some(why)
    }

    fn closed(
        &self,
        why: &mut Why,
        reason: CloseReason,
        device: &str,
        last: Option<Last>,
        link: Link,
        tpm_ok: bool,
    ) {
        if !self.enrolled {
            why.cause = Cause::NotEnrolled;
            why.hint =
                "run `mctc-agent enroll` (the gate stays closed until the device is enrolled)"
                    .to_owned();
            return;
        }
        match reason {
            CloseReason::Refused(code) => self.refused(why, code, device),
            CloseReason::Drift(kind) => {
                why.cause = Cause::Drift;
                why.check = Some(kind.name().to_owned());
                why.error = self.drift.as_ref().map(|(_, detail)| detail.clone());
                why.hint = "the platform changed since it was attested; the agent re-attests, and the authority decides".to_owned();
            }
            CloseReason::HeartbeatLapsed if !link.connected => self.broker(why, link.wall_ms),
            CloseReason::HeartbeatLapsed => {
                why.cause = Cause::HeartbeatLapsed;
                why.hint = "no valid fleet heartbeat in time: is the authority running?".to_owned();
            }
            CloseReason::LineageUnavailable => {
                why.cause = Cause::LineageUnavailable;
                why.hint = "lineage cannot be written: see `lineage.error`; free space or fix the state directory".to_owned();
            }
            CloseReason::RevocationGap => {
                why.cause = Cause::RevocationGap;
                why.hint =
                    "a heartbeat says revocations were missed; the agent re-attests".to_owned();
            }
            CloseReason::ClockRegression => {
                why.cause = Cause::ClockRegression;
                why.hint = "the clock went backwards; the agent re-attests".to_owned();
            }
            CloseReason::Shutdown => {
                why.cause = Cause::Shutdown;
                why.hint = "the agent is stopping".to_owned();
            }
            CloseReason::Startup
            | CloseReason::Restored
            | CloseReason::ArtifactExpired
            | CloseReason::AttestationFailed => {
                self.no_artifact(why, reason, device, last, link, tpm_ok);
            }
        }
    }

    /// The broker is away: an expired device certificate, or the link's
    /// last error.
    fn broker(&self, why: &mut Why, wall_ms: u64) {
        why.error.clone_from(&self.broker_error);
        if let Some(not_after) = self.cert_not_after_ms.filter(|&t| t <= wall_ms) {
            why.cause = Cause::CertificateExpired;
            why.check = Some("certificate".to_owned());
            why.error = Some(format!(
                "the device certificate expired at {} (Unix s){}",
                not_after / 1000,
                self.broker_error
                    .as_deref()
                    .map_or_else(String::new, |e| format!("; broker: {e}"))
            ));
            why.hint = "renew this device's certificate (`[broker] cert`, CN = device id) and restart the agent".to_owned();
            return;
        }
        why.cause = Cause::BrokerUnreachable;
        why.hint = "cannot reach the broker: check `[broker] url`, the CA and this device's certificate (CN = device id, not expired)".to_owned();
    }

    fn refused(&self, why: &mut Why, code: RefusalCode, device: &str) {
        if code == RefusalCode::NotEnrolled {
            why.cause = Cause::NotEnrolled;
            why.check = Some(code.name().to_owned());
            why.hint =
                "the authority does not know this TPM's key: run `mctc-agent enroll`".to_owned();
            return;
        }
        why.cause = Cause::RefusedEvidence;
        why.check = Some(code.name().to_owned());
        if let Some(note) = self.refusal.as_ref().filter(|n| n.code == code) {
            why.pcrs.clone_from(&note.pcrs);
        }
        why.error = Some(refusal_error(code, &why.pcrs));
        why.hint = refusal_hint(code, device, &why.pcrs);
    }

    /// The gate is closed only for want of an artifact: what stands in the
    /// way of the next one.
    fn no_artifact(
        &self,
        why: &mut Why,
        reason: CloseReason,
        device: &str,
        last: Option<Last>,
        link: Link,
        tpm_ok: bool,
    ) {
        if !tpm_ok {
            why.cause = Cause::TpmUnavailable;
            why.error.clone_from(&self.tpm_error);
            why.hint = "the TPM does not answer: check `[tpm] tcti` and the TPM device; the gate reopens after it does".to_owned();
            return;
        }
        if !link.connected {
            self.broker(why, link.wall_ms);
            return;
        }
        let last_at = last.map_or(0, |l| l.at_ms);
        match (&self.rejection, last.map(|l| l.verdict)) {
            (Some(r), verdict)
                if r.at_ms >= last_at || verdict == Some(AttestVerdict::NoAnswer) =>
            {
                why.cause = Cause::ArtifactRejected;
                why.check = Some(r.check.to_owned());
                why.error = Some(r.error.clone());
                why.hint = rejection_hint(r.check).to_owned();
            }
            (_, Some(AttestVerdict::Refused)) => {
                let code = self
                    .refusal
                    .as_ref()
                    .map_or(RefusalCode::Internal, |n| n.code);
                self.refused(why, code, device);
            }
            (_, Some(AttestVerdict::NoAnswer)) => {
                why.cause = Cause::NoAnswer;
                why.hint = "the authority does not answer: is it running, and is this device registered (`mctc-authority devices show`)?".to_owned();
            }
            _ if reason == CloseReason::ArtifactExpired => {
                why.cause = Cause::ArtifactExpired;
                why.hint = "the artifact ran out before a renewal arrived; the agent re-attests"
                    .to_owned();
            }
            _ => {
                why.cause = Cause::AwaitingAttestation;
                why.hint =
                    "attesting: the gate opens when the authority's artifact arrives".to_owned();
            }
        }
    }
}

fn refusal_error(code: RefusalCode, pcrs: &[PcrStatus]) -> String {
    let mut text = format!("the authority refused the evidence: {}", code.name());
    for (i, p) in pcrs.iter().enumerate() {
        text.push_str(if i == 0 { ": " } else { "; " });
        text.push_str(&p.to_string());
    }
    text
}

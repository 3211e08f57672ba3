//! Stable kebab-case names of the gate's codes, used in the socket
//! protocol, the status JSON and logs.

use mctc_shim::gate::{CloseReason, ContainedBy, GateState, RevokedBy};
use mctc_shim::lineage::{AttestVerdict, DenyCode, DriftKind};
use mctc_shim::messages::{NoncePurpose, RefusalCode};

pub fn deny(code: DenyCode) -> &'static str {
    match code {
        DenyCode::Closed => "closed",
        DenyCode::Contained => "contained",
        DenyCode::Revoked => "revoked",
        DenyCode::OutOfScope => "out-of-scope",
        DenyCode::OverLimit => "over-limit",
        DenyCode::AmountRequired => "amount-required",
        DenyCode::CurrencyMismatch => "currency-mismatch",
        DenyCode::FreshAttestationInvalid => "fresh-attestation-invalid",
    }
}

pub fn refusal(code: RefusalCode) -> &'static str {
    match code {
        RefusalCode::BadEvidence => "bad-evidence",
        RefusalCode::StaleNonce => "stale-nonce",
        RefusalCode::PolicyMismatch => "policy-mismatch",
        RefusalCode::NotEnrolled => "not-enrolled",
        RefusalCode::Revoked => "revoked",
        RefusalCode::Contained => "contained",
        RefusalCode::BootAnomaly => "boot-anomaly",
        RefusalCode::Internal => "internal",
    }
}

pub fn drift(kind: DriftKind) -> &'static str {
    match kind {
        DriftKind::Pcr => "drift-pcr",
        DriftKind::Boot => "drift-boot",
        DriftKind::File => "drift-file",
        DriftKind::Clock => "drift-clock",
    }
}

pub fn verdict(verdict: AttestVerdict) -> &'static str {
    match verdict {
        AttestVerdict::Affirmed => "affirmed",
        AttestVerdict::Refused => "refused",
        AttestVerdict::NoAnswer => "no-answer",
        AttestVerdict::Rejected => "rejected",
    }
}

pub fn purpose(purpose: NoncePurpose) -> &'static str {
    match purpose {
        NoncePurpose::Renew => "renew",
        NoncePurpose::FreshOp => "fresh-op",
    }
}

pub fn close(reason: CloseReason) -> String {
    match reason {
        CloseReason::Startup => "startup".into(),
        CloseReason::ArtifactExpired => "artifact-expired".into(),
        CloseReason::HeartbeatLapsed => "heartbeat-lapsed".into(),
        CloseReason::Drift(kind) => drift(kind).into(),
        CloseReason::Refused(code) => format!("refused-{}", refusal(code)),
        CloseReason::Restored => "restored".into(),
        CloseReason::RevocationGap => "revocation-gap".into(),
        CloseReason::LineageUnavailable => "lineage-unavailable".into(),
        CloseReason::Shutdown => "shutdown".into(),
        CloseReason::ClockRegression => "clock-regression".into(),
        CloseReason::AttestationFailed => "attestation-failed".into(),
    }
}

/// `(state, reason, detail)` of a gate state.
pub fn state(state: &GateState) -> (&'static str, String, Option<String>) {
    match state {
        GateState::Open(_) => ("open", "artifact-valid".into(), None),
        GateState::Closed(reason) => ("closed", close(*reason), None),
        GateState::Contained(ContainedBy::Control { reason, .. }) => (
            "contained",
            "contained-by-control".into(),
            Some(reason.as_str().to_owned()),
        ),
        GateState::Contained(ContainedBy::Refusal { code }) => (
            "contained",
            "contained-by-refusal".into(),
            Some(refusal(*code).to_owned()),
        ),
        GateState::Revoked(by) => match by {
            RevokedBy::Control { reason, .. } => (
                "revoked",
                "revoked-by-control".into(),
                Some(reason.as_str().to_owned()),
            ),
            RevokedBy::Heartbeat { seq, .. } => (
                "revoked",
                "revoked-by-heartbeat".into(),
                Some(format!("heartbeat seq {seq}")),
            ),
            RevokedBy::Refusal => ("revoked", "revoked-by-refusal".into(), None),
            RevokedBy::Persisted => ("revoked", "revoked-persisted".into(), None),
        },
    }
}

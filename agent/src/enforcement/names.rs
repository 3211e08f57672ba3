//! Names of the gate's codes, as the socket protocol, the status JSON and
//! logs print them. The names themselves are the shim's one table
//! (`mctc_shim::wire::CodeName`, `Display for CloseReason`); these helpers
//! only keep the enforcement task's call sites short.

use mctc_shim::gate::{CloseReason, ContainedBy, GateState, RevokedBy};
use mctc_shim::lineage::{AttestVerdict, DenyCode, DriftKind};
use mctc_shim::messages::{NoncePurpose, RefusalCode};

pub fn deny(code: DenyCode) -> &'static str {
    code.name()
}

pub fn refusal(code: RefusalCode) -> &'static str {
    code.name()
}

pub fn drift(kind: DriftKind) -> &'static str {
    kind.name()
}

pub fn verdict(verdict: AttestVerdict) -> &'static str {
    verdict.name()
}

pub fn purpose(purpose: NoncePurpose) -> &'static str {
    purpose.name()
}

pub fn close(reason: CloseReason) -> String {
    reason.to_string()
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
            Some(code.name().to_owned()),
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

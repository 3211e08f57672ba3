//! Names of the gate's codes, as the socket protocol, the status JSON and
//! logs print them. The names themselves are the shim's one table
//! (`mctc_shim::wire::CodeName`, `Display for CloseReason`); these helpers
//! only keep the enforcement task's call sites short. The status
//! vocabulary of gate states is `mctc_shim::api::GateSummary`.

use mctc_shim::gate::CloseReason;
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

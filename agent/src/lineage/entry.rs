//! What the agent asks the lineage writer to record: an owned form of the
//! shim's record bodies, so a request can cross into the writer thread,
//! which numbers and links it ([`mctc_shim::lineage::ChainHead`]).

use mctc_shim::artifact::Currency;
use mctc_shim::gate::{Decision, Events, GateEvent, OpRequest, Verdict};
use mctc_shim::limits::{MAX_DRIFT_DETAIL_LEN, MAX_REASON_LEN, MAX_SW_VERSION_LEN};
use mctc_shim::lineage::{
    AgentStart, AgentStop, AttestVerdict, Attested, Body, Checkpoint, ControlReceived, DenyCode,
    Drift, DriftKind, Enrolled, HeartbeatLapse,
};
use mctc_shim::messages::{ControlAction, RefusalCode};
use mctc_shim::wire::{Bstr, Bytes, Text, Token};

use super::store::Priority;

/// One record to write, before it has a seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    AgentStart {
        sw_version: String,
    },
    AgentStop {
        reason: String,
    },
    Enrolled {
        ak_name: Vec<u8>,
        ek_sha256: [u8; 32],
    },
    Attested {
        nonce_hash: [u8; 32],
        verdict: AttestVerdict,
        refusal: Option<RefusalCode>,
        cti: Option<[u8; 16]>,
    },
    /// A gate transition (opened, renewed, closed, contained, restored,
    /// revoked).
    Gate(GateEvent),
    /// An answer of the gate, written before the answer is given.
    Decision {
        /// The gate's verdict (its transitions are recorded as their own
        /// entries).
        verdict: Verdict,
        /// The artifact it was decided under.
        cti: Option<[u8; 16]>,
        op: String,
        amount: Option<u64>,
        currency: Option<Currency>,
        reference: Option<String>,
        /// For a permit: the gate's deadline it was decided under (boot
        /// clock ms). The writer records a permit stamped at or after it as
        /// the deny it has become (see [`Entry::settle`]).
        valid_until_ms: Option<u64>,
    },
    Drift {
        what: DriftKind,
        detail: String,
    },
    HeartbeatLapse {
        last_seq: Option<u64>,
        window_ms: u32,
    },
    ControlReceived {
        seq: u64,
        action: ControlAction,
    },
    /// Only the writer makes these: they must directly follow the record
    /// they commit to.
    Checkpoint {
        seq: u64,
        head: [u8; 32],
        attest: Vec<u8>,
        signature: Vec<u8>,
    },
}

/// The longest prefix of `text` within `max` bytes that ends on a char
/// boundary (free text from the outside must fit its field).
pub fn clip(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}

impl Entry {
    /// Settles the entry at the time it is stamped: a permit whose record
    /// is stamped at or after the gate's deadline it was decided under
    /// (a stalled fdatasync, a suspension between decision and write) is
    /// recorded as a deny of the closed gate, so the lineage never shows a
    /// permit at or past its deadline. The socket answers such a permit deny
    /// too: it becomes durable only after the deadline, on the same clock.
    pub fn settle(&mut self, stamped_ms: u64) {
        if let Entry::Decision {
            verdict,
            valid_until_ms: Some(deadline),
            ..
        } = self
            && *verdict == Verdict::Permit
            && stamped_ms >= *deadline
        {
            *verdict = Verdict::Deny(DenyCode::Closed);
        }
    }

    pub fn agent_stop(reason: &str) -> Entry {
        Entry::AgentStop {
            reason: clip(reason, MAX_REASON_LEN),
        }
    }

    pub fn agent_start(sw_version: &str) -> Entry {
        Entry::AgentStart {
            sw_version: clip(sw_version, MAX_SW_VERSION_LEN),
        }
    }

    pub fn drift(what: DriftKind, detail: &str) -> Entry {
        Entry::Drift {
            what,
            detail: clip(detail, MAX_DRIFT_DETAIL_LEN),
        }
    }

    /// The record body (borrowing this entry's text).
    pub fn body(&self) -> Body<'_> {
        match self {
            Entry::AgentStart { sw_version } => Body::AgentStart(AgentStart {
                sw_version: Token(sw_version),
            }),
            Entry::AgentStop { reason } => Body::AgentStop(AgentStop {
                reason: Text(reason),
            }),
            Entry::Enrolled { ak_name, ek_sha256 } => Body::Enrolled(Enrolled {
                ak_name: Bstr(ak_name),
                ek_sha256: Bytes(*ek_sha256),
            }),
            Entry::Attested {
                nonce_hash,
                verdict,
                refusal,
                cti,
            } => Body::Attested(Attested {
                nonce_hash: Bytes(*nonce_hash),
                verdict: *verdict,
                refusal: *refusal,
                cti: cti.map(Bytes),
            }),
            Entry::Gate(event) => event.body(),
            Entry::Decision {
                verdict,
                cti,
                op,
                amount,
                currency,
                reference,
                ..
            } => Decision {
                verdict: *verdict,
                cti: *cti,
                events: Events::default(),
            }
            .body(
                &OpRequest {
                    op,
                    amount: *amount,
                    currency: *currency,
                },
                reference.as_deref(),
            ),
            Entry::Drift { what, detail } => Body::Drift(Drift {
                what: *what,
                detail: Text(detail),
            }),
            Entry::HeartbeatLapse {
                last_seq,
                window_ms,
            } => Body::HeartbeatLapse(HeartbeatLapse {
                last_seq: *last_seq,
                window_ms: *window_ms,
            }),
            Entry::ControlReceived { seq, action } => Body::ControlReceived(ControlReceived {
                seq: *seq,
                action: *action,
            }),
            Entry::Checkpoint {
                seq,
                head,
                attest,
                signature,
            } => Body::Checkpoint(Checkpoint {
                seq: *seq,
                head: Bytes(*head),
                attest: Bstr(attest),
                signature: Bstr(signature),
            }),
        }
    }

    /// Records that must be written even at the quota: the gate getting
    /// more closed, and the agent stopping. Everything that could open the
    /// gate or permit something is refused at the quota.
    pub fn priority(&self) -> Priority {
        match self {
            // A checkpoint is what lets the collector's receipt cover the
            // backlog, and so what lets it be pruned: at the quota it must
            // still be written, or nothing could ever be pruned again.
            Entry::AgentStop { .. }
            | Entry::Drift { .. }
            | Entry::HeartbeatLapse { .. }
            | Entry::ControlReceived { .. }
            | Entry::Checkpoint { .. } => Priority::Essential,
            Entry::Gate(event) => match event {
                GateEvent::Opened { .. } | GateEvent::Renewed { .. } => Priority::Normal,
                GateEvent::Closed(_)
                | GateEvent::Contained(_)
                | GateEvent::Restored { .. }
                | GateEvent::Revoked(_) => Priority::Essential,
            },
            Entry::AgentStart { .. }
            | Entry::Enrolled { .. }
            | Entry::Attested { .. }
            | Entry::Decision { .. } => Priority::Normal,
        }
    }

    /// Gate transitions get a checkpoint right after them.
    pub fn is_transition(&self) -> bool {
        matches!(self, Entry::Gate(event) if !matches!(event, GateEvent::Renewed { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_whole_characters() {
        assert_eq!(clip("abc", 10), "abc");
        assert_eq!(clip("abcdef", 3), "abc");
        assert_eq!(clip("aé", 2), "a");
        assert_eq!(clip("", 0), "");
    }
}

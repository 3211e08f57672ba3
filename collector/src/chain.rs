//! The per-record check both the ingest path and the offline verifier make:
//! the shim's chain verifier (decoding, device, seq, link, checkpoint
//! commitment, monotonic time) and then, for a checkpoint, its TPM quote
//! against the device's enrolled AK.

use mctc_attest::verifier::AkPublic;
use mctc_shim::lineage::{
    Body, BreakKind, ChainBreak, ChainVerifier, Record, Step, checkpoint_qualifying_data,
};
use mctc_shim::{Crypto, DeviceId};

use crate::checkpoint::{CheckpointError, VerifiedCheckpoint, verify_checkpoint_quote};

/// A record that extends the chain.
#[derive(Debug, Clone)]
pub struct Checked<'a> {
    /// The decoded record.
    pub record: Record<'a>,
    /// Its hash (the new head).
    pub hash: [u8; 32],
    /// The verified quote, when the record is a checkpoint.
    pub checkpoint: Option<VerifiedCheckpoint>,
}

/// Why a record does not extend the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The shim's chain verifier found a break.
    Chain(ChainBreak),
    /// An exact copy of the last record.
    Duplicate {
        /// Its seq.
        seq: u64,
    },
    /// A checkpoint that commits correctly but whose quote does not verify
    /// against the enrolled AK.
    Quote {
        /// The checkpoint record's seq.
        seq: u64,
        /// Why.
        error: CheckpointError,
    },
}

impl Fault {
    /// The seq the fault is reported at: the seq the chain expected there.
    pub fn seq(&self) -> u64 {
        match self {
            Self::Chain(b) => b.seq,
            Self::Duplicate { seq } | Self::Quote { seq, .. } => *seq,
        }
    }

    /// A stable snake_case name for the kind of fault (JSON, database).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Chain(b) => break_reason(b.kind),
            Self::Duplicate { .. } => "duplicate",
            Self::Quote { .. } => "bad_checkpoint",
        }
    }

    /// One line for operators.
    pub fn detail(&self) -> String {
        match self {
            Self::Chain(b) => match b.kind {
                BreakKind::Gap { found } => format!("{b} (found seq {found})"),
                BreakKind::Reordered { found } => format!("{b} (found seq {found})"),
                _ => b.to_string(),
            },
            Self::Duplicate { seq } => format!("record {seq} appears twice"),
            Self::Quote { seq, error } => {
                format!("checkpoint at seq {seq}: quote rejected: {error}")
            }
        }
    }
}

/// The name of a chain break kind.
pub fn break_reason(kind: BreakKind) -> &'static str {
    match kind {
        BreakKind::Undecodable => "undecodable",
        BreakKind::WrongDevice => "wrong_device",
        BreakKind::Gap { .. } => "gap",
        BreakKind::Reordered { .. } => "reordered",
        BreakKind::Conflict => "fork",
        BreakKind::LinkMismatch => "link_mismatch",
        BreakKind::BadCheckpoint => "bad_checkpoint",
        BreakKind::ClockRegression => "clock_regression",
        BreakKind::HeadMismatch => "head_mismatch",
    }
}

/// Checks `bytes` as the next record after `verifier`'s head and, for a
/// checkpoint, verifies its quote with `ak`. On success the verifier has
/// advanced; on any fault it is unchanged.
pub fn check_next<'a>(
    verifier: &mut ChainVerifier,
    crypto: &dyn Crypto,
    device: &DeviceId,
    ak: &AkPublic,
    bytes: &'a [u8],
) -> Result<Checked<'a>, Fault> {
    let mut next = verifier.clone();
    let (record, hash) = match next.push(crypto, bytes).map_err(Fault::Chain)? {
        Step::Appended { record, hash } => (record, hash),
        Step::Duplicate { seq } => return Err(Fault::Duplicate { seq }),
    };
    let checkpoint = match &record.body {
        Body::Checkpoint(cp) => {
            let qualifying = checkpoint_qualifying_data(crypto, device, cp.seq, &cp.head.0);
            let verified = verify_checkpoint_quote(
                ak,
                cp.attest.as_bytes(),
                cp.signature.as_bytes(),
                &qualifying,
            )
            .map_err(|error| Fault::Quote {
                seq: record.seq,
                error,
            })?;
            Some(verified)
        }
        _ => None,
    };
    *verifier = next;
    Ok(Checked {
        record,
        hash,
        checkpoint,
    })
}

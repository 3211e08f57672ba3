//! The JSON alert published (retained) on `mctc/v1/collector/alerts` for
//! every new anomaly, so monitors see the latest one even if they connect
//! later. The full history is in the store's `anomalies` table.

use serde::Serialize;

use crate::store::{Anomaly, AnomalyKind};

/// The alert topic (fixed by the contract).
pub const ALERT_TOPIC: &str = "mctc/v1/collector/alerts";

/// One alert, as published.
#[derive(Debug, Serialize)]
pub struct Alert<'a> {
    /// Format version (1).
    pub v: u8,
    /// The collector instance (its MQTT client id).
    pub collector: &'a str,
    /// The anomaly's row id in that collector's store.
    pub id: i64,
    /// The device.
    pub device: &'a str,
    /// What kind of anomaly.
    pub kind: AnomalyKind,
    /// The seq it concerns, if any.
    pub seq: Option<u64>,
    /// One line for operators.
    pub detail: &'a str,
    /// SHA-256 (hex) of the stored evidence, empty when none.
    pub evidence_sha256: &'a str,
    /// Unix ms when first seen.
    pub first_seen_ms: u64,
}

/// The alert payload for a new anomaly.
pub fn payload(collector: &str, anomaly: &Anomaly) -> Vec<u8> {
    let alert = Alert {
        v: 1,
        collector,
        id: anomaly.id,
        device: &anomaly.device,
        kind: anomaly.kind,
        seq: anomaly.seq,
        detail: &anomaly.detail,
        evidence_sha256: &anomaly.evidence_sha256,
        first_seen_ms: anomaly.first_seen_ms,
    };
    // Serialising a struct of strings and integers cannot fail; an empty
    // payload would still be a visible (if odd) retained message.
    serde_json::to_vec(&alert).unwrap_or_default()
}

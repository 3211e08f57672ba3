//! The status the agent publishes (retained on `mctc/v1/dev/{id}/status`)
//! and answers on the gate socket. `agent/README.md` specifies the JSON.

use serde::Serialize;

/// Status without the fields that change by themselves with time: two of
/// these compare equal when nothing happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusCore {
    pub device: String,
    /// `open`, `closed`, `contained`, `revoked`, or `offline` (Last Will and
    /// clean shutdown).
    pub state: &'static str,
    /// Why the gate is in that state (kebab-case code).
    pub reason: String,
    /// Free text from the operator or the failing component, if any.
    pub detail: Option<String>,
    pub artifact: Option<ArtifactCore>,
    pub last_attestation: Option<AttestationCore>,
    pub heartbeat_seq: Option<u64>,
    pub connected: bool,
    /// Broker sessions since start (1 for the first connection).
    pub session: u64,
    pub tpm: &'static str,
    pub lineage: LineageCore,
    pub version: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactCore {
    /// Hex of the artifact's `cti`.
    pub cti: String,
    #[serde(skip)]
    pub deadline_ms: u64,
    /// Unix seconds.
    pub exp: u64,
    /// Operations the artifact authorizes.
    pub scope: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttestationCore {
    /// `affirmed`, `refused`, `no-answer`, `rejected`.
    pub verdict: &'static str,
    /// `renew` or `fresh-op`.
    pub purpose: &'static str,
    /// The refusal's code (kebab-case) when refused.
    pub refusal: Option<&'static str>,
    #[serde(skip)]
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineageCore {
    /// `ok`, `quota-reached`, `failed`.
    pub health: &'static str,
    pub error: Option<String>,
    /// The next record's seq (everything below is durable).
    pub next_seq: u64,
    /// The seq of the latest verified collector receipt.
    pub acked_seq: Option<u64>,
    /// The checkpoint of the persisted receipt: records through it may be
    /// pruned.
    pub pruned_through: Option<u64>,
    /// Receipts that changed nothing (forged, foreign, replayed, for a seq
    /// not sent, or naming another record).
    pub rejected_receipts: u64,
    /// Records not yet acknowledged.
    pub backlog: u64,
    pub used_bytes: u64,
    pub quota_bytes: u64,
    pub last_checkpoint: Option<u64>,
    /// The collector's last anomaly report.
    pub anomaly: Option<String>,
    /// Records written and fdatasyncs done since start (group commit:
    /// records per sync).
    #[serde(skip)]
    pub records: u64,
    #[serde(skip)]
    pub syncs: u64,
}

/// The JSON object at `now` (CLOCK_BOOTTIME ms).
pub fn render(core: &StatusCore, now_ms: u64, wall_ms: u64) -> serde_json::Value {
    let mut value = serde_json::to_value(core).unwrap_or(serde_json::Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "online".into(),
            serde_json::Value::Bool(core.state != "offline"),
        );
        map.insert("wall_ms".into(), serde_json::json!(wall_ms));
        if let (Some(artifact), Some(json)) = (
            &core.artifact,
            map.get_mut("artifact").and_then(|a| a.as_object_mut()),
        ) {
            json.insert(
                "expires_in_ms".into(),
                serde_json::json!(artifact.deadline_ms.saturating_sub(now_ms)),
            );
        }
        if let Some(json) = map.get_mut("lineage").and_then(|l| l.as_object_mut()) {
            json.insert("records".into(), serde_json::json!(core.lineage.records));
            json.insert("syncs".into(), serde_json::json!(core.lineage.syncs));
        }
        if let (Some(attestation), Some(json)) = (
            &core.last_attestation,
            map.get_mut("last_attestation")
                .and_then(|a| a.as_object_mut()),
        ) {
            json.insert(
                "ago_ms".into(),
                serde_json::json!(now_ms.saturating_sub(attestation.at_ms)),
            );
        }
    }
    value
}

/// The Last Will and the clean-shutdown status: the device is not
/// answering, so nothing it said before counts. `wall_ms`: the
/// (display) wall clock, from the agent's `Clock`.
pub fn offline(device: &str, version: &'static str, reason: &str, wall_ms: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "device": device,
        "state": "offline",
        "online": false,
        "reason": reason,
        "version": version,
        "wall_ms": wall_ms,
    }))
    .unwrap_or_default()
}

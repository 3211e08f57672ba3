//! The status the agent publishes (retained on `mctc/v1/dev/{id}/status`)
//! and answers on the gate socket: the shim's typed schema
//! (`mctc_shim::api::Status`), which `agent/README.md` specifies.

use mctc_shim::api::{
    API_VERSION, ArtifactStatus, AttestationStatus, GateStatus, LineageHealth, LineageStatus,
    OfflineStatus, Status, TpmHealth,
};
use mctc_shim::lineage::AttestVerdict;
use mctc_shim::messages::{NoncePurpose, RefusalCode};

/// Status without the fields that change by themselves with time: two of
/// these compare equal when nothing happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCore {
    pub device: String,
    pub state: GateStatus,
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
    pub tpm: TpmHealth,
    pub lineage: LineageCore,
    pub version: &'static str,
    /// Why the gate is not open (`None` while it is).
    pub why: Option<super::session::Why>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactCore {
    /// Hex of the artifact's `cti`.
    pub cti: String,
    pub deadline_ms: u64,
    /// Unix seconds.
    pub exp: u64,
    /// Operations the artifact authorizes.
    pub scope: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationCore {
    pub verdict: AttestVerdict,
    pub purpose: NoncePurpose,
    /// The refusal's code when refused.
    pub refusal: Option<RefusalCode>,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineageCore {
    pub health: LineageHealth,
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
    /// records per sync). Not compared: they count by themselves.
    pub records: u64,
    pub syncs: u64,
}

/// The status at `now_ms` (CLOCK_BOOTTIME) and `wall_ms` (Unix).
pub fn render(core: &StatusCore, now_ms: u64, wall_ms: u64) -> Status {
    let lineage = &core.lineage;
    Status {
        artifact: core.artifact.as_ref().map(|a| ArtifactStatus {
            cti: a.cti.clone(),
            exp: a.exp,
            expires_in_ms: a.deadline_ms.saturating_sub(now_ms),
            scope: a.scope.clone(),
        }),
        connected: core.connected,
        detail: core.detail.clone(),
        device: core.device.clone(),
        heartbeat_seq: core.heartbeat_seq,
        last_attestation: core.last_attestation.as_ref().map(|a| AttestationStatus {
            ago_ms: now_ms.saturating_sub(a.at_ms),
            purpose: a.purpose,
            refusal: a.refusal,
            verdict: a.verdict,
        }),
        lineage: LineageStatus {
            acked_seq: lineage.acked_seq,
            anomaly: lineage.anomaly.clone(),
            backlog: lineage.backlog,
            error: lineage.error.clone(),
            health: lineage.health,
            last_checkpoint: lineage.last_checkpoint,
            next_seq: lineage.next_seq,
            pruned_through: lineage.pruned_through,
            quota_bytes: lineage.quota_bytes,
            records: lineage.records,
            rejected_receipts: lineage.rejected_receipts,
            syncs: lineage.syncs,
            used_bytes: lineage.used_bytes,
        },
        online: core.state != GateStatus::Offline,
        reason: core.reason.clone(),
        session: core.session,
        state: core.state,
        tpm: core.tpm,
        v: API_VERSION,
        version: core.version.to_owned(),
        wall_ms,
        why: core.why.as_ref().map(|w| w.render(now_ms)),
    }
}

/// The Last Will and the clean-shutdown status: the device is not
/// answering, so nothing it said before counts. `wall_ms`: the
/// (display) wall clock, from the agent's `Clock`.
pub fn offline(device: &str, version: &'static str, reason: &str, wall_ms: u64) -> Vec<u8> {
    let status = OfflineStatus::new(device, version, reason, wall_ms);
    serde_json::to_vec(&status).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core() -> StatusCore {
        StatusCore {
            device: "locker-0001".into(),
            state: GateStatus::Open,
            reason: "artifact-valid".into(),
            detail: None,
            artifact: Some(ArtifactCore {
                cti: "00112233445566778899aabbccddeeff".into(),
                deadline_ms: 150_000,
                exp: 1_700_000_300,
                scope: vec!["unlock".into(), "capture".into()],
            }),
            last_attestation: Some(AttestationCore {
                verdict: AttestVerdict::Refused,
                purpose: NoncePurpose::FreshOp,
                refusal: Some(RefusalCode::StaleNonce),
                at_ms: 1_000,
            }),
            heartbeat_seq: Some(812),
            connected: true,
            session: 1,
            tpm: TpmHealth::Ok,
            lineage: LineageCore {
                health: LineageHealth::QuotaReached,
                error: Some("disk \"full\"".into()),
                next_seq: 4713,
                acked_seq: Some(4700),
                pruned_through: None,
                rejected_receipts: 2,
                backlog: 12,
                used_bytes: 1_048_576,
                quota_bytes: 67_108_864,
                last_checkpoint: Some(4712),
                anomaly: None,
                records: 9,
                syncs: 3,
            },
            version: "0.1.0",
            why: None,
        }
    }

    /// The bytes the agent published before the status was typed (a
    /// `serde_json::Value` patched as a map, so keys in order), captured
    /// from that implementation: the typed status writes the same, plus
    /// `"v":1`.
    const BEFORE: &str = r#"{"artifact":{"cti":"00112233445566778899aabbccddeeff","exp":1700000300,"expires_in_ms":147000,"scope":["unlock","capture"]},"connected":true,"detail":null,"device":"locker-0001","heartbeat_seq":812,"last_attestation":{"ago_ms":2000,"purpose":"fresh-op","refusal":"stale-nonce","verdict":"refused"},"lineage":{"acked_seq":4700,"anomaly":null,"backlog":12,"error":"disk \"full\"","health":"quota-reached","last_checkpoint":4712,"next_seq":4713,"pruned_through":null,"quota_bytes":67108864,"records":9,"rejected_receipts":2,"syncs":3,"used_bytes":1048576},"online":true,"reason":"artifact-valid","session":1,"state":"open","tpm":"ok","version":"0.1.0","wall_ms":1700000000000}"#;

    #[test]
    fn the_typed_status_writes_the_bytes_of_the_untyped_one_plus_its_version() {
        let bytes = serde_json::to_string(&render(&core(), 3_000, 1_700_000_000_000)).unwrap();
        assert_eq!(
            bytes.replace(r#""v":1,"#, ""),
            BEFORE,
            "only `v` may be new"
        );
        assert!(bytes.contains(r#""tpm":"ok","v":1,"version":"0.1.0""#));
    }

    #[test]
    fn a_closed_gate_without_artifact_or_attestation_writes_nulls() {
        let mut core = core();
        core.state = GateStatus::Closed;
        core.reason = "startup".into();
        core.artifact = None;
        core.last_attestation = None;
        core.tpm = TpmHealth::Unavailable;
        let value = serde_json::to_value(render(&core, 3_000, 1)).unwrap();
        assert_eq!(value["artifact"], serde_json::Value::Null);
        assert_eq!(value["last_attestation"], serde_json::Value::Null);
        assert_eq!(value["state"], "closed");
        assert_eq!(value["online"], true);
        assert_eq!(value["tpm"], "unavailable");
    }

    #[test]
    fn the_offline_status_keeps_its_six_fields_plus_its_version() {
        let bytes =
            String::from_utf8(offline("d1", "0.1.0", "shutdown", 1_700_000_000_000)).unwrap();
        let (head, wall) = bytes.split_once(r#""wall_ms":"#).unwrap();
        assert_eq!(
            head,
            r#"{"device":"d1","online":false,"reason":"shutdown","state":"offline","v":1,"version":"0.1.0","#
        );
        assert!(wall.trim_end_matches('}').parse::<u64>().is_ok());
    }
}

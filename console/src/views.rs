//! The pages as typed data: built from the stores and the live state,
//! serialized as the JSON twins and rendered as HTML by [`crate::render`].
//! Every query parameter is parsed here, strictly: a value the console
//! does not understand is a 400, never ignored.

use std::collections::BTreeMap;
use std::sync::Arc;

use mctc_authority::store::sqlite::DeviceQuery;
use mctc_authority::store::{DeviceRecord, Verdict};
use mctc_collector::store::{Anomaly, Store as _};
use mctc_shim::lineage::{Body, Record, RecordKind, record_hash};
use mctc_shim::messages::DeviceStatus;
use mctc_shim::{DeviceId, Message as _, RingCrypto};
use serde::{Deserialize, Serialize};

use crate::error::PageError;
use crate::live::{AlertLive, DeviceLive, Live, now_ms};
use crate::stores::Stores;

/// Version of every JSON answer (`v`).
pub const API_VERSION: u32 = 1;
/// Rows per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most rows a page may ask for.
pub const MAX_LIMIT: u32 = 200;
/// Devices read from the store per step while a live filter is applied.
const DEVICE_CHUNK: u32 = 256;
/// The most devices one fleet page examines; beyond it the page ends
/// early and its cursor continues the scan.
const MAX_DEVICE_SCAN: usize = 8192;
/// Records read per step.
const RECORD_CHUNK: u64 = 256;
/// The most records one lineage page examines (filters that match rarely
/// page through the scan instead of reading a million records at once).
const MAX_RECORD_SCAN: u64 = 8192;
/// Silent devices listed by name on the dashboard.
const MAX_SILENT_LISTED: usize = 50;
/// Longest filter text accepted.
const MAX_FILTER_LEN: usize = 64;

fn bad(what: &str) -> PageError {
    PageError::BadRequest(what.to_owned())
}

fn limit_of(limit: Option<u32>) -> Result<u32, PageError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(bad("limit must be 1-200")),
    }
}

/// A device id from a path or cursor: 400 if it is not one.
pub fn device_id(text: &str) -> Result<DeviceId, PageError> {
    DeviceId::new(text).map_err(|_| bad("not a device id (a-z, 0-9, '.', '_', '-'; at most 64)"))
}

fn filter_text(text: Option<String>, what: &str) -> Result<Option<String>, PageError> {
    match text {
        None => Ok(None),
        Some(t) if t.is_empty() => Ok(None),
        Some(t) if t.len() > MAX_FILTER_LEN || t.chars().any(char::is_control) => Err(bad(
            &format!("{what} is too long or holds control characters"),
        )),
        Some(t) => Ok(Some(t)),
    }
}

// ------------------------------------------------------------ dashboard

/// `GET /` and `/api/v1/fleet` query.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetParams {
    /// Id prefix.
    pub q: Option<String>,
    /// Standing: `active`, `contained`, `revoked`.
    pub status: Option<String>,
    /// Live gate: `open`, `closed`, `contained`, `revoked`, `offline`, `unknown`.
    pub gate: Option<String>,
    /// Cursor: the last id of the previous page.
    pub after: Option<String>,
    /// Rows per page (1-200).
    pub limit: Option<u32>,
}

/// The filters a page applied (echoed so links keep them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FleetFilter {
    /// Id prefix.
    pub q: Option<String>,
    /// Standing.
    pub status: Option<String>,
    /// Live gate state.
    pub gate: Option<String>,
    /// Rows per page.
    pub limit: u32,
}

/// Devices by standing (the authority's record).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// All registered devices.
    pub devices: u64,
    /// Active.
    pub active: u64,
    /// Contained.
    pub contained: u64,
    /// Revoked.
    pub revoked: u64,
}

/// Gates by live state; `unknown`: registered, no status heard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GateCounts {
    /// Open.
    pub open: u64,
    /// Closed.
    pub closed: u64,
    /// Contained.
    pub contained: u64,
    /// Revoked.
    pub revoked: u64,
    /// Offline (Last Will or clean stop).
    pub offline: u64,
    /// No status heard.
    pub unknown: u64,
}

/// How many gates are not open for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReasonCount {
    /// The status `reason`.
    pub reason: String,
    /// Devices.
    pub count: u64,
}

/// The broker link as the console sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerView {
    /// A broker is configured.
    pub configured: bool,
    /// Subscribed now.
    pub connected: bool,
    /// Since the console last heard a fleet heartbeat, ms.
    pub heartbeat_age_ms: Option<u64>,
    /// Status or alert messages dropped as invalid or over the bound.
    pub dropped: u64,
}

/// The last attestation the authority decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttestationView {
    /// `affirmed` or `refused`; none yet.
    pub verdict: Option<&'static str>,
    /// The refusal's name, when refused.
    pub refusal: Option<&'static str>,
    /// When the evidence was decided, Unix ms.
    pub attempt_ms: Option<u64>,
    /// When a quote last verified, Unix ms.
    pub verified_ms: Option<u64>,
}

impl AttestationView {
    fn of(d: &DeviceRecord) -> AttestationView {
        AttestationView {
            verdict: d.verdict.map(|v| match v {
                Verdict::Affirmed => "affirmed",
                Verdict::Refused => "refused",
            }),
            refusal: d.refusal.map(|r| r.name()),
            attempt_ms: d.attempt_ms,
            verified_ms: d.verified_ms,
        }
    }
}

/// One dashboard row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRow {
    /// The id.
    pub id: String,
    /// Its class.
    pub class: String,
    /// Standing.
    pub status: &'static str,
    /// Why contained or revoked.
    pub reason: Option<String>,
    /// Enrolled.
    pub enrolled: bool,
    /// The authority's last decision.
    pub attestation: AttestationView,
    /// Artifacts issued.
    pub artifacts_issued: u64,
    /// Live gate, if a status was heard.
    pub gate: Option<DeviceLive>,
}

/// `/api/v1/fleet`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetView {
    /// [`API_VERSION`].
    pub v: u32,
    /// When built, Unix ms.
    pub generated_ms: u64,
    /// By standing.
    pub totals: Totals,
    /// By live gate.
    pub gates: GateCounts,
    /// Gates not open, by reason, most first.
    pub close_reasons: Vec<ReasonCount>,
    /// The silence threshold.
    pub silent_after_secs: u64,
    /// Devices whose latest status is older than the threshold or offline.
    pub silent_count: u64,
    /// The first of them, by id.
    pub silent: Vec<String>,
    /// The broker link.
    pub broker: BrokerView,
    /// Collector alerts, newest first.
    pub alerts: Vec<AlertLive>,
    /// The filters applied.
    pub filter: FleetFilter,
    /// This page.
    pub devices: Vec<DeviceRow>,
    /// Cursor of the next page (`after=`), if there may be more.
    pub next: Option<String>,
}

/// Whether a live status counts as silent.
fn is_silent(live: &DeviceLive, now: u64, silent_after_ms: u64) -> bool {
    !live.online || now.saturating_sub(live.status_wall_ms) > silent_after_ms
}

/// Builds the dashboard.
pub async fn fleet(
    stores: &Arc<Stores>,
    live: &Live,
    params: FleetParams,
    silent_after_secs: u64,
) -> Result<FleetView, PageError> {
    let limit = limit_of(params.limit)?;
    let q = filter_text(params.q, "q")?;
    if let Some(q) = &q
        && !q
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
    {
        return Err(bad("q is an id prefix: a-z, 0-9, '.', '_', '-'"));
    }
    let status = match filter_text(params.status, "status")? {
        None => None,
        Some(s) => Some(
            DeviceStatus::from_name(&s)
                .ok_or_else(|| bad("status must be active, contained or revoked"))?,
        ),
    };
    let gate = filter_text(params.gate, "gate")?;
    if let Some(g) = &gate
        && ![
            "open",
            "closed",
            "contained",
            "revoked",
            "offline",
            "unknown",
        ]
        .contains(&g.as_str())
    {
        return Err(bad(
            "gate must be open, closed, contained, revoked, offline or unknown",
        ));
    }
    let after = match filter_text(params.after, "after")? {
        None => None,
        Some(a) => Some(
            device_id(&a)
                .map_err(|_| bad("bad page cursor"))?
                .as_str()
                .to_owned(),
        ),
    };

    let counts = stores.authority(|s| s.status_counts()).await?;
    let now = now_ms();
    let silent_after_ms = silent_after_secs.saturating_mul(1000);
    let all = live.all_devices();
    let mut gates = GateCounts::default();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut silent: Vec<String> = Vec::new();
    for d in &all {
        use mctc_shim::api::GateStatus as G;
        match d.state {
            G::Open => gates.open += 1,
            G::Closed => gates.closed += 1,
            G::Contained => gates.contained += 1,
            G::Revoked => gates.revoked += 1,
            G::Offline => gates.offline += 1,
        }
        if d.state != G::Open {
            *reasons.entry(d.reason.clone()).or_default() += 1;
        }
        if is_silent(d, now, silent_after_ms) {
            silent.push(d.device.clone());
        }
    }
    gates.unknown = counts.total().saturating_sub(all.len() as u64);
    let mut close_reasons: Vec<ReasonCount> = reasons
        .into_iter()
        .map(|(reason, count)| ReasonCount { reason, count })
        .collect();
    close_reasons.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
    silent.sort();
    let silent_count = silent.len() as u64;
    silent.truncate(MAX_SILENT_LISTED);

    // Keyset pages from the store; a live-gate filter is applied to each
    // chunk, reading on until the page is full or the scan bound is hit.
    let mut rows = Vec::new();
    let mut cursor = after;
    let mut scanned = 0usize;
    // Whether the store may hold rows after `cursor`.
    let mut more = true;
    while more && rows.len() < limit as usize && scanned < MAX_DEVICE_SCAN {
        let chunk = if gate.is_some() {
            DEVICE_CHUNK
        } else {
            limit - rows.len() as u32
        };
        let query = DeviceQuery {
            after: cursor.clone(),
            status,
            id_prefix: q.clone(),
            limit: chunk,
        };
        let page = stores.authority(move |s| s.devices_page(&query)).await?;
        more = page.len() == chunk as usize;
        let lives = live.devices(page.iter().map(|d| d.id.as_str()));
        let len = page.len();
        for (i, (d, l)) in page.into_iter().zip(lives).enumerate() {
            scanned += 1;
            cursor = Some(d.id.as_str().to_owned());
            let keep = match gate.as_deref() {
                None => true,
                Some("unknown") => l.is_none(),
                Some(g) => l.as_ref().is_some_and(|l| l.state.name() == g),
            };
            if keep {
                rows.push(DeviceRow {
                    id: d.id.as_str().to_owned(),
                    class: d.class.clone(),
                    status: d.status.name(),
                    reason: d.reason.clone(),
                    enrolled: d.enrolled.is_some(),
                    attestation: AttestationView::of(&d),
                    artifacts_issued: d.artifacts_issued,
                    gate: l,
                });
                if rows.len() == limit as usize {
                    more |= i + 1 < len;
                    break;
                }
            }
        }
    }
    let snapshot = live.snapshot();
    Ok(FleetView {
        v: API_VERSION,
        generated_ms: now,
        totals: Totals {
            devices: counts.total(),
            active: counts.active,
            contained: counts.contained,
            revoked: counts.revoked,
        },
        gates,
        close_reasons,
        silent_after_secs,
        silent_count,
        silent,
        broker: BrokerView {
            configured: snapshot.enabled,
            connected: snapshot.connected,
            heartbeat_age_ms: snapshot.last_heartbeat_ms.map(|t| now.saturating_sub(t)),
            dropped: snapshot.dropped,
        },
        alerts: snapshot.alerts,
        filter: FleetFilter {
            q,
            status: status.map(|s| s.name().to_owned()),
            gate,
            limit,
        },
        devices: rows,
        next: if more { cursor } else { None },
    })
}

// ------------------------------------------------------------ device page

/// Enrollment fingerprints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollmentView {
    /// SHA-256 of the EK `TPM2B_PUBLIC`, hex.
    pub ek_sha256: String,
    /// SHA-256 of the AK `TPM2B_PUBLIC`, hex.
    pub ak_sha256: String,
    /// The AK's TPM name, hex.
    pub ak_name: String,
    /// When enrolled, Unix ms.
    pub enrolled_ms: u64,
}

/// The last verified PCR values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PcrView {
    /// PCR index.
    pub pcr: u8,
    /// Value, hex.
    pub value: String,
}

/// The collector's view of the device's lineage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineageSummary {
    /// Records stored (the next seq expected).
    pub records: u64,
    /// Hash of the newest stored record, hex (none when empty).
    pub head_sha256: Option<String>,
    /// The registry record version the collector holds.
    pub registry_version: Option<u64>,
}

/// `/api/v1/devices/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    /// [`API_VERSION`].
    pub v: u32,
    /// The id.
    pub device: String,
    /// Class.
    pub class: String,
    /// Standing.
    pub status: &'static str,
    /// Why contained or revoked.
    pub reason: Option<String>,
    /// Registered, Unix ms.
    pub added_ms: u64,
    /// EK hash pinned at registration, hex.
    pub pinned_ek_sha256: Option<String>,
    /// Enrollment, once enrolled.
    pub enrollment: Option<EnrollmentView>,
    /// The authority's last decision.
    pub attestation: AttestationView,
    /// PCR values of the last verified quote.
    pub pcrs: Vec<PcrView>,
    /// Artifacts issued.
    pub artifacts_issued: u64,
    /// Controls sent (the last control seq).
    pub control_seq: u64,
    /// Registry record version published.
    pub registry_version: u64,
    /// Live gate.
    pub gate: Option<DeviceLive>,
    /// The collector's side.
    pub lineage: LineageSummary,
    /// Anomalies the collector recorded, newest first.
    pub anomalies: Vec<Anomaly>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use mctc_shim::Crypto as _;
    hex::encode(RingCrypto.sha256(&[bytes]))
}

/// Builds a device page.
pub async fn device(stores: &Arc<Stores>, live: &Live, id: &str) -> Result<DeviceView, PageError> {
    let id = device_id(id)?;
    let lookup = id.clone();
    let Some(d) = stores
        .authority(move |s| {
            use mctc_authority::store::Store as _;
            s.device(&lookup)
        })
        .await?
    else {
        return Err(PageError::NotFound(format!("device {}", id.as_str())));
    };
    let lookup = id.clone();
    let (head, registry, anomalies) = stores
        .collector(move |s| {
            Ok((
                s.head(&lookup)?,
                s.registry(&lookup)?,
                s.anomalies(Some(&lookup))?,
            ))
        })
        .await?;
    let pcrs = d
        .last_pcrs
        .as_ref()
        .map(|p| {
            mctc_authority::model::indices(p.mask)
                .zip(p.values.iter())
                .map(|(pcr, v)| PcrView {
                    pcr,
                    value: hex::encode(v),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(DeviceView {
        v: API_VERSION,
        device: id.as_str().to_owned(),
        class: d.class.clone(),
        status: d.status.name(),
        reason: d.reason.clone(),
        added_ms: d.added_ms,
        pinned_ek_sha256: d.pinned_ek_sha256.map(hex::encode),
        enrollment: d.enrolled.as_ref().map(|e| EnrollmentView {
            ek_sha256: hex::encode(e.ek_sha256),
            ak_sha256: sha256_hex(&e.ak_public),
            ak_name: hex::encode(&e.ak_name),
            enrolled_ms: e.at_ms,
        }),
        attestation: AttestationView::of(&d),
        pcrs,
        artifacts_issued: d.artifacts_issued,
        control_seq: d.control_seq,
        registry_version: d.registry_version,
        gate: live.device(id.as_str()),
        lineage: LineageSummary {
            records: head.as_ref().map_or(0, |h| h.next_seq),
            head_sha256: head
                .as_ref()
                .filter(|h| h.next_seq > 0)
                .map(|h| hex::encode(h.hash)),
            registry_version: registry.map(|r| r.version),
        },
        anomalies,
    })
}

// ------------------------------------------------------------ lineage

/// `/devices/{id}/lineage` query.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineageParams {
    /// Cursor: records after this seq.
    pub after: Option<u64>,
    /// Record kind name (`decision`, `gate-closed`, …).
    pub kind: Option<String>,
    /// Verdict name (`permit`, `deny`, `affirmed`, `refused`, …).
    pub verdict: Option<String>,
    /// Operation (decisions).
    pub op: Option<String>,
    /// Only records with a wall time at or after, Unix ms.
    pub from_ms: Option<u64>,
    /// Only records with a wall time before, Unix ms.
    pub to_ms: Option<u64>,
    /// Rows per page (1-200).
    pub limit: Option<u32>,
}

/// The filters a lineage page applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LineageFilter {
    /// Kind.
    pub kind: Option<String>,
    /// Verdict.
    pub verdict: Option<String>,
    /// Operation.
    pub op: Option<String>,
    /// From, Unix ms.
    pub from_ms: Option<u64>,
    /// To, Unix ms.
    pub to_ms: Option<u64>,
    /// Rows per page.
    pub limit: u32,
}

/// A checkpoint's commitment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointView {
    /// The seq committed to.
    pub seq: u64,
    /// That record's hash, hex.
    pub head: String,
}

/// One lineage record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordView {
    /// Seq.
    pub seq: u64,
    /// Its hash (SHA-256 over the domain tag and its bytes), hex.
    pub hash: String,
    /// Its predecessor's hash, hex (zeros at seq 0).
    pub prev: String,
    /// Kind name.
    pub kind: &'static str,
    /// Wall time, Unix ms (absent when the device did not trust its clock).
    pub wall_ms: Option<u64>,
    /// CLOCK_BOOTTIME ms on the device.
    pub mono_ms: u64,
    /// TPM resetCount.
    pub reset_count: u32,
    /// TPM restartCount.
    pub restart_count: u32,
    /// Decision or attestation verdict.
    pub verdict: Option<&'static str>,
    /// Decision: why denied; attestation: the refusal.
    pub why: Option<&'static str>,
    /// Decision operation.
    pub op: Option<String>,
    /// Decision amount, minor units.
    pub amount: Option<u64>,
    /// Decision currency.
    pub currency: Option<String>,
    /// Decision reference.
    pub reference: Option<String>,
    /// The artifact id involved, hex.
    pub artifact: Option<String>,
    /// A gate transition, in words (`opened`, `closed: drift`, …).
    pub gate: Option<String>,
    /// A checkpoint's commitment.
    pub checkpoint: Option<CheckpointView>,
    /// Other detail (drift, control, stop reason).
    pub detail: Option<String>,
}

fn record_view(seq_bytes: &[u8], r: &Record<'_>) -> RecordView {
    let mut v = RecordView {
        seq: r.seq,
        hash: hex::encode(record_hash(&RingCrypto, seq_bytes)),
        prev: hex::encode(r.prev.0),
        kind: r.body.kind().name(),
        wall_ms: r.wall_ms,
        mono_ms: r.mono_ms,
        reset_count: r.boot.reset,
        restart_count: r.boot.restart,
        verdict: None,
        why: None,
        op: None,
        amount: None,
        currency: None,
        reference: None,
        artifact: None,
        gate: None,
        checkpoint: None,
        detail: None,
    };
    match &r.body {
        Body::Decision(d) => {
            v.verdict = Some(d.verdict.name());
            v.why = d.deny.map(|c| c.name());
            v.op = Some(d.op.as_str().to_owned());
            v.amount = d.amount;
            v.currency = d.currency.map(|c| c.as_str().to_owned());
            v.reference = d.reference.map(|t| t.as_str().to_owned());
            v.artifact = d.cti.map(|c| hex::encode(c.0));
        }
        Body::Attested(a) => {
            v.verdict = Some(a.verdict.name());
            v.why = a.refusal.map(|c| c.name());
            v.artifact = a.cti.map(|c| hex::encode(c.0));
        }
        Body::ArtifactInstalled(a) => {
            v.artifact = Some(hex::encode(a.cti.0));
            v.detail = Some(format!("exp {}", a.exp));
        }
        Body::GateOpened(g) => {
            v.gate = Some("opened".into());
            v.artifact = Some(hex::encode(g.cti.0));
        }
        Body::GateClosed(g) => {
            v.gate = Some(format!("closed: {}", g.reason.name()));
            v.detail = g.detail.map(|d| format!("detail code {d}"));
        }
        Body::GateContained(g) => {
            v.gate = Some(format!("contained by {}", g.source.name()));
            v.why = g.refusal.map(|c| c.name());
            v.detail = Some(g.reason.as_str().to_owned()).filter(|s| !s.is_empty());
        }
        Body::GateRevoked(g) => {
            v.gate = Some(format!("revoked by {}", g.source.name()));
            v.detail = Some(g.reason.as_str().to_owned()).filter(|s| !s.is_empty());
        }
        Body::GateRestored(g) => {
            v.gate = Some("restored".into());
            v.detail = Some(format!("control seq {}", g.control_seq));
        }
        Body::Drift(d) => {
            v.detail = Some(format!("{}: {}", d.what.name(), d.detail.as_str()));
        }
        Body::ControlReceived(c) => {
            v.detail = Some(format!("{} (control seq {})", c.action.name(), c.seq));
        }
        Body::Checkpoint(c) => {
            v.checkpoint = Some(CheckpointView {
                seq: c.seq,
                head: hex::encode(c.head.0),
            });
        }
        Body::AgentStart(a) => v.detail = Some(format!("version {}", a.sw_version.as_str())),
        Body::AgentStop(a) => v.detail = Some(a.reason.as_str().to_owned()),
        Body::Enrolled(e) => v.detail = Some(format!("ek {}", hex::encode(e.ek_sha256.0))),
        Body::HeartbeatLapse(h) => {
            v.detail = Some(format!(
                "window {} ms, last seq {:?}",
                h.window_ms, h.last_seq
            ));
        }
    }
    v
}

/// `/api/v1/devices/{id}/lineage`.
#[derive(Debug, Clone, Serialize)]
pub struct LineageView {
    /// [`API_VERSION`].
    pub v: u32,
    /// The device.
    pub device: String,
    /// Records the collector holds (next seq).
    pub records_stored: u64,
    /// The filters applied.
    pub filter: LineageFilter,
    /// Matching records, ascending seq.
    pub records: Vec<RecordView>,
    /// The last seq examined (the scan may end before the page is full).
    pub scanned_through: Option<u64>,
    /// Cursor of the next page (`after=`), if there are more records.
    pub next: Option<u64>,
}

/// Builds a lineage page.
pub async fn lineage(
    stores: &Arc<Stores>,
    id: &str,
    params: LineageParams,
) -> Result<LineageView, PageError> {
    let id = device_id(id)?;
    let limit = limit_of(params.limit)?;
    let kind = match filter_text(params.kind, "kind")? {
        None => None,
        Some(k) => Some(RecordKind::from_name(&k).ok_or_else(|| bad("unknown record kind"))?),
    };
    let verdict = filter_text(params.verdict, "verdict")?;
    if let Some(v) = &verdict {
        use mctc_shim::lineage::{AttestVerdict, VerdictCode};
        if VerdictCode::from_name(v).is_none() && AttestVerdict::from_name(v).is_none() {
            return Err(bad("unknown verdict"));
        }
    }
    let op = filter_text(params.op, "op")?;
    let filter = LineageFilter {
        kind: kind.map(|k| k.name().to_owned()),
        verdict,
        op,
        from_ms: params.from_ms,
        to_ms: params.to_ms,
        limit,
    };
    let exists_id = id.clone();
    let exists = stores
        .authority(move |s| {
            use mctc_authority::store::Store as _;
            s.device(&exists_id)
        })
        .await?
        .is_some();
    if !exists {
        return Err(PageError::NotFound(format!("device {}", id.as_str())));
    }
    let start = match params.after {
        None => 0,
        Some(a) => a.checked_add(1).ok_or_else(|| bad("bad page cursor"))?,
    };
    let filter2 = filter.clone();
    let dev = id.clone();
    let (stored, records, scanned_through) = stores
        .collector(move |s| {
            let stored = s.head(&dev)?.map_or(0, |h| h.next_seq);
            let mut out = Vec::new();
            let mut seq = start;
            let mut scanned_through = None;
            let mut scanned = 0u64;
            'scan: while seq < stored && scanned < MAX_RECORD_SCAN {
                let through = (seq + RECORD_CHUNK - 1).min(stored - 1);
                let chunk = s.records_range(&dev, seq, through)?;
                if chunk.is_empty() {
                    break;
                }
                for bytes in &chunk {
                    let record = Record::decode(bytes).map_err(|e| {
                        mctc_collector::store::StoreError::Corrupt(format!(
                            "stored record at or after seq {seq} does not decode: {e:?}"
                        ))
                    })?;
                    scanned += 1;
                    scanned_through = Some(record.seq);
                    if matches(&record, kind, &filter2) {
                        out.push(record_view(bytes, &record));
                        if out.len() == limit as usize {
                            break 'scan;
                        }
                    }
                }
                seq = through + 1;
            }
            Ok((stored, out, scanned_through))
        })
        .await?;
    let next = scanned_through.filter(|&s| s + 1 < stored);
    Ok(LineageView {
        v: API_VERSION,
        device: id.as_str().to_owned(),
        records_stored: stored,
        filter,
        records,
        scanned_through,
        next,
    })
}

fn matches(r: &Record<'_>, kind: Option<RecordKind>, f: &LineageFilter) -> bool {
    if kind.is_some_and(|k| r.body.kind() != k) {
        return false;
    }
    if f.from_ms.is_some() || f.to_ms.is_some() {
        let Some(wall) = r.wall_ms else { return false };
        if f.from_ms.is_some_and(|from| wall < from) || f.to_ms.is_some_and(|to| wall >= to) {
            return false;
        }
    }
    let (verdict, op) = match &r.body {
        Body::Decision(d) => (Some(d.verdict.name()), Some(d.op.as_str())),
        Body::Attested(a) => (Some(a.verdict.name()), None),
        _ => (None, None),
    };
    if f.verdict.as_deref().is_some_and(|v| verdict != Some(v)) {
        return false;
    }
    if f.op.as_deref().is_some_and(|o| op != Some(o)) {
        return false;
    }
    true
}

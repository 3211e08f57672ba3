//! The agent's configuration: TOML into typed structs, validated once at
//! load so that every later stage can trust it.
//!
//! `configs/agent.toml` is the commented example; a unit test parses it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mctc_attest::PcrSelection as AttestSelection;
use mctc_shim::DeviceId;
use mctc_shim::tpm::PcrSelection;
use serde::Deserialize;

use crate::error::AgentError;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The device id: the broker certificate's CN and the `sub` of every
    /// artifact (`[a-z0-9._-]{1,64}`, not starting with `.` or `mctc-`).
    pub device_id: String,
    /// Keys, lineage, persisted revocation (mode 0700, owned by the agent).
    pub state_dir: PathBuf,
    pub tpm: TpmSection,
    pub broker: mctc_service::BrokerConfig,
    pub authority: AuthoritySection,
    pub collector: CollectorSection,
    #[serde(default)]
    pub attestation: AttestationSection,
    #[serde(default)]
    pub measured: MeasuredSection,
    #[serde(default)]
    pub gate: GateSection,
    #[serde(default)]
    pub status: StatusSection,
    #[serde(default)]
    pub lineage: LineageSection,
}

/// `[tpm]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmSection {
    /// `device:/dev/tpmrm0` (default) or `swtpm:host=127.0.0.1,port=2321`.
    #[serde(default = "default_tcti")]
    pub tcti: String,
    /// A simulator protects nothing; refused unless set (tests, demos).
    #[serde(default)]
    pub allow_software_tpm: bool,
    /// `ecc-p256` (default) or `rsa-2048`.
    #[serde(default = "default_key_kind")]
    pub ek: String,
    /// `ecc-p256` (default) or `rsa-2048`.
    #[serde(default = "default_key_kind")]
    pub ak: String,
}

fn default_tcti() -> String {
    mctc_attest::device::DEFAULT_TCTI.to_owned()
}

fn default_key_kind() -> String {
    "ecc-p256".to_owned()
}

/// `[authority]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthoritySection {
    /// PEM `PUBLIC KEY` files (Ed25519 SPKI) of the authority; more than one
    /// during a key rotation.
    pub public_keys: Vec<PathBuf>,
    /// The `iss` every artifact must carry.
    pub issuer: String,
}

/// `[collector]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorSection {
    /// PEM `PUBLIC KEY` files (Ed25519 SPKI, `receipt.pub` from
    /// `mctc-collector keygen`) of the collectors whose signed receipts the
    /// agent prunes lineage on; several for several collectors or a
    /// rotation. Never an authority key.
    pub receipt_keys: Vec<PathBuf>,
}

/// `[attestation]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationSection {
    /// PCRs (SHA-256 bank) quoted as evidence and for checkpoints.
    #[serde(default = "default_pcrs")]
    pub pcrs: Vec<u8>,
    /// How often PCRs, boot counters and measured files are re-read.
    #[serde(default = "default_drift_interval")]
    pub drift_interval_ms: u64,
    /// How long to wait for a nonce or an artifact before trying again.
    #[serde(default = "default_answer_timeout")]
    pub answer_timeout_ms: u64,
    /// First and longest wait between failed attestation rounds (jittered,
    /// doubling).
    #[serde(default = "default_retry_min")]
    pub retry_min_ms: u64,
    #[serde(default = "default_retry_max")]
    pub retry_max_ms: u64,
    /// Trust the wall clock (NTS-synchronised): then an artifact's `exp`
    /// also bounds its deadline and records carry `wall_ms`.
    #[serde(default)]
    pub wall_clock_trusted: bool,
    /// How old a fresh-attestation artifact may be when its operation is
    /// decided.
    #[serde(default = "default_max_fresh_age")]
    pub max_fresh_age_ms: u64,
}

fn default_pcrs() -> Vec<u8> {
    vec![0, 1, 2, 3, 4, 5, 6, 7]
}
fn default_drift_interval() -> u64 {
    250
}
fn default_answer_timeout() -> u64 {
    5_000
}
fn default_retry_min() -> u64 {
    1_000
}
fn default_retry_max() -> u64 {
    30_000
}
fn default_max_fresh_age() -> u64 {
    mctc_shim::gate::DEFAULT_MAX_FRESH_AGE_MS
}

impl Default for AttestationSection {
    fn default() -> Self {
        AttestationSection {
            pcrs: default_pcrs(),
            drift_interval_ms: default_drift_interval(),
            answer_timeout_ms: default_answer_timeout(),
            retry_min_ms: default_retry_min(),
            retry_max_ms: default_retry_max(),
            wall_clock_trusted: false,
            max_fresh_age_ms: default_max_fresh_age(),
        }
    }
}

/// `[measured]`: files whose content is part of the attested state.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasuredSection {
    /// The PCR their SHA-256 digests are extended into (must be one of
    /// `attestation.pcrs`); required when `files` is not empty.
    pub pcr: Option<u8>,
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

/// `[gate]`: the local socket the device's payment/locker software asks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSection {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Group that owns the socket (mode 0660); name or numeric gid. Unset:
    /// the agent's own group.
    pub group: Option<String>,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
    /// Longest a request may take, including its lineage write; past it the
    /// answer is deny (`timeout`).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    /// The same for operations that need a fresh attestation round.
    #[serde(default = "default_fresh_timeout")]
    pub fresh_request_timeout_ms: u64,
}

/// The configuration file the commands read by default.
pub const DEFAULT_CONFIG: &str = "/etc/mctc/agent.toml";
/// `gate.socket` when the configuration does not set it (and where
/// `status`/`authorize` connect when they may not read the configuration).
pub const DEFAULT_SOCKET: &str = "/run/mctc/gate.sock";

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_max_connections() -> usize {
    64
}
fn default_max_line() -> usize {
    4096
}
fn default_request_timeout() -> u64 {
    5_000
}
fn default_fresh_timeout() -> u64 {
    15_000
}

impl Default for GateSection {
    fn default() -> Self {
        GateSection {
            socket: default_socket(),
            group: None,
            max_connections: default_max_connections(),
            max_line_bytes: default_max_line(),
            request_timeout_ms: default_request_timeout(),
            fresh_request_timeout_ms: default_fresh_timeout(),
        }
    }
}

/// `[status]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSection {
    /// Status is published at every change and at least this often.
    #[serde(default = "default_status_interval")]
    pub interval_ms: u64,
}

fn default_status_interval() -> u64 {
    30_000
}

impl Default for StatusSection {
    fn default() -> Self {
        StatusSection {
            interval_ms: default_status_interval(),
        }
    }
}

/// `[lineage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineageSection {
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Unforwarded records beyond this close the gate (nothing is dropped).
    #[serde(default = "default_quota_bytes")]
    pub quota_bytes: u64,
    /// Room beyond the quota kept for gate-closing and stop records.
    #[serde(default = "default_reserve_bytes")]
    pub reserve_bytes: u64,
    /// A checkpoint after this many records …
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_every_records: u64,
    /// … or this long after the last one (if anything was written since),
    /// and at every gate transition.
    #[serde(default = "default_checkpoint_secs")]
    pub checkpoint_every_secs: u64,
    /// Batches sent and not yet acknowledged at most.
    #[serde(default = "default_window")]
    pub forward_window_batches: usize,
    /// Resend from the last acknowledged seq when no ack came for this long.
    #[serde(default = "default_resend")]
    pub resend_after_ms: u64,
    /// How long the writer keeps a batch open for requests that are on
    /// their way (group commit), in microseconds; 0 disables waiting.
    #[serde(default = "default_commit_window")]
    pub group_commit_window_us: u64,
}

fn default_segment_bytes() -> u64 {
    4 * 1024 * 1024
}
fn default_quota_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_reserve_bytes() -> u64 {
    256 * 1024
}
fn default_checkpoint_records() -> u64 {
    1_000
}
fn default_checkpoint_secs() -> u64 {
    300
}
fn default_window() -> usize {
    8
}
fn default_resend() -> u64 {
    10_000
}
fn default_commit_window() -> u64 {
    0
}

impl Default for LineageSection {
    fn default() -> Self {
        LineageSection {
            segment_bytes: default_segment_bytes(),
            quota_bytes: default_quota_bytes(),
            reserve_bytes: default_reserve_bytes(),
            checkpoint_every_records: default_checkpoint_records(),
            checkpoint_every_secs: default_checkpoint_secs(),
            forward_window_batches: default_window(),
            resend_after_ms: default_resend(),
            group_commit_window_us: default_commit_window(),
        }
    }
}

/// A configuration that passed validation, with derived values.
#[derive(Debug, Clone)]
pub struct Validated {
    pub raw: Config,
    pub device: DeviceId,
    pub pcrs: PcrSelection,
    pub attest_pcrs: AttestSelection,
    pub ek_kind: mctc_attest::device::EkKind,
    pub ak_kind: mctc_attest::device::AkKind,
}

impl Validated {
    pub fn state_dir(&self) -> &Path {
        &self.raw.state_dir
    }

    pub fn drift_interval(&self) -> Duration {
        Duration::from_millis(self.raw.attestation.drift_interval_ms)
    }

    /// The TPM worker's configuration (its files live in `state_dir/tpm`).
    pub fn tpm_config(&self) -> mctc_attest::device::TpmConfig {
        mctc_attest::device::TpmConfig {
            tcti: self.raw.tpm.tcti.clone(),
            allow_software_tpm: self.raw.tpm.allow_software_tpm,
            state_dir: self.raw.state_dir.join("tpm"),
            ek_kind: self.ek_kind,
            ak_kind: self.ak_kind,
        }
    }
}

/// Reads the authority's public keys named in the configuration.
pub fn authority_keys(config: &Validated) -> Result<Vec<mctc_shim::AuthorityKey>, AgentError> {
    config
        .raw
        .authority
        .public_keys
        .iter()
        .map(|path| {
            let public = mctc_service::keys::read_public_key(path)?;
            Ok(mctc_shim::AuthorityKey::new(&mctc_shim::RingCrypto, public))
        })
        .collect()
}

/// Reads the collectors' receipt public keys named in the configuration; a
/// key that is also an authority key is refused (each role has its own).
pub fn collector_keys(config: &Validated) -> Result<Vec<mctc_shim::CollectorKey>, AgentError> {
    let authority = authority_keys(config)?;
    config
        .raw
        .collector
        .receipt_keys
        .iter()
        .map(|path| {
            let public = mctc_service::keys::read_public_key(path)?;
            if authority.iter().any(|k| *k.public() == public) {
                return Err(bad(format!(
                    "collector.receipt_keys: {} is an authority key; the collector signs receipts with its own",
                    path.display()
                )));
            }
            Ok(mctc_shim::CollectorKey::new(&mctc_shim::RingCrypto, public))
        })
        .collect()
}

fn bad(what: impl Into<String>) -> AgentError {
    AgentError::Config(what.into())
}

/// Reads and validates `path`. Every problem is one line naming the key.
pub fn load(path: &Path) -> Result<Validated, AgentError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    parse(&text).map_err(|e| match e {
        AgentError::Config(msg) => AgentError::Config(format!("{}: {msg}", path.display())),
        other => other,
    })
}

/// Parses and validates configuration text.
pub fn parse(text: &str) -> Result<Validated, AgentError> {
    let raw: Config = toml::from_str(text).map_err(|e| {
        // toml's message spans several lines (with a source excerpt); the
        // first line names the problem and the key.
        let msg = e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_owned();
        match e.span() {
            Some(span) => {
                let before = text.get(..span.start).unwrap_or_default();
                let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
                match key_at(text, line) {
                    Some(key) => bad(format!("line {line} ({key}): {msg}")),
                    None => bad(format!("line {line}: {msg}")),
                }
            }
            None => bad(msg),
        }
    })?;
    validate(raw)
}

/// The dotted key set on line `line` (1-based) of a TOML text — the
/// `[section]` above it plus the key before `=` — to name it in an error.
fn key_at(text: &str, line: usize) -> Option<String> {
    let mut section = String::new();
    for (n, content) in text.lines().enumerate() {
        let trimmed = content.trim();
        if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            section = name
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
        }
        if n + 1 == line {
            let key = trimmed.split('=').next()?.trim();
            if key.is_empty() || key.starts_with('[') || !trimmed.contains('=') {
                return None;
            }
            return Some(if section.is_empty() {
                key.to_owned()
            } else {
                format!("{section}.{key}")
            });
        }
    }
    None
}

fn validate(raw: Config) -> Result<Validated, AgentError> {
    let device = DeviceId::new(&raw.device_id)
        .map_err(|e| bad(format!("device_id `{}`: {e}", raw.device_id)))?;
    if raw.state_dir.as_os_str().is_empty() {
        return Err(bad("state_dir is empty"));
    }
    let mut mask = 0u32;
    for &pcr in &raw.attestation.pcrs {
        if pcr > 23 {
            return Err(bad(format!("attestation.pcrs: PCR {pcr} is not 0-23")));
        }
        mask |= 1 << pcr;
    }
    let pcrs = PcrSelection::sha256(mask);
    pcrs.validate()
        .map_err(|_| bad("attestation.pcrs: select at least one PCR"))?;
    let attest_pcrs =
        AttestSelection::try_from(pcrs).map_err(|e| bad(format!("attestation.pcrs: {e}")))?;
    let a = &raw.attestation;
    if !(10..=60_000).contains(&a.drift_interval_ms) {
        return Err(bad("attestation.drift_interval_ms must be 10-60000"));
    }
    if a.answer_timeout_ms == 0 || a.retry_min_ms == 0 || a.retry_max_ms < a.retry_min_ms {
        return Err(bad(
            "attestation: answer_timeout_ms and retry_min_ms must be > 0 and retry_max_ms >= retry_min_ms",
        ));
    }
    if !raw.measured.files.is_empty() {
        let Some(pcr) = raw.measured.pcr else {
            return Err(bad("measured.pcr is required when measured.files is set"));
        };
        if !raw.attestation.pcrs.contains(&pcr) {
            return Err(bad(format!(
                "measured.pcr {pcr} must be one of attestation.pcrs (or the authority never sees it)"
            )));
        }
    }
    if raw.authority.public_keys.is_empty() {
        return Err(bad("authority.public_keys: at least one key file"));
    }
    if raw.collector.receipt_keys.is_empty() {
        return Err(bad(
            "collector.receipt_keys: at least one key file (without it nothing is ever pruned)",
        ));
    }
    if raw.authority.issuer.is_empty()
        || raw.authority.issuer.len() > mctc_shim::limits::MAX_AUTHORITY_ID_LEN
    {
        return Err(bad("authority.issuer must be 1-64 bytes"));
    }
    let g = &raw.gate;
    if g.max_connections == 0 || g.max_line_bytes < 64 || g.request_timeout_ms == 0 {
        return Err(bad(
            "gate: max_connections > 0, max_line_bytes >= 64 and request_timeout_ms > 0",
        ));
    }
    if raw.status.interval_ms < 100 {
        return Err(bad("status.interval_ms must be at least 100"));
    }
    let l = &raw.lineage;
    if l.segment_bytes < 4096 || l.quota_bytes < 2 * l.segment_bytes {
        return Err(bad(
            "lineage: segment_bytes >= 4096 and quota_bytes >= 2 * segment_bytes",
        ));
    }
    if l.reserve_bytes < 16 * 1024 {
        return Err(bad("lineage.reserve_bytes must be at least 16384"));
    }
    if l.checkpoint_every_records == 0 || l.checkpoint_every_secs == 0 {
        return Err(bad("lineage: checkpoint intervals must be > 0"));
    }
    if l.forward_window_batches == 0 || l.resend_after_ms == 0 {
        return Err(bad(
            "lineage: forward_window_batches and resend_after_ms must be > 0",
        ));
    }
    if l.group_commit_window_us > 100_000 {
        return Err(bad("lineage.group_commit_window_us must be at most 100000"));
    }
    let ek_kind = match raw.tpm.ek.as_str() {
        "ecc-p256" => mctc_attest::device::EkKind::EccP256,
        "rsa-2048" => mctc_attest::device::EkKind::Rsa2048,
        other => return Err(bad(format!("tpm.ek `{other}`: ecc-p256 or rsa-2048"))),
    };
    let ak_kind = match raw.tpm.ak.as_str() {
        "ecc-p256" => mctc_attest::device::AkKind::EccP256,
        "rsa-2048" => mctc_attest::device::AkKind::Rsa2048,
        other => return Err(bad(format!("tpm.ak `{other}`: ecc-p256 or rsa-2048"))),
    };
    raw.broker
        .endpoint()
        .map_err(|e| bad(format!("broker.{e}")))?;
    Ok(Validated {
        raw,
        device,
        pcrs,
        attest_pcrs,
        ek_kind,
        ak_kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
device_id = "d1"
state_dir = "/tmp/x"
[tpm]
[broker]
url = "mqtts://127.0.0.1:8883"
ca = "ca.pem"
cert = "d1.pem"
key = "d1.key"
[authority]
public_keys = ["authority.pub"]
issuer = "mctc-authority"
[collector]
receipt_keys = ["receipt.pub"]
"#;

    #[test]
    fn the_shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/agent.toml");
        let config = load(&path).unwrap();
        assert!(
            !config.raw.measured.files.is_empty(),
            "example shows measured files"
        );
        assert_eq!(config.raw.attestation.drift_interval_ms, 250);
    }

    #[test]
    fn defaults_fill_optional_sections() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.device.as_str(), "d1");
        assert_eq!(c.raw.attestation.drift_interval_ms, 250);
        assert_eq!(c.pcrs.mask, 0xff);
        assert_eq!(c.raw.gate.socket, PathBuf::from("/run/mctc/gate.sock"));
        assert_eq!(c.tpm_config().state_dir, PathBuf::from("/tmp/x/tpm"));
    }

    #[test]
    fn errors_are_one_line_and_name_the_problem() {
        for (edit, needle) in [
            (("device_id = \"d1\"", "device_id = \"D1\""), "device_id"),
            (
                ("device_id = \"d1\"", "device_id = \"mctc-x\""),
                "device_id",
            ),
            (("[tpm]", "[tpm]\nek = \"dsa\""), "tpm.ek"),
            (("[tpm]", "[tpm]\nbogus = 1"), "unknown field"),
            (("mqtts://", "mqtt://"), "broker"),
            (
                ("[tpm]", "[measured]\nfiles = [\"/bin/sh\"]\n[tpm]"),
                "measured.pcr",
            ),
            (
                (
                    "[tpm]",
                    "[measured]\npcr = 16\nfiles = [\"/bin/sh\"]\n[tpm]",
                ),
                "one of attestation.pcrs",
            ),
            (("[tpm]", "[attestation]\npcrs = [24]\n[tpm]"), "0-23"),
            (("[tpm]", "[attestation]\npcrs = []\n[tpm]"), "at least one"),
            (
                ("public_keys = [\"authority.pub\"]", "public_keys = []"),
                "public_keys",
            ),
            (
                ("receipt_keys = [\"receipt.pub\"]", "receipt_keys = []"),
                "collector.receipt_keys",
            ),
        ] {
            let text = MINIMAL.replace(edit.0, edit.1);
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} lacks {needle}");
            assert!(!err.contains('\n'), "multi-line error: {err}");
        }
    }
}

//! `collector.toml`: typed, every field documented in `collector/README.md`
//! and in the commented example `configs/collector.toml`. Unknown keys are
//! errors (a typo must not silently fall back to a default).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mctc_service::BrokerConfig;
use mctc_service::config::MetricsConfig;
use serde::Deserialize;

use crate::admission::AdmissionConfig;
use crate::error::Error;
use crate::ingest::IngestConfig;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[broker]`: the MQTT broker and this collector's TLS identity
    /// (certificate CN `mctc-collector`).
    pub broker: BrokerConfig,
    /// `[authority]`: whose registry records are trusted.
    pub authority: AuthorityConfig,
    /// `[store]`: where lineage is kept.
    pub store: StoreConfig,
    /// `[receipts]`: the key every lineage ack is signed with.
    pub receipts: ReceiptsConfig,
    /// `[ingest]`: tuning, all optional.
    #[serde(default)]
    pub ingest: IngestSettings,
    /// `[metrics]`: serve `/metrics` (loopback only); absent, not served.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
}

/// `/metrics` of a collector whose `[metrics]` table names no address.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9465);

/// `[authority]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityConfig {
    /// PEM SubjectPublicKeyInfo files of the authority's Ed25519 keys
    /// (`authority.pub`); more than one during a key rotation.
    pub public_keys: Vec<PathBuf>,
}

/// `[receipts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptsConfig {
    /// The collector's own Ed25519 receipt key (PEM PKCS#8, mode 0600;
    /// `mctc-collector keygen` writes it). Never the authority's key.
    pub key: PathBuf,
}

/// Which database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite through the system libsqlite3.
    #[default]
    Sqlite,
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The backend (`sqlite`).
    #[serde(default)]
    pub backend: Backend,
    /// The SQLite database file.
    pub path: PathBuf,
}

/// `[ingest]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// MQTT client id; must be unique per instance (default
    /// `mctc-collector-` and 8 random hex digits).
    pub client_id: Option<String>,
    /// The shared-subscription group all instances join for lineage.
    pub share_group: String,
    /// How long records may wait above a hole before it is a gap (ms).
    pub gap_grace_ms: u64,
    /// How far above the head a record may arrive and still wait.
    pub pending_window: u64,
    /// Batches held for devices without a registry record, at most.
    pub held_batches: usize,
    /// Bytes held for devices without a registry record, at most.
    pub held_bytes: usize,
    /// How long a held batch is kept (ms).
    pub held_ttl_ms: u64,
    /// Largest MQTT packet the client accepts; at least the broker's
    /// `max_packet_size`, or one large publish ends the session.
    pub max_packet_bytes: usize,
    /// Lineage batches a device may send at once (token bucket depth).
    pub device_burst: u32,
    /// Lineage batches a second a device may send on average.
    pub device_batches_per_sec: u32,
    /// Devices whose rate is tracked at once, at most.
    pub tracked_devices: usize,
    /// Anomaly rows kept per device and kind; later ones are only counted.
    pub anomaly_rows_per_kind: u64,
    /// At most one alert per device and anomaly kind, and one drop report
    /// per device, per this many ms.
    pub alert_interval_ms: u64,
}

impl Default for IngestSettings {
    fn default() -> Self {
        let ingest = IngestConfig::default();
        let admission = AdmissionConfig::default();
        Self {
            client_id: None,
            share_group: "mctc-collector".to_owned(),
            gap_grace_ms: ingest.gap_grace_ms,
            pending_window: ingest.pending_window,
            held_batches: ingest.held_batches,
            held_bytes: ingest.held_bytes,
            held_ttl_ms: ingest.held_ttl_ms,
            max_packet_bytes: mctc_service::link::MAX_PACKET_BYTES,
            device_burst: admission.burst,
            device_batches_per_sec: admission.per_sec,
            tracked_devices: admission.tracked,
            anomaly_rows_per_kind: crate::store::DEFAULT_ANOMALY_ROWS_PER_KIND,
            alert_interval_ms: ingest.alert_interval_ms,
        }
    }
}

impl IngestSettings {
    /// The ingest core's part.
    pub fn ingest_config(&self) -> IngestConfig {
        IngestConfig {
            gap_grace_ms: self.gap_grace_ms,
            pending_window: self.pending_window,
            held_batches: self.held_batches,
            held_bytes: self.held_bytes,
            held_ttl_ms: self.held_ttl_ms,
            alert_interval_ms: self.alert_interval_ms,
        }
    }

    /// The edge's admission limits.
    pub fn admission_config(&self) -> AdmissionConfig {
        AdmissionConfig {
            burst: self.device_burst,
            per_sec: self.device_batches_per_sec,
            tracked: self.tracked_devices,
            report_interval_ms: self.alert_interval_ms,
        }
    }
}

/// The largest `max_packet_bytes` accepted (256 MiB, HiveMQ's default).
pub const MAX_PACKET_BYTES_LIMIT: u64 = 256 * 1024 * 1024;

/// The largest `pending_window` accepted: 64 full batches per device is
/// already far more reordering than one broker produces.
pub const MAX_PENDING_WINDOW: u64 = 1 << 20;

impl Config {
    /// Parses TOML text; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let bad = |reason: String| Error::Config {
            path: path.to_owned(),
            reason,
        };
        let config: Config = toml::from_str(text).map_err(|e| {
            let message = e.message().lines().next().unwrap_or("invalid TOML");
            // serde's message says what was wrong ("invalid type: string,
            // expected u64") but not where: name the line and the key.
            match e.span().map(|span| locate(text, span.start)) {
                Some(place) => bad(format!("{place}: {message}")),
                None => bad(message.to_owned()),
            }
        })?;
        if config.authority.public_keys.is_empty() {
            return Err(bad(
                "[authority] public_keys: at least one key is required".into()
            ));
        }
        let group = &config.ingest.share_group;
        if group.is_empty() || group.contains(['/', '+', '#']) {
            return Err(bad(format!(
                "[ingest] share_group {group:?}: must be non-empty without '/', '+' or '#'"
            )));
        }
        if !(1..=MAX_PENDING_WINDOW).contains(&config.ingest.pending_window) {
            return Err(bad(format!(
                "[ingest] pending_window must be 1..={MAX_PENDING_WINDOW}"
            )));
        }
        let i = &config.ingest;
        let ranges: [(&str, u64, u64, u64); 6] = [
            (
                "max_packet_bytes",
                i.max_packet_bytes as u64,
                mctc_service::link::BROKER_MAX_PACKET as u64,
                MAX_PACKET_BYTES_LIMIT,
            ),
            ("device_burst", u64::from(i.device_burst), 1, 1_000_000),
            (
                "device_batches_per_sec",
                u64::from(i.device_batches_per_sec),
                1,
                1_000_000,
            ),
            ("tracked_devices", i.tracked_devices as u64, 16, 1 << 24),
            (
                "anomaly_rows_per_kind",
                i.anomaly_rows_per_kind,
                1,
                1_000_000,
            ),
            ("alert_interval_ms", i.alert_interval_ms, 100, 3_600_000),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(bad(format!("[ingest] {key} must be {min}..={max}")));
            }
        }
        if let Some(id) = &config.ingest.client_id {
            if id.is_empty() || id.len() > 64 {
                return Err(bad("[ingest] client_id must be 1-64 bytes".into()));
            }
        }
        config.metrics_listen().map_err(|e| bad(e.to_string()))?;
        Ok(config)
    }

    /// Where `/metrics` is served, if `[metrics]` is present.
    pub fn metrics_listen(
        &self,
    ) -> Result<Option<SocketAddr>, mctc_service::metrics::MetricsError> {
        self.metrics
            .map(|m| m.listen_or(DEFAULT_METRICS_LISTEN))
            .transpose()
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }
}

/// `line N ([section] key)` for byte `offset` of a TOML text.
fn locate(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let section = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'));
    let key = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(key, _)| key.trim())
        .filter(|key| !key.is_empty() && !key.starts_with('['));
    match (section, key) {
        (Some(section), Some(key)) => format!("line {line} ({section} {key})"),
        (None, Some(key)) => format!("line {line} ({key})"),
        _ => format!("line {line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../configs/collector.toml"
        ));
        let config = Config::load(path).unwrap();
        assert_eq!(config.store.backend, Backend::Sqlite);
        assert_eq!(config.authority.public_keys.len(), 1);
        assert_eq!(config.ingest.share_group, "mctc-collector");
        assert_eq!(config.broker.url, "mqtts://broker.fleet.example:8883");
        // The example states every [ingest] key with its default value.
        assert_eq!(config.ingest, IngestSettings::default());
        assert_eq!(
            config.metrics_listen().unwrap(),
            Some(DEFAULT_METRICS_LISTEN)
        );
        let text = std::fs::read_to_string(path).unwrap();
        for key in [
            "client_id",
            "share_group",
            "gap_grace_ms",
            "pending_window",
            "held_batches",
            "held_bytes",
            "held_ttl_ms",
            "max_packet_bytes",
            "device_burst",
            "device_batches_per_sec",
            "tracked_devices",
            "anomaly_rows_per_kind",
            "alert_interval_ms",
        ] {
            assert!(
                text.contains(&format!("{key} = ")),
                "{key} not in the example"
            );
        }
    }

    fn minimal() -> String {
        "[broker]\nurl = \"mqtts://h:1\"\nca = \"ca\"\ncert = \"c\"\nkey = \"k\"\n\
         [authority]\npublic_keys = [\"a.pub\"]\n[store]\npath = \"db\"\n\
         [receipts]\nkey = \"r.key\"\n"
            .to_owned()
    }

    #[test]
    fn defaults_fill_the_ingest_section() {
        let config = Config::parse(&minimal(), Path::new("t")).unwrap();
        assert_eq!(config.ingest, IngestSettings::default());
        assert_eq!(config.metrics_listen().unwrap(), None);
    }

    #[test]
    fn metrics_listen_defaults_to_loopback_and_refuses_anything_else() {
        let parse = |extra: &str| Config::parse(&format!("{}{extra}\n", minimal()), Path::new("t"));
        assert_eq!(
            parse("[metrics]").unwrap().metrics_listen().unwrap(),
            Some(DEFAULT_METRICS_LISTEN)
        );
        for addr in ["0.0.0.0:9465", "10.0.0.1:9465", "[::]:9465"] {
            let err = parse(&format!("[metrics]\nlisten = \"{addr}\""))
                .unwrap_err()
                .to_string();
            assert!(err.contains("loopback"), "{addr}: {err}");
        }
    }

    #[test]
    fn typos_and_bad_values_are_one_line_errors() {
        for (extra, needle) in [
            ("[ingest]\ngap_grace = 1\n", "unknown field"),
            ("[ingest]\nshare_group = \"a/b\"\n", "share_group"),
            ("[ingest]\npending_window = 0\n", "pending_window"),
            ("[ingest]\nmax_packet_bytes = 65536\n", "max_packet_bytes"),
            ("[ingest]\ndevice_burst = 0\n", "device_burst"),
            (
                "[ingest]\ndevice_batches_per_sec = 0\n",
                "device_batches_per_sec",
            ),
            ("[ingest]\ntracked_devices = 1\n", "tracked_devices"),
            (
                "[ingest]\nanomaly_rows_per_kind = 0\n",
                "anomaly_rows_per_kind",
            ),
            ("[ingest]\nalert_interval_ms = 0\n", "alert_interval_ms"),
        ] {
            let text = minimal() + extra;
            let err = Config::parse(&text, Path::new("t"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let no_keys = minimal().replace("[\"a.pub\"]", "[]");
        // A value of the wrong type or an unknown variant names its line
        // and key, not only what was wrong.
        for (extra, needle) in [
            (
                "[ingest]\ngap_grace_ms = \"soon\"\n",
                "line 13 ([ingest] gap_grace_ms)",
            ),
            ("[ingest]\nheld_batches = -1\n", "([ingest] held_batches)"),
        ] {
            let text = minimal() + extra;
            let err = Config::parse(&text, Path::new("t"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let postgres = minimal().replace("path = \"db\"", "backend = \"postgres\"\npath = \"db\"");
        let err = Config::parse(&postgres, Path::new("t"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("([store] backend)") && err.contains("postgres"),
            "{err}"
        );
        assert!(Config::parse(&no_keys, Path::new("t")).is_err());
    }
}

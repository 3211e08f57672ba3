//! `authority.toml`: typed, validated, passed down explicitly.
//!
//! Relative paths are taken relative to the directory of the configuration
//! file, so a deployment directory can be moved as a whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mctc_service::BrokerConfig;
use mctc_shim::wire::token_problem;
use serde::Deserialize;

use crate::error::{Error, one_line};

pub use crate::model::parse_sha256;

/// Longest `authority_id` (the artifact's `iss`, shim limit).
const MAX_AUTHORITY_ID_LEN: usize = mctc_shim::limits::MAX_AUTHORITY_ID_LEN;

/// `/metrics` of an authority whose `[metrics]` table names no address.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// The authority's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from.
    pub path: PathBuf,
    /// `iss` of every artifact.
    pub authority_id: String,
    /// PKCS#8 PEM Ed25519 issuer key.
    pub signing_key: PathBuf,
    /// The SQLite database.
    pub database: PathBuf,
    /// The policy file.
    pub policy: PathBuf,
    /// Names this instance's MQTT client id (`mctc-authority-<instance>`).
    pub instance: Option<String>,
    /// The broker connection.
    pub broker: BrokerConfig,
    /// Enrollment settings.
    pub enrollment: Enrollment,
    /// Input bounds.
    pub limits: Limits,
    /// `[metrics] listen`: where `/metrics` is served (loopback only);
    /// `None` without a `[metrics]` table.
    pub metrics: Option<SocketAddr>,
}

/// `[enrollment]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// PEM bundle of TPM vendor CAs that EK certificates chain to.
    pub ek_ca_bundle: Option<PathBuf>,
    /// EK fingerprints (SHA-256 of the EK `TPM2B_PUBLIC`) accepted without
    /// a certificate.
    pub ek_allow_sha256: Vec<[u8; 32]>,
    /// How long a credential challenge may be answered.
    pub challenge_ttl_ms: u64,
}

/// `[limits]`: every bound on what devices can make the authority do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Lifetime of a requested nonce.
    pub nonce_ttl_ms: u64,
    /// Outstanding nonces per device; the oldest is dropped beyond it.
    pub max_outstanding_nonces: u32,
    /// Token bucket size per device and request topic.
    pub request_burst: u32,
    /// Token bucket refill per device and request topic.
    pub requests_per_minute: u32,
    /// Messages waiting for the worker before input is dropped.
    pub queue: usize,
    /// Largest MQTT packet accepted or sent (must be at least the broker's
    /// `max_packet_size`, or one oversized publish would cut the session;
    /// at least the shipped broker's, default the limit all mctc clients
    /// share).
    pub max_packet_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            nonce_ttl_ms: 10_000,
            max_outstanding_nonces: 8,
            request_burst: 10,
            requests_per_minute: 60,
            queue: 1024,
            max_packet_bytes: mctc_service::link::MAX_PACKET_BYTES,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    authority_id: String,
    signing_key: PathBuf,
    database: PathBuf,
    policy: PathBuf,
    #[serde(default)]
    instance: Option<String>,
    broker: BrokerConfig,
    #[serde(default)]
    enrollment: RawEnrollment,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    metrics: Option<mctc_service::config::MetricsConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnrollment {
    #[serde(default)]
    ek_ca_bundle: Option<PathBuf>,
    #[serde(default)]
    ek_allow_sha256: Vec<String>,
    #[serde(default = "default_challenge_ttl")]
    challenge_ttl_ms: u64,
}

impl Default for RawEnrollment {
    fn default() -> Self {
        RawEnrollment {
            ek_ca_bundle: None,
            ek_allow_sha256: Vec::new(),
            challenge_ttl_ms: default_challenge_ttl(),
        }
    }
}

fn default_challenge_ttl() -> u64 {
    60_000
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Error> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| Error::config(path, one_line(&e.to_string())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let bad = |reason: String| Error::config(path, reason);

        if token_problem(&raw.authority_id, MAX_AUTHORITY_ID_LEN).is_some() {
            return Err(bad(format!(
                "authority_id must be 1-{MAX_AUTHORITY_ID_LEN} printable ASCII characters without spaces"
            )));
        }
        if let Some(instance) = &raw.instance
            && (instance.is_empty()
                || instance.len() > 32
                || !instance
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(bad(
                "instance must be 1-32 characters of [A-Za-z0-9_-]".to_owned()
            ));
        }
        let l = raw.limits;
        check_range(path, "limits.nonce_ttl_ms", l.nonce_ttl_ms, 1_000, 300_000)?;
        check_range(
            path,
            "limits.max_outstanding_nonces",
            u64::from(l.max_outstanding_nonces),
            1,
            64,
        )?;
        check_range(
            path,
            "limits.request_burst",
            u64::from(l.request_burst),
            1,
            10_000,
        )?;
        check_range(
            path,
            "limits.requests_per_minute",
            u64::from(l.requests_per_minute),
            1,
            600_000,
        )?;
        check_range(path, "limits.queue", l.queue as u64, 16, 1 << 20)?;
        check_range(
            path,
            "limits.max_packet_bytes",
            l.max_packet_bytes as u64,
            mctc_service::link::BROKER_MAX_PACKET as u64,
            256 * 1024 * 1024,
        )?;
        check_range(
            path,
            "enrollment.challenge_ttl_ms",
            raw.enrollment.challenge_ttl_ms,
            1_000,
            600_000,
        )?;
        let mut allow = Vec::new();
        for text in &raw.enrollment.ek_allow_sha256 {
            allow.push(parse_sha256(text).ok_or_else(|| {
                bad(format!(
                    "enrollment.ek_allow_sha256: `{text}` is not 64 hex digits"
                ))
            })?);
        }
        let mut broker = raw.broker;
        broker.ca = resolve(broker.ca);
        broker.cert = resolve(broker.cert);
        broker.key = resolve(broker.key);
        broker
            .endpoint()
            .map_err(|e| bad(format!("broker.url: {e}")))?;
        Ok(Config {
            path: path.to_owned(),
            authority_id: raw.authority_id,
            signing_key: resolve(raw.signing_key),
            database: resolve(raw.database),
            policy: resolve(raw.policy),
            instance: raw.instance,
            broker,
            enrollment: Enrollment {
                ek_ca_bundle: raw.enrollment.ek_ca_bundle.map(resolve),
                ek_allow_sha256: allow,
                challenge_ttl_ms: raw.enrollment.challenge_ttl_ms,
            },
            limits: raw.limits,
            metrics: raw
                .metrics
                .map(|m| m.listen_or(DEFAULT_METRICS_LISTEN))
                .transpose()
                .map_err(|e| bad(e.to_string()))?,
        })
    }
}

fn check_range(path: &Path, key: &str, value: u64, min: u64, max: u64) -> Result<(), Error> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Error::config(
            path,
            format!("{key} = {value} is outside {min}..={max}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
authority_id = "fleet-authority"
signing_key = "keys/authority.key"
database = "/var/lib/a.db"
policy = "policy.toml"
[broker]
url = "mqtts://127.0.0.1:8883"
ca = "ca.pem"
cert = "a.pem"
key = "a.key"
"#;

    #[test]
    fn minimal_config_gets_defaults_and_relative_paths() {
        let c = Config::parse(Path::new("/etc/mctc/authority.toml"), MINIMAL).unwrap();
        assert_eq!(c.signing_key, Path::new("/etc/mctc/keys/authority.key"));
        assert_eq!(c.database, Path::new("/var/lib/a.db"));
        assert_eq!(c.broker.ca, Path::new("/etc/mctc/ca.pem"));
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.enrollment.challenge_ttl_ms, 60_000);
        assert!(c.enrollment.ek_allow_sha256.is_empty());
        assert_eq!(c.metrics, None, "no [metrics] table, nothing served");
    }

    #[test]
    fn metrics_listen_defaults_to_loopback_and_refuses_anything_else() {
        let parse =
            |extra: &str| Config::parse(Path::new("/a.toml"), &format!("{MINIMAL}\n{extra}\n"));
        assert_eq!(
            parse("[metrics]").unwrap().metrics,
            Some(DEFAULT_METRICS_LISTEN)
        );
        assert_eq!(
            parse("[metrics]\nlisten = \"[::1]:9000\"").unwrap().metrics,
            Some("[::1]:9000".parse().unwrap())
        );
        for addr in ["0.0.0.0:9464", "192.0.2.1:9464", "[::]:9464"] {
            let err = parse(&format!("[metrics]\nlisten = \"{addr}\""))
                .unwrap_err()
                .to_string();
            assert!(err.contains("loopback"), "{addr}: {err}");
        }
        assert!(parse("[metrics]\nlisten = \"localhost:1\"").is_err());
        assert!(parse("[metrics]\nport = 1").is_err());
    }

    #[test]
    fn the_shipped_examples_parse() {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let config = Config::load(&configs.join("authority.toml")).unwrap();
        assert_eq!(config.authority_id, "fleet-authority");
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.broker.keep_alive_secs, 15);
        assert_eq!(config.metrics, Some(DEFAULT_METRICS_LISTEN));
        let policy = crate::policy::Policy::load(&configs.join("policy.toml")).unwrap();
        assert_eq!(policy.classes.keys().collect::<Vec<_>>(), ["locker", "pos"]);
        let locker = policy.class("locker").unwrap();
        assert_eq!(locker.pcrs, [0, 2, 4, 7, 14]);
        assert_eq!(locker.reference[&4].len(), 2);
        assert!(!locker.reference.contains_key(&7), "PCR 7 is left to learn");
        assert!(policy.first_use_class().is_none());
        assert!(policy.class("pos").unwrap().scope[0].fresh_attestation);
        assert_eq!(policy.heartbeat_interval_ms(), 5000);
    }

    #[test]
    fn rejects_bad_values_with_one_line_naming_the_key() {
        for (patch, needle) in [
            ("authority_id = \"has space\"", "authority_id"),
            ("instance = \"a/b\"", "instance"),
            ("[limits]\nnonce_ttl_ms = 10", "limits.nonce_ttl_ms"),
            ("[limits]\nqueue = 1", "limits.queue"),
            ("[limits]\nbogus = 1", "bogus"),
            (
                "[enrollment]\nek_allow_sha256 = [\"zz\"]",
                "ek_allow_sha256",
            ),
            ("unknown_key = 1", "unknown_key"),
        ] {
            let text = if patch.starts_with("authority_id") {
                MINIMAL.replace("authority_id = \"fleet-authority\"", patch)
            } else if patch.starts_with('[') {
                format!("{MINIMAL}\n{patch}\n")
            } else {
                format!("{patch}\n{MINIMAL}")
            };
            let err = Config::parse(Path::new("/a.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{patch}: {err}");
            assert!(!err.contains('\n'), "{patch}: {err}");
        }
        let err = Config::parse(
            Path::new("/a.toml"),
            &MINIMAL.replace("mqtts://127.0.0.1:8883", "mqtt://h:1"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("broker.url"), "{err}");
    }
}

//! The configuration file (TOML), parsed into typed structs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mctc_service::BrokerConfig;
use serde::Deserialize;

use crate::error::ConsoleError;

/// Where the console listens unless configured: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9443";

/// A device whose status has not changed for this long counts as silent.
pub const DEFAULT_SILENT_AFTER_SECS: u64 = 60;

/// `mctc-console.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Devices whose latest status is older than this are listed as silent.
    #[serde(default = "default_silent")]
    pub silent_after_secs: u64,
    /// The HTTPS side.
    pub tls: TlsConfig,
    /// The databases, read-only.
    pub stores: StoresConfig,
    /// The broker, with the monitor identity (`mctc-monitor`); without it
    /// the pages show the stores only, with no live gate state.
    pub broker: Option<BrokerConfig>,
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the console.
    pub cert: PathBuf,
    /// PEM private key (mode 0600).
    pub key: PathBuf,
    /// PEM CA(s) that issue operator client certificates.
    pub operator_ca: PathBuf,
}

/// `[stores]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoresConfig {
    /// The authority's SQLite database.
    pub authority: PathBuf,
    /// The collector's SQLite database.
    pub collector: PathBuf,
}

fn default_listen() -> SocketAddr {
    // A constant that parses: covered by `default_listen_is_loopback`.
    #[expect(clippy::expect_used, reason = "DEFAULT_LISTEN is a valid literal")]
    DEFAULT_LISTEN.parse().expect("valid default address")
}

fn default_silent() -> u64 {
    DEFAULT_SILENT_AFTER_SECS
}

impl Config {
    /// Parses `text`; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConsoleError> {
        let config: Config = toml::from_str(text).map_err(|e| ConsoleError::Config {
            path: path.display().to_string(),
            reason: e.message().to_owned(),
        })?;
        if config.silent_after_secs == 0 {
            return Err(ConsoleError::Config {
                path: path.display().to_string(),
                reason: "silent_after_secs must be at least 1".into(),
            });
        }
        Ok(config)
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConsoleError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConsoleError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Config::parse(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[tls]
cert = "/etc/mctc/console.crt"
key = "/etc/mctc/console.key"
operator_ca = "/etc/mctc/operators-ca.crt"
[stores]
authority = "/var/lib/mctc-authority/authority.db"
collector = "/var/lib/mctc-collector/collector.db"
"#;

    #[test]
    fn default_listen_is_loopback() {
        let config = Config::parse(MINIMAL, Path::new("t")).unwrap();
        assert!(config.listen.ip().is_loopback());
        assert_eq!(config.silent_after_secs, DEFAULT_SILENT_AFTER_SECS);
        assert!(config.broker.is_none());
    }

    #[test]
    fn unknown_keys_and_zero_silence_are_refused() {
        let err = Config::parse(&format!("bogus = 1\n{MINIMAL}"), Path::new("t")).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = Config::parse(&format!("silent_after_secs = 0\n{MINIMAL}"), Path::new("t"))
            .unwrap_err();
        assert!(err.to_string().contains("silent_after_secs"), "{err}");
    }
}

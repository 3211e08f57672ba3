//! The broker section shared by every binary's configuration file.

use std::path::PathBuf;

use serde::Deserialize;

use crate::ServiceError;

/// `[broker]` in every mctc configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `mqtts://host:port` (TLS is not optional).
    pub url: String,
    /// PEM bundle of the CA(s) that sign the broker's certificate.
    pub ca: PathBuf,
    /// PEM certificate chain of this client; its CN is the broker identity.
    pub cert: PathBuf,
    /// PEM private key of this client (mode 0600).
    pub key: PathBuf,
    /// MQTT keep-alive in seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u16,
}

/// `[metrics]` in the authority's and the collector's configuration: the
/// table turns `/metrics` on; `listen` defaults to the binary's loopback
/// port, and only a loopback address is accepted.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port`, e.g. `127.0.0.1:9464`.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

impl MetricsConfig {
    /// The address to serve on: `listen`, else `default`; refused unless
    /// it is loopback.
    pub fn listen_or(
        self,
        default: std::net::SocketAddr,
    ) -> Result<std::net::SocketAddr, crate::metrics::MetricsError> {
        let addr = self.listen.unwrap_or(default);
        if addr.ip().is_loopback() {
            Ok(addr)
        } else {
            Err(crate::metrics::MetricsError::NotLoopback { addr })
        }
    }
}

fn default_keep_alive() -> u16 {
    15
}

impl BrokerConfig {
    /// Splits the URL into host and port; only `mqtts://` is accepted.
    pub fn endpoint(&self) -> Result<(String, u16), ServiceError> {
        parse_url(&self.url)
    }
}

fn parse_url(url: &str) -> Result<(String, u16), ServiceError> {
    let bad = |reason: &str| ServiceError::BrokerUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = url
        .strip_prefix("mqtts://")
        .ok_or_else(|| bad("must start with mqtts:// (TLS is required)"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed [ in IPv6 host"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| bad("missing :port"))?;
        (host, port)
    } else {
        rest.rsplit_once(':').ok_or_else(|| bad("missing :port"))?
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| bad("port is not a number 1-65535"))?;
    if port == 0 {
        return Err(bad("port is not a number 1-65535"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn accepts_tls_urls_only() {
        assert_eq!(
            parse_url("mqtts://127.0.0.1:8883").unwrap(),
            ("127.0.0.1".into(), 8883)
        );
        assert_eq!(
            parse_url("mqtts://[::1]:8883/").unwrap(),
            ("::1".into(), 8883)
        );
        assert_eq!(
            parse_url("mqtts://broker.example:1").unwrap(),
            ("broker.example".into(), 1)
        );
        for bad in [
            "mqtt://h:1883",
            "h:1",
            "mqtts://h",
            "mqtts://:1",
            "mqtts://h:0",
            "mqtts://h:x",
            "mqtts://[::1:1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}

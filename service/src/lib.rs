//! mctc-service: the IO edge that every mctc binary shares.
//!
//! Libraries of mctc are sans-IO; the binaries (agent, authority, collector)
//! own sockets, files and MQTT. What they all need in the same way lives here
//! so it is written, reviewed and tested once:
//!
//! - [`link`]: an MQTT session over mutual TLS 1.3 (rumqttc + rustls/ring)
//!   that reconnects with jittered exponential backoff, resubscribes on every
//!   new session and hands incoming messages to the application.
//! - [`tls`]: TLS client configuration from PEM files, refusing key files that
//!   others can read.
//! - [`files`]: secret files written 0600, atomically and durably.
//! - [`clock`]: CLOCK_BOOTTIME milliseconds (deadlines keep running across a
//!   suspend, unlike `Instant`).
//! - [`keys`]: the authority's Ed25519 keys as PEM (PKCS#8, SPKI) and fingerprints.
//! - [`logging`]: one tracing setup for every binary (journald-native under systemd).
//! - [`metrics`]: OpenMetrics on `GET /metrics`, loopback only.
//! - [`status`]: a fleet service instance's retained status and Last Will.
//! - [`checkup`]: the report of `check-config`/`doctor` and the checks every
//!   binary shares (broker CA, client certificate CN/expiry/chain, key match,
//!   secret file modes, the broker handshake).
//! - `sqlite` (feature `sqlite`): what a database failure means (transient
//!   or our fault) and one way to open a store file.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod checkup;
pub mod clock;
pub mod config;
pub mod dynsec;
pub mod files;
pub mod keys;
pub mod link;
pub mod logging;
pub mod metrics;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "sqlite")]
pub mod sqlite_backup;
pub mod status;
pub mod tls;

pub use config::BrokerConfig;

/// Everything that can go wrong at the IO edge, with the path or endpoint it
/// concerns.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A key file is readable or writable by others.
    #[error(
        "{path}: secret file has mode {mode:o}; it must not be readable by others or writable by group/others (chmod 600 {path})"
    )]
    InsecureSecret { path: String, mode: u32 },
    /// PEM content is missing or malformed.
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    /// The TLS configuration was rejected.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The metrics endpoint could not be started.
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    /// The broker URL is not `mqtts://host:port`.
    #[error("broker url `{url}`: {reason}")]
    BrokerUrl { url: String, reason: String },
}

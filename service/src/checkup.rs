//! `check-config` and `doctor`, the parts every binary shares: the report
//! (one line per check: `ok`, `warn` or `FAIL`, what was checked, and for a
//! problem what to do), and the checks of files every service has — the
//! broker's CA, the client certificate and its key, secret files — plus the
//! online broker check (TLS handshake and MQTT CONNACK with the configured
//! identity).
//!
//! The checks run as whoever runs the command. Under systemd that is the
//! unit's `User=` (`ExecStartPre=` runs as the service user), so "readable"
//! means readable by the service; run by hand as root, the report says
//! that readability was checked as root.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls_pki_types::pem::PemObject;

use crate::{BrokerConfig, ServiceError, files, tls};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// Works now, but needs attention (expiry soon, loose ownership).
    Warn,
    /// The service cannot work like this.
    Fail,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// One checked thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub level: Level,
    /// What was checked and what was found.
    pub what: String,
    /// For a warning or failure: what to do.
    pub fix: Option<String>,
}

/// The lines of one `check-config` or `doctor` run, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub lines: Vec<Line>,
}

impl Report {
    pub fn new() -> Report {
        Report::default()
    }

    pub fn ok(&mut self, what: impl Into<String>) {
        self.lines.push(Line {
            level: Level::Ok,
            what: what.into(),
            fix: None,
        });
    }

    pub fn warn(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        self.lines.push(Line {
            level: Level::Warn,
            what: what.into(),
            fix: Some(fix.into()),
        });
    }

    pub fn fail(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        self.lines.push(Line {
            level: Level::Fail,
            what: what.into(),
            fix: Some(fix.into()),
        });
    }

    /// No check failed (warnings pass).
    pub fn passed(&self) -> bool {
        self.lines.iter().all(|l| l.level != Level::Fail)
    }

    /// 0 if every check passed, 1 if one failed (`ExecStartPre=` then stops
    /// the unit from starting).
    pub fn exit_code(&self) -> u8 {
        if self.passed() { 0 } else { 1 }
    }

    /// One line per check: `ok   what`, `warn what: fix`, `FAIL what: fix`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            let _ = match &line.fix {
                Some(fix) => writeln!(out, "{:<4} {} — {fix}", line.level.label(), line.what),
                None => writeln!(out, "{:<4} {}", line.level.label(), line.what),
            };
        }
        out
    }
}

/// Certificates expiring within this many days are a warning.
pub const EXPIRY_WARN_DAYS: u64 = 30;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn date(unix: i64) -> String {
    // Days since the epoch to a civil date (Howard Hinnant's algorithm), so
    // the report needs no time crate.
    let days = unix.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A secret file (private key, signing key): present, readable by this
/// user, mode without group-write or other bits (the daemons refuse it
/// otherwise), ideally 0600 and owned by this user.
pub fn secret_file(report: &mut Report, what: &str, path: &Path) {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            report.fail(
                format!("{what} {shown}: {e}"),
                "create it, or fix the path in the configuration",
            );
            return;
        }
    };
    if let Err(e) = std::fs::File::open(path) {
        report.fail(
            format!(
                "{what} {shown}: not readable by uid {} ({e})",
                rustix::process::geteuid().as_raw()
            ),
            format!("chown the file to the service user and chmod 600 {shown}"),
        );
        return;
    }
    let mode = meta.mode() & 0o7777;
    match files::check_secret_mode(path) {
        Err(ServiceError::InsecureSecret { .. }) => {
            report.fail(
                format!("{what} {shown}: mode {mode:o} lets others read or change it"),
                format!("chmod 600 {shown}"),
            );
            return;
        }
        Err(e) => {
            report.fail(format!("{what}: {e}"), "fix the file's permissions");
            return;
        }
        Ok(()) => {}
    }
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid && euid != 0 {
        report.warn(
            format!(
                "{what} {shown}: mode {mode:o}, owned by uid {} (this service runs as uid {euid})",
                meta.uid()
            ),
            format!("chown the file to the service user and chmod 600 {shown}"),
        );
    } else {
        report.ok(format!("{what} {shown}: mode {mode:o}, readable"));
    }
}

/// A file the service must read (configuration, CA, certificate, policy).
pub fn readable_file(report: &mut Report, what: &str, path: &Path) -> bool {
    match std::fs::File::open(path) {
        Ok(_) => {
            report.ok(format!("{what} {} readable", path.display()));
            true
        }
        Err(e) => {
            report.fail(
                format!("{what} {}: {e}", path.display()),
                "make it readable by the service user (e.g. root:mctc 0640)",
            );
            false
        }
    }
}

/// The broker files of a service: the CA bundle; the client certificate
/// (its CN must be `identity`, the name the broker's ACL knows; valid now
/// and for more than [`EXPIRY_WARN_DAYS`]; chaining to the CA); its key
/// (secret-file rules, and the certificate's key pair).
pub fn broker_files(report: &mut Report, broker: &BrokerConfig, identity: &str) {
    if let Err(e) = broker.endpoint() {
        report.fail(
            format!("broker url: {e}"),
            "set [broker] url = \"mqtts://HOST:8883\"",
        );
    } else {
        report.ok(format!("broker url {}", broker.url));
    }
    let roots = match tls::read_certs(&broker.ca) {
        Ok(certs) => {
            report.ok(format!(
                "CA {} present ({} certificate{})",
                broker.ca.display(),
                certs.len(),
                if certs.len() == 1 { "" } else { "s" }
            ));
            Some(certs)
        }
        Err(e) => {
            report.fail(
                format!("CA: {e}"),
                "install the fleet CA's certificate (PEM) at [broker] ca",
            );
            None
        }
    };
    let chain = match tls::read_certs(&broker.cert) {
        Ok(chain) => chain,
        Err(e) => {
            report.fail(
                format!("client certificate: {e}"),
                "install this service's certificate (PEM) at [broker] cert",
            );
            secret_file(report, "client key", &broker.key);
            return;
        }
    };
    certificate(report, &chain[0], &broker.cert, identity);
    if let Some(roots) = &roots {
        chains_to(report, &chain, roots);
    }
    secret_file(report, "client key", &broker.key);
    key_matches(report, &chain, &broker.key);
}

fn certificate(report: &mut Report, cert: &CertificateDer<'_>, path: &Path, identity: &str) {
    let shown = path.display();
    let parsed = match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, parsed)) => parsed,
        Err(e) => {
            report.fail(
                format!("client certificate {shown}: does not parse ({e})"),
                "install a PEM X.509 certificate",
            );
            return;
        }
    };
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("");
    if cn == identity {
        report.ok(format!("client certificate CN = {identity}"));
    } else {
        report.fail(
            format!("client certificate CN is \"{cn}\", not \"{identity}\""),
            format!(
                "issue a certificate with CN={identity} (the broker maps the CN to the identity it authorizes)"
            ),
        );
    }
    let validity = parsed.validity();
    let now = i64::try_from(now_unix()).unwrap_or(i64::MAX);
    let (from, until) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let renew = "issue a new certificate and key for this identity";
    if until <= now {
        report.fail(
            format!("client certificate expired on {}", date(until)),
            renew,
        );
    } else if from > now {
        report.fail(
            format!("client certificate is not valid before {}", date(from)),
            "check the system clock, or issue a certificate valid now",
        );
    } else {
        let days = (until - now) / 86_400;
        if days < i64::try_from(EXPIRY_WARN_DAYS).unwrap_or(i64::MAX) {
            report.warn(
                format!(
                    "client certificate expires on {} (in {days} days)",
                    date(until)
                ),
                renew,
            );
        } else {
            report.ok(format!(
                "client certificate valid until {} ({days} days)",
                date(until)
            ));
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn chains_to(
    report: &mut Report,
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        let _ = store.add(root.clone());
    }
    let verifier = match rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(store),
        provider(),
    )
    .build()
    {
        Ok(verifier) => verifier,
        Err(e) => {
            report.fail(
                format!("CA: not a usable trust anchor ({e})"),
                "install the fleet CA's certificate",
            );
            return;
        }
    };
    match verifier.verify_client_cert(&chain[0], &chain[1..], UnixTime::now()) {
        Ok(_) => report.ok("client certificate chains to the CA"),
        // Expiry is its own line above.
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Expired))
        | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext {
            ..
        })) => {}
        Err(e) => report.fail(
            format!("client certificate does not verify against the CA ({e})"),
            "issue the certificate from the CA in [broker] ca, or install that CA",
        ),
    }
}

fn key_matches(report: &mut Report, chain: &[CertificateDer<'static>], key_path: &Path) {
    let Ok(key) = PrivateKeyDer::from_pem_file(key_path) else {
        // Unreadable or no key block: the key line above says why.
        if std::fs::File::open(key_path).is_ok() {
            report.fail(
                format!("client key {}: no PEM private key", key_path.display()),
                "install the PKCS#8 (or SEC1/PKCS#1) PEM key of the certificate",
            );
        }
        return;
    };
    let signing = match rustls::crypto::ring::sign::any_supported_type(&key) {
        Ok(signing) => signing,
        Err(e) => {
            report.fail(
                format!("client key {}: unsupported ({e})", key_path.display()),
                "use an ECDSA P-256/P-384, Ed25519 or RSA key",
            );
            return;
        }
    };
    match rustls::sign::CertifiedKey::new(chain.to_vec(), signing).keys_match() {
        Ok(()) => report.ok("client key matches the certificate"),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => report.warn(
            "client key: cannot compare with the certificate",
            "make sure the key is the certificate's",
        ),
        Err(_) => report.fail(
            "client key does not match the certificate",
            "install the key the certificate was issued for (or a certificate for this key)",
        ),
    }
}

/// Connects once with the configured broker files and `client_id`
/// (never the running daemon's id, which the broker would disconnect):
/// TLS 1.3 handshake with the client certificate and an MQTT CONNACK.
pub async fn broker_connect(report: &mut Report, broker: &BrokerConfig, client_id: &str) {
    let what = format!(
        "broker {}: TLS handshake and CONNACK as {client_id}",
        broker.url
    );
    let (host, port) = match broker.endpoint() {
        Ok(endpoint) => endpoint,
        Err(e) => {
            report.fail(format!("{what}: {e}"), "fix [broker] url");
            return;
        }
    };
    let config = match tls::client_config(broker) {
        Ok(config) => config,
        Err(e) => {
            report.fail(format!("{what}: {e}"), "fix the broker files above");
            return;
        }
    };
    let mut options = rumqttc::MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(5));
    options.set_clean_session(true);
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(config),
    ));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 4);
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                    return Ok(ack.code);
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    let _ = client.try_disconnect();
    match outcome {
        Ok(Ok(rumqttc::ConnectReturnCode::Success)) => report.ok(what),
        Ok(Ok(code)) => report.fail(
            format!("{what}: broker refused ({code:?})"),
            "grant this identity on the broker (dynamic security) or check its certificate",
        ),
        Ok(Err(e)) => report.fail(
            format!("{what}: {e}"),
            "is the broker running and reachable, and does it trust this certificate's CA?",
        ),
        Err(_) => report.fail(
            format!("{what}: no answer within 10 s"),
            "is the broker reachable (firewall, address)?",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_767_225_599), "2025-12-31");
    }

    #[test]
    fn a_failure_fails_the_report_and_a_warning_does_not() {
        let mut report = Report::new();
        report.ok("a");
        report.warn("b", "do b");
        assert_eq!(report.exit_code(), 0);
        report.fail("c", "do c");
        assert_eq!(report.exit_code(), 1);
        assert_eq!(report.render(), "ok   a\nwarn b — do b\nFAIL c — do c\n");
    }
}

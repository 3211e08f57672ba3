//! `mctc-collector check-config` (offline, fast: systemd `ExecStartPre=`)
//! and `doctor` (the same, then the broker handshake). The report and the
//! shared checks are `mctc_service::checkup`.

use std::path::Path;

use mctc_service::checkup::{self, Report};

use crate::config::Config;

/// The broker identity of every collector instance (the CN its ACL knows).
pub const IDENTITY: &str = "mctc-collector";

/// The offline checks; the configuration when it loaded.
pub fn check_config(path: &Path) -> (Report, Option<Config>) {
    let mut report = Report::new();
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            report.fail(
                format!("configuration {}: {e}", path.display()),
                "fix the file (configs/collector.toml documents every key)",
            );
            return (report, None);
        }
    };
    report.ok(format!(
        "configuration {} parses and validates",
        path.display()
    ));
    checkup::broker_files(&mut report, &config.broker, IDENTITY);
    for key in &config.authority.public_keys {
        match mctc_service::keys::read_public_key(key) {
            Ok(_) => report.ok(format!("authority public key {} loads", key.display())),
            Err(e) => report.fail(
                format!("authority public key: {e}"),
                "install the authority's authority.pub named in [authority] public_keys",
            ),
        }
    }
    checkup::secret_file(&mut report, "receipt key", &config.receipts.key);
    match crate::receipt::ReceiptSigner::load(&config.receipts.key) {
        Ok(_) => report.ok("receipt key loads"),
        Err(e) => report.fail(
            format!("receipt key: {e}"),
            "generate one with mctc-collector keygen, or fix [receipts] key",
        ),
    }
    mctc_service::sqlite::check_database(
        &mut report,
        &config.store.path,
        &crate::store::sqlite::SCHEMA,
    );
    (report, Some(config))
}

/// `check_config`, then the broker.
pub async fn doctor(path: &Path) -> Report {
    let (mut report, config) = check_config(path);
    if let Some(config) = config {
        checkup::broker_connect(&mut report, &config.broker, &format!("{IDENTITY}-doctor")).await;
    }
    report
}

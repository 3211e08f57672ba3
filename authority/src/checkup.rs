//! `mctc-authority check-config` (offline, fast: systemd `ExecStartPre=`)
//! and `doctor` (the same, then the broker handshake and whether the policy
//! covers each class's PCR selection, learned baselines included). The
//! report and the shared checks are `mctc_service::checkup`.

use std::collections::BTreeSet;
use std::path::Path;

use mctc_service::checkup::{self, Report};

use crate::config::Config;
use crate::policy::Policy;
use crate::store::Store;
use crate::store::sqlite::{SCHEMA, SqliteStore};

/// The broker identity of every authority instance (the CN its ACL knows).
pub const IDENTITY: &str = "mctc-authority";

/// The offline checks; the configuration and policy when they loaded.
pub fn check_config(path: &Path) -> (Report, Option<(Config, Policy)>) {
    let mut report = Report::new();
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            report.fail(
                format!("configuration {}: {e}", path.display()),
                "fix the file (configs/authority.toml documents every key)",
            );
            return (report, None);
        }
    };
    report.ok(format!(
        "configuration {} parses and validates (authority {})",
        path.display(),
        config.authority_id
    ));
    checkup::broker_files(&mut report, &config.broker, IDENTITY);
    checkup::secret_file(&mut report, "signing key", &config.signing_key);
    match mctc_service::keys::read_signing_key(&config.signing_key) {
        Ok(_) => report.ok("signing key loads"),
        Err(e) => report.fail(
            format!("signing key: {e}"),
            "generate one with mctc-authority keygen, or fix signing_key",
        ),
    }
    let policy = match Policy::load(&config.policy) {
        Ok(policy) => {
            report.ok(format!(
                "policy {} loads ({} classes)",
                config.policy.display(),
                policy.classes.len()
            ));
            Some(policy)
        }
        Err(e) => {
            report.fail(
                format!("policy: {e}"),
                "fix the policy file (configs/policy.toml documents it)",
            );
            None
        }
    };
    if let Some(bundle) = &config.enrollment.ek_ca_bundle {
        checkup::readable_file(&mut report, "EK CA bundle", bundle);
    }
    mctc_service::sqlite::check_database(&mut report, &config.database, &SCHEMA);
    (report, policy.map(|p| (config, p)))
}

/// `check_config`, then the broker and the policy's coverage.
pub async fn doctor(path: &Path) -> Report {
    let (mut report, loaded) = check_config(path);
    let Some((config, policy)) = loaded else {
        return report;
    };
    coverage(&mut report, &config, &policy);
    checkup::broker_connect(&mut report, &config.broker, &format!("{IDENTITY}-doctor")).await;
    report
}

/// Every PCR a class quotes needs an allowed value (from the file or
/// learned); otherwise each device of the class is refused
/// (`policy-mismatch`, no baseline) — the device quotes exactly the class's
/// selection, so this is the whole question.
fn coverage(report: &mut Report, config: &Config, policy: &Policy) {
    let mut store = match SqliteStore::open(&config.database) {
        Ok(store) => Some(store),
        Err(e) => {
            report.fail(
                format!("database {}: {e}", config.database.display()),
                "the learned baselines cannot be read; check the database",
            );
            None
        }
    };
    for class in policy.classes.values() {
        let learned: BTreeSet<u8> = match store.as_mut().map(|s| s.baseline(&class.name)) {
            // Only the class's own learned digests cover every device of
            // it; a stage covers a share.
            Some(Ok(baseline)) => baseline.learned.iter().map(|l| l.pcr).collect(),
            Some(Err(e)) => {
                report.fail(
                    format!("class {}: learned baseline: {e}", class.name),
                    "check the database",
                );
                continue;
            }
            None => BTreeSet::new(),
        };
        let list = |pcrs: &[u8]| pcrs.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
        let missing: Vec<u8> = class
            .pcrs
            .iter()
            .copied()
            .filter(|pcr| {
                class.reference.get(pcr).is_none_or(Vec::is_empty) && !learned.contains(pcr)
            })
            .collect();
        if missing.is_empty() {
            report.ok(format!(
                "class {}: policy covers its PCR selection {}",
                class.name,
                list(&class.pcrs)
            ));
        } else {
            report.fail(
                format!(
                    "class {}: PCR {} of its selection {} ha{} no allowed value: every device of the class is refused (policy-mismatch)",
                    class.name,
                    list(&missing),
                    list(&class.pcrs),
                    if missing.len() == 1 { "s" } else { "ve" }
                ),
                format!(
                    "add [classes.{}.reference] values, or learn them from a known-good device (mctc-authority policy learn)",
                    class.name
                ),
            );
        }
    }
}

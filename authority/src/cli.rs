//! The command line: the daemon, key generation, and the fleet manager's
//! commands on the database (safe while `run` is running: every change is
//! one transaction, and what devices must hear goes through the outbox).

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use mctc_shim::DeviceId;
use mctc_shim::api::PcrStatus;
use mctc_shim::limits::MAX_REASON_LEN;
use serde_json::{Map, Value, json};

use crate::config::{Config, parse_sha256};
use crate::error::{Error, device_id};
use crate::issuer::status_name;
use crate::now::Now;
use crate::policy::Policy;
use crate::policy_cli::{PolicyCommand, Session};
use crate::store::sqlite::SqliteStore;
use crate::store::{DeviceRecord, NewDevice, StatusChange, StatusOutcome, Store, Verdict};
use crate::verdict::indices;

/// Where `--config` points by default (the systemd unit's path).
pub const DEFAULT_CONFIG: &str = "/etc/mctc/authority.toml";

/// mctc fleet authority: enrollment, evidence verification, artifacts,
/// heartbeat, and the fleet manager's commands.
#[derive(Debug, Parser)]
#[command(name = "mctc-authority", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make the Ed25519 issuer key (authority.key 0600, authority.pub).
    Keygen {
        /// Directory to write the key files into.
        #[arg(long)]
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the authority daemon.
    Run {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Register, inspect, contain, restore and revoke devices.
    Devices {
        /// Configuration file.
        #[arg(long, global = true, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Write a consistent copy of the database while the daemon runs
    /// (0600; refuses to overwrite).
    Backup {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The backup file to write.
        #[arg(long)]
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Install a backup as the database (every authority stopped); every
    /// sequence number devices see moves past anything issued before.
    Restore {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The backup file to install.
        #[arg(long)]
        from: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the configuration, key, policy, database and certificates
    /// offline (fast; systemd ExecStartPre=). Exit 0 if nothing failed.
    CheckConfig {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// check-config, then the broker (TLS handshake and CONNACK) and
    /// whether the policy covers each class's PCR selection.
    Doctor {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Inspect the policy; learn, forget and stage accepted values.
    Policy {
        /// Configuration file.
        #[arg(long, global = true, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DevicesCommand {
    /// Register a device id in a class.
    Add {
        /// Device id ([a-z0-9._-]{1,64}).
        id: String,
        /// Its class (from the policy file).
        #[arg(long)]
        class: String,
        /// Pin the SHA-256 of its EK TPM2B_PUBLIC (hex).
        #[arg(long = "ek-sha256")]
        ek_sha256: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every device.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one device.
    Show {
        /// Device id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Contain a device: no artifacts until restored.
    Contain {
        /// Device id.
        id: String,
        /// Why (≤ 64 bytes; sent to the device).
        #[arg(long)]
        reason: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lift containment; the device re-attests.
    Restore {
        /// Device id.
        id: String,
        /// Why (≤ 64 bytes; sent to the device).
        #[arg(long, default_value = "restored by operator")]
        reason: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device permanently.
    Revoke {
        /// Device id.
        id: String,
        /// Why (≤ 64 bytes; sent to the device).
        #[arg(long)]
        reason: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Parses the command line; clap's multi-line errors become one line.
/// `Err((code, text))` when the process should exit without running.
pub fn parse() -> Result<Cli, (u8, String)> {
    Cli::try_parse().map_err(|e| {
        use clap::error::ErrorKind;
        match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => (0, e.to_string()),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => (
                2,
                "a command is required (see mctc-authority --help)".to_owned(),
            ),
            _ => (2, clap_one_line(&e.to_string())),
        }
    })
}

fn clap_one_line(text: &str) -> String {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            out.push(line.strip_prefix("error: ").unwrap_or(line));
        }
    }
    out.join(" ")
}

/// Runs the command.
pub fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Keygen { out, json } => keygen(&out, json),
        Command::Run { config } => run_daemon(&config),
        Command::Devices { config, command } => devices(&config, command),
        Command::Policy { config, command } => {
            let mut cx = Context::open(&config)?;
            let policy = cx.policy()?;
            let mut session = Session {
                store: &mut cx.store,
                database: &cx.config.database,
                now: &cx.now,
            };
            crate::policy_cli::run(&mut session, &policy, command)
        }
        Command::Backup { config, out, json } => backup(&config, &out, json),
        Command::Restore { config, from, json } => restore(&config, &from, json),
        Command::CheckConfig { config } => report(crate::checkup::check_config(&config).0),
        Command::Doctor { config } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Environment(format!("cannot start the async runtime: {e}")))?;
            report(runtime.block_on(crate::checkup::doctor(&config)))
        }
    }
}

/// Prints a check report; a failed check is exit 1 (`ExecStartPre=` then
/// keeps the service from starting).
fn report(report: mctc_service::checkup::Report) -> Result<(), Error> {
    print!("{}", report.render());
    if report.passed() {
        Ok(())
    } else {
        Err(Error::Refused("a check failed".into()))
    }
}

fn backup(config: &Path, out: &Path, json: bool) -> Result<(), Error> {
    let config = Config::load(config)?;
    let info = crate::backup::backup(&config, out)?;
    if json {
        print_json(&json!({"backup": info.path.display().to_string(), "bytes": info.bytes}));
    } else {
        println!("backup: {} ({} bytes)", info.path.display(), info.bytes);
    }
    Ok(())
}

fn restore(config: &Path, from: &Path, json: bool) -> Result<(), Error> {
    let config = Config::load(config)?;
    let info = crate::backup::restore(&config, from)?;
    let replaced = info.replaced.as_ref().map(|p| p.display().to_string());
    let a = info.fixed;
    tracing::info!(
        floor = a.floor,
        backup_max = a.backup_max,
        devices = a.devices,
        "database restored"
    );
    if json {
        print_json(&json!({
            "restored": config.database.display().to_string(),
            "from": from.display().to_string(),
            "replaced": replaced,
            "seq_floor": a.floor,
            "backup_max_seq": a.backup_max,
            "devices": a.devices,
            "dropped_nonces_and_challenges": a.dropped_single_use,
        }));
    } else {
        println!(
            "restored: {} from {}",
            config.database.display(),
            from.display()
        );
        if let Some(replaced) = replaced {
            println!("replaced database kept as {replaced}");
        }
        println!(
            "sequence numbers raised from at most {} to {} ({} devices); {} nonces and challenges dropped",
            a.backup_max, a.floor, a.devices, a.dropped_single_use
        );
        println!(
            "changes made after the backup (registrations, enrollments, containments, revocations, baselines) are not in it: redo them"
        );
    }
    Ok(())
}

fn keygen(out: &Path, json: bool) -> Result<(), Error> {
    let key = out.join("authority.key");
    if key.exists() {
        return Err(Error::Refused(format!(
            "{} exists; refusing to overwrite a signing key",
            key.display()
        )));
    }
    let public = mctc_service::keys::generate(out)?;
    let fingerprint = mctc_service::keys::fingerprint(&public);
    let pub_path = out.join("authority.pub");
    if json {
        print_json(&json!({
            "public_key": hex::encode(public),
            "fingerprint": fingerprint,
            "key": key.display().to_string(),
            "pub": pub_path.display().to_string(),
        }));
    } else {
        println!("public key:  {}", hex::encode(public));
        println!("fingerprint: {fingerprint}");
        println!("private key: {} (0600)", key.display());
        println!(
            "public key:  {} (give this to devices and collectors)",
            pub_path.display()
        );
    }
    Ok(())
}

fn run_daemon(config: &Path) -> Result<(), Error> {
    mctc_service::logging::init();
    let config = Config::load(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("mctc-authority-rt")
        .build()
        .map_err(|e| Error::Environment(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(crate::daemon::run(config, shutdown_signal()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "SIGTERM handler not installed; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn print_json(value: &Value) {
    println!("{value}");
}

struct Context {
    config: Config,
    store: SqliteStore,
    now: Now,
}

impl Context {
    fn open(path: &Path) -> Result<Context, Error> {
        let config = Config::load(path)?;
        let store = SqliteStore::open(&config.database).map_err(|e| Error::Store {
            path: config.database.clone(),
            source: e,
        })?;
        Ok(Context {
            config,
            store,
            now: Now::read()?,
        })
    }

    fn policy(&self) -> Result<Policy, Error> {
        Policy::load(&self.config.policy)
    }

    fn db<T>(&self, r: Result<T, crate::store::StoreError>) -> Result<T, Error> {
        r.map_err(|e| Error::Store {
            path: self.config.database.clone(),
            source: e,
        })
    }

    fn device(&mut self, id: &DeviceId) -> Result<DeviceRecord, Error> {
        let found = self.store.device(id);
        self.db(found)?
            .ok_or_else(|| Error::UnknownDevice(id.to_string()))
    }
}

fn check_reason(reason: &str) -> Result<(), Error> {
    if reason.len() > MAX_REASON_LEN {
        return Err(Error::Usage(format!(
            "--reason is {} bytes; at most {MAX_REASON_LEN} fit in a control message",
            reason.len()
        )));
    }
    Ok(())
}

fn devices(config: &Path, command: DevicesCommand) -> Result<(), Error> {
    match command {
        DevicesCommand::Add {
            id,
            class,
            ek_sha256,
            json,
        } => {
            let id = device_id(&id)?;
            let pinned = ek_sha256
                .as_deref()
                .map(|hex| {
                    parse_sha256(hex).ok_or_else(|| {
                        Error::Usage(format!("--ek-sha256 `{hex}` is not 64 hex digits"))
                    })
                })
                .transpose()?;
            let mut cx = Context::open(config)?;
            let policy = cx.policy()?;
            if policy.class(&class).is_none() {
                return Err(Error::Usage(format!(
                    "class `{class}` is not in the policy {} (classes: {})",
                    policy.path.display(),
                    policy
                        .classes
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let added = cx.store.add_device(
                &NewDevice {
                    id: id.clone(),
                    class: class.clone(),
                    pinned_ek_sha256: pinned,
                },
                &cx.now,
            );
            if !cx.db(added)? {
                return Err(Error::Refused(format!("device {id} is already registered")));
            }
            if json {
                print_json(
                    &json!({"device": id.as_str(), "class": class, "status": "active", "changed": true}),
                );
            } else {
                println!("registered {id} in class {class}");
            }
            Ok(())
        }
        DevicesCommand::List { json } => {
            let mut cx = Context::open(config)?;
            let all = cx.store.devices();
            let all = cx.db(all)?;
            if json {
                print_json(&Value::Array(
                    all.iter().map(|d| device_json(d, false, 0)).collect(),
                ));
            } else {
                println!(
                    "{:<24} {:<12} {:<10} {:<8} {:<16} {:>9}",
                    "ID", "CLASS", "STATUS", "ENROLLED", "LAST", "ARTIFACTS"
                );
                for d in &all {
                    println!(
                        "{:<24} {:<12} {:<10} {:<8} {:<16} {:>9}",
                        d.id.as_str(),
                        d.class,
                        status_name(d.status),
                        if d.enrolled.is_some() { "yes" } else { "no" },
                        last_outcome(d),
                        d.artifacts_issued
                    );
                }
            }
            Ok(())
        }
        DevicesCommand::Show { id, json } => {
            let id = device_id(&id)?;
            let mut cx = Context::open(config)?;
            let d = cx.device(&id)?;
            let value = device_json(&d, true, cx.now.wall_ms);
            if json {
                print_json(&value);
            } else {
                print_device(&value);
            }
            Ok(())
        }
        DevicesCommand::Contain { id, reason, json } => {
            change(config, &id, StatusChange::Contain, &reason, json)
        }
        DevicesCommand::Restore { id, reason, json } => {
            change(config, &id, StatusChange::Restore, &reason, json)
        }
        DevicesCommand::Revoke { id, reason, json } => {
            change(config, &id, StatusChange::Revoke, &reason, json)
        }
    }
}

fn change(
    config: &Path,
    id: &str,
    change: StatusChange,
    reason: &str,
    json: bool,
) -> Result<(), Error> {
    let id = device_id(id)?;
    check_reason(reason)?;
    let mut cx = Context::open(config)?;
    let outcome = cx.store.change_status(&id, change, reason, &cx.now);
    let (status, changed) = match cx.db(outcome)? {
        StatusOutcome::NotFound => return Err(Error::UnknownDevice(id.to_string())),
        StatusOutcome::Refused(status) => {
            let what = match change {
                StatusChange::Contain => "contain",
                StatusChange::Restore => "restore",
                StatusChange::Revoke => "revoke",
            };
            return Err(Error::Refused(format!(
                "cannot {what} {id}: it is {}",
                status_name(status)
            )));
        }
        StatusOutcome::Unchanged(status) => (status, false),
        StatusOutcome::Changed { status, .. } => (status, true),
    };
    if json {
        print_json(
            &json!({"device": id.as_str(), "status": status_name(status), "changed": changed}),
        );
    } else if changed {
        println!(
            "{id} is now {}; the signed control is sent by the running authority",
            status_name(status)
        );
    } else {
        println!("{id} is already {}", status_name(status));
    }
    Ok(())
}

fn last_outcome(d: &DeviceRecord) -> String {
    match (d.verdict, d.refusal) {
        (Some(Verdict::Affirmed), _) => "affirmed".to_owned(),
        (Some(Verdict::Refused), Some(r)) => format!("refused:{r}"),
        (Some(Verdict::Refused), None) => "refused".to_owned(),
        (None, _) => "-".to_owned(),
    }
}

fn secs(ms: Option<u64>) -> Value {
    ms.map_or(Value::Null, |ms| json!(ms / 1000))
}

fn pcr_map(mask: u32, values: &[[u8; 32]]) -> Value {
    let mut map = Map::new();
    for (pcr, value) in indices(mask).zip(values) {
        map.insert(pcr.to_string(), json!(hex::encode(value)));
    }
    Value::Object(map)
}

fn device_json(d: &DeviceRecord, detailed: bool, now_ms: u64) -> Value {
    let mut v = json!({
        "id": d.id.as_str(),
        "class": d.class,
        "status": status_name(d.status),
        "reason": d.reason,
        "enrolled": d.enrolled.is_some(),
        "ek_sha256": d.enrolled.as_ref().map(|e| hex::encode(e.ek_sha256))
            .or_else(|| d.pinned_ek_sha256.map(hex::encode)),
        "ak_sha256": d.enrolled.as_ref()
            .map(|e| hex::encode(mctc_attest::verifier::public_key_fingerprint(&e.ak_public))),
        "added_at": d.added_ms / 1000,
        "enrolled_at": secs(d.enrolled.as_ref().map(|e| e.at_ms)),
        "last_attested_at": secs(d.attempt_ms),
        "last_verdict": match d.verdict {
            Some(Verdict::Affirmed) => json!("affirmed"),
            Some(Verdict::Refused) => json!("refused"),
            None => Value::Null,
        },
        "last_refusal": d.refusal.map(|r| r.name()),
        "artifacts_issued": d.artifacts_issued,
        "control_seq": d.control_seq,
    });
    if detailed && let Value::Object(map) = &mut v {
        map.insert(
            "boot".into(),
            d.last_clock.map_or(
                Value::Null,
                |c| json!({"reset_count": c.reset_count, "restart_count": c.restart_count}),
            ),
        );
        map.insert(
            "last_pcrs".into(),
            d.last_pcrs.as_ref().map_or(
                Value::Null,
                |p| json!({"bank": "sha256", "values": pcr_map(p.mask, &p.values)}),
            ),
        );
        map.insert("verified_at".into(), secs(d.verified_ms));
        map.insert(
            "refusal".into(),
            d.refusal_detail.as_ref().map_or(Value::Null, |r| {
                json!({
                    "detail": r.words,
                    "pcrs": r.pcrs,
                    "since": r.since_ms / 1000,
                    "for_secs": now_ms.saturating_sub(r.since_ms) / 1000,
                })
            }),
        );
        map.insert("hint".into(), json!(crate::explain::hint(d)));
    }
    v
}

/// `devices show` for people: one `key value` line each, the refusal's
/// PCRs one line each.
fn print_device(value: &Value) {
    let Value::Object(map) = value else { return };
    let line = |key: &str, value: &Value| {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Null => "-".to_owned(),
            other => other.to_string(),
        };
        println!("{key:<18} {text}");
    };
    for (key, value) in map {
        match (key.as_str(), value) {
            ("refusal", Value::Object(refusal)) => {
                for (k, v) in refusal {
                    if k == "pcrs" {
                        let pcrs: Vec<PcrStatus> =
                            serde_json::from_value(v.clone()).unwrap_or_default();
                        for pcr in pcrs {
                            println!("{:<18} {pcr}", "refusal_pcr");
                        }
                    } else {
                        line(&format!("refusal_{k}"), v);
                    }
                }
            }
            _ => line(key, value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_become_one_line() {
        let text = "error: the following required arguments were not provided:\n  --class <CLASS>\n\nUsage: mctc-authority devices add --class <CLASS> <ID>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            clap_one_line(text),
            "the following required arguments were not provided: --class <CLASS>"
        );
    }

    #[test]
    fn device_ids_and_reasons_are_checked() {
        assert!(device_id("locker-1").is_ok());
        for bad in ["mctc-authority", "Locker", "", ".x"] {
            assert_eq!(device_id(bad).unwrap_err().exit_code(), 2);
        }
        assert!(check_reason(&"r".repeat(64)).is_ok());
        assert_eq!(check_reason(&"r".repeat(65)).unwrap_err().exit_code(), 2);
    }
}

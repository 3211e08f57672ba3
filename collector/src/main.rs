//! `mctc-collector`: `run --config FILE` (the daemon), `keygen --out DIR`
//! (the receipt key), `export DEVICE --config FILE --out BUNDLE` (a bundle
//! from the store with a fresh receipt) and `verify BUNDLE --authority-key
//! FILE [--collector-key FILE] [--json]` (offline).
//!
//! Exit codes: 0 success (a bundle verified); 1 verification failed; 2 usage,
//! configuration or IO error. Every error is one line on stderr.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use mctc_collector::cli::{Cli, Command};
use mctc_collector::config::Config;
use mctc_collector::receipt::KEY_STEM;
use mctc_collector::verify::{Report, utc, verify_bundle};
use mctc_collector::{Error, service};
use mctc_shim::bundle::{BundleParts, MAX_BUNDLE_LEN, encode_bundle};
use mctc_shim::{AuthorityKey, CollectorKey, DeviceId, RingCrypto};

const USAGE: u8 = 2;
const FAILED: u8 = 1;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("mctc-collector: {first} (see --help)");
            return ExitCode::from(USAGE);
        }
    };
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Keygen { out } => keygen(&out),
        Command::CheckConfig { config } => {
            report(&mctc_collector::checkup::check_config(&config).0)
        }
        Command::Doctor { config } => {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => report(&runtime.block_on(mctc_collector::checkup::doctor(&config))),
                Err(e) => fail(&Error::Runtime(e)),
            }
        }
        Command::Export {
            device,
            config,
            out,
        } => export(&device, &config, &out),
        Command::Verify {
            bundle,
            authority_keys,
            collector_keys,
            json,
        } => verify(&bundle, &authority_keys, &collector_keys, json),
        Command::Backup { config, out } => backup(&config, &out),
        Command::Restore { config, from } => restore(&config, &from),
    }
}

/// A refused backup or restore (exists, in use, unusable backup) exits 1;
/// anything else is an error (2).
fn fail_backup(error: mctc_service::sqlite_backup::BackupError) -> ExitCode {
    use mctc_service::sqlite_backup::BackupError as B;
    let code = match &error {
        B::Exists(_) | B::InUse(_) | B::BadBackup { .. } | B::FixUp(_) => FAILED,
        B::NoDatabase(_) | B::Io { .. } | B::Sqlite { .. } => USAGE,
    };
    eprintln!("mctc-collector: {}", Error::Backup(error));
    ExitCode::from(code)
}

fn backup(config: &Path, out: &Path) -> ExitCode {
    let config = match Config::load(config) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    match mctc_service::sqlite_backup::backup(&config.store.path, out) {
        Ok(info) => {
            println!("backup: {} ({} bytes)", info.path.display(), info.bytes);
            ExitCode::SUCCESS
        }
        Err(e) => fail_backup(e),
    }
}

/// The collector issues no number a device must see grow (receipts name
/// the device's own seqs, and a device ignores one below the receipt it
/// keeps), so the copy is installed as it is; collector/README.md,
/// "Backup and restore", says what a restore loses and how it shows.
fn restore(config: &Path, from: &Path) -> ExitCode {
    let config = match Config::load(config) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    let restored = mctc_service::sqlite_backup::restore(
        &config.store.path,
        from,
        &mctc_collector::store::sqlite::STORE_SCHEMA,
        |_| Ok(()),
        |tx| {
            tx.query_row("SELECT count(*) FROM heads", [], |r| r.get::<_, i64>(0))
                .map_err(|e| mctc_service::sqlite_backup::BackupError::FixUp(e.to_string()))
        },
    );
    match restored {
        Ok(info) => {
            println!(
                "restored: {} from {} ({} device chains)",
                config.store.path.display(),
                from.display(),
                info.fixed
            );
            if let Some(replaced) = info.replaced {
                println!("replaced database kept as {}", replaced.display());
            }
            println!(
                "lineage received after the backup is not in it: devices whose receipts passed it show a gap anomaly"
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail_backup(e),
    }
}

/// Prints a check report: exit 0 if nothing failed, 1 otherwise.
fn report(report: &mctc_service::checkup::Report) -> ExitCode {
    print!("{}", report.render());
    ExitCode::from(report.exit_code())
}

fn fail(error: &Error) -> ExitCode {
    eprintln!("mctc-collector: {error}");
    ExitCode::from(USAGE)
}

fn run(config: &Path) -> ExitCode {
    let config = match Config::load(config) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    mctc_service::logging::init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&Error::Runtime(e)),
    };
    let result = runtime.block_on(async {
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                // Without signal handlers the default action (exit) applies.
                _ => std::future::pending::<()>().await,
            }
        };
        service::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn keygen(out: &Path) -> ExitCode {
    match mctc_service::keys::generate_named(out, KEY_STEM) {
        Ok(public) => {
            println!("public key:  {}", hex::encode(public));
            println!("fingerprint: {}", mctc_service::keys::fingerprint(&public));
            println!(
                "private key: {} (0600; [receipts] key)",
                out.join(format!("{KEY_STEM}.key")).display()
            );
            println!(
                "public key:  {} (give this to devices and auditors)",
                out.join(format!("{KEY_STEM}.pub")).display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&Error::Service(e)),
    }
}

fn export(device: &str, config: &Path, out: &Path) -> ExitCode {
    let config = match Config::load(config) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    let device = match DeviceId::new(device) {
        Ok(device) => device,
        Err(e) => {
            eprintln!("mctc-collector: device id {device:?}: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let ingest = match service::open_ingest(&config, "mctc-collector-export".to_owned()) {
        Ok(ingest) => ingest,
        Err(e) => return fail(&e),
    };
    let export = match ingest.export(&device, mctc_service::clock::wall_ms()) {
        Ok(Some(export)) => export,
        Ok(None) => {
            eprintln!(
                "mctc-collector: {device}: this collector holds no verified checkpoint of the device"
            );
            return ExitCode::from(FAILED);
        }
        Err(e) => return fail(&Error::Store(e)),
    };
    let parts = BundleParts {
        device: device.as_str(),
        from_seq: 0,
        head: export.head,
        registry: &export.registry.signed,
        ak_public: &export.registry.ak_public,
        receipt: Some(&export.receipt),
    };
    let bytes = encode_bundle(&parts, &export.records);
    if let Err(e) = mctc_service::files::write_atomic(out, &bytes, 0o644) {
        return fail(&Error::Service(e));
    }
    println!(
        "{device}: {} records (seq 0..={}) with a receipt signed now -> {}",
        export.records.len(),
        export.records.len().saturating_sub(1),
        out.display()
    );
    ExitCode::SUCCESS
}

fn read_bundle(path: &Path) -> Result<Vec<u8>, Error> {
    let bad = |reason: String| Error::BundleRead {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut bytes = Vec::new();
    // Read one byte past the limit to tell "at the limit" from "over it"
    // without trusting the file's reported size.
    file.take(MAX_BUNDLE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(e.to_string()))?;
    if bytes.len() as u64 > MAX_BUNDLE_LEN {
        return Err(bad(format!("larger than {MAX_BUNDLE_LEN} bytes")));
    }
    Ok(bytes)
}

fn verify(
    bundle: &Path,
    key_files: &[PathBuf],
    collector_files: &[PathBuf],
    json: bool,
) -> ExitCode {
    let mut keys = Vec::with_capacity(key_files.len());
    for path in key_files {
        match mctc_service::keys::read_public_key(path) {
            Ok(key) => keys.push(AuthorityKey::new(&RingCrypto, key)),
            Err(e) => return fail(&Error::Service(e)),
        }
    }
    let mut collectors = Vec::with_capacity(collector_files.len());
    for path in collector_files {
        match mctc_service::keys::read_public_key(path) {
            Ok(key) if keys.iter().any(|k| *k.public() == key) => {
                eprintln!(
                    "mctc-collector: {}: an authority key is not a collector's receipt key",
                    path.display()
                );
                return ExitCode::from(USAGE);
            }
            Ok(key) => collectors.push(CollectorKey::new(&RingCrypto, key)),
            Err(e) => return fail(&Error::Service(e)),
        }
    }
    let bytes = match read_bundle(bundle) {
        Ok(bytes) => bytes,
        Err(e) => return fail(&e),
    };
    let report = verify_bundle(&bytes, &keys, &collectors);
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("mctc-collector: could not write the report: {e}");
                return ExitCode::from(USAGE);
            }
        }
    } else {
        print_report(&report);
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FAILED)
    }
}

fn print_report(report: &Report) {
    for warning in &report.warnings {
        eprintln!("mctc-collector: warning: {warning}");
    }
    let device = report.device.as_deref().unwrap_or("?");
    match &report.failure {
        None => {
            let registry = report.registry.as_ref().map_or_else(String::new, |r| {
                format!(
                    "; registry v{} ({}, class {})",
                    r.version, r.status, r.class
                )
            });
            let completeness = report.receipt.as_ref().map_or_else(
                || "; completeness not checked (no --collector-key)".to_owned(),
                |r| {
                    format!(
                        "; complete through seq {} per the collector's receipt of {}, {} unacknowledged after it",
                        r.seq,
                        utc(r.time_ms),
                        r.unacknowledged
                    )
                },
            );
            println!(
                "OK {device}: {} records (seq {}..={}), {} checkpoints{registry}{completeness}",
                report.records,
                report.from_seq.unwrap_or(0),
                report.last_seq.unwrap_or(0),
                report.checkpoints,
            );
        }
        Some(failure) => {
            let at = failure.seq.map_or_else(
                || "before the first record".to_owned(),
                |s| format!("seq {s}"),
            );
            eprintln!(
                "mctc-collector: FAILED {device} at {at}: {}: {}",
                failure.reason, failure.detail
            );
        }
    }
}

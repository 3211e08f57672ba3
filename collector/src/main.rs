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

use clap::{Parser, Subcommand};
use mctc_collector::config::Config;
use mctc_collector::receipt::KEY_STEM;
use mctc_collector::verify::{Report, utc, verify_bundle};
use mctc_collector::{Error, service};
use mctc_shim::bundle::{BundleParts, MAX_BUNDLE_LEN, encode_bundle};
use mctc_shim::{AuthorityKey, CollectorKey, DeviceId, RingCrypto};

// pub(crate): mctc-packaging includes this file to render the man pages and
// shell completions from this definition.
/// mctc lineage collector.
#[derive(Debug, Parser)]
#[command(name = "mctc-collector", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Collect, verify, store and acknowledge device lineage (the daemon).
    Run {
        /// The configuration file (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Generate the collector's receipt key: DIR/receipt.key (0600) and
    /// DIR/receipt.pub (for devices and auditors). Refuses to overwrite.
    Keygen {
        /// The directory to write into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Export a device's lineage bundle from this collector's store: records
    /// 0 through the newest verified checkpoint, with a receipt for it
    /// signed now. Exit 1 if the store holds no verified checkpoint of the
    /// device.
    Export {
        /// The device id.
        #[arg(value_name = "DEVICE")]
        device: String,
        /// The configuration file (TOML) of the collector whose store to read.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Where to write the bundle.
        #[arg(long, value_name = "BUNDLE")]
        out: PathBuf,
    },
    /// Verify an exported lineage bundle offline (no database, no network).
    /// Exit 0 only if every record chains and every quote verifies, and,
    /// with --collector-key, the bundle reaches its receipt's seq and hash.
    Verify {
        /// The bundle file.
        #[arg(value_name = "BUNDLE")]
        bundle: PathBuf,
        /// The authority's public key (PEM SubjectPublicKeyInfo, authority.pub);
        /// repeat for a key rotation.
        #[arg(long = "authority-key", value_name = "FILE", required = true)]
        authority_keys: Vec<PathBuf>,
        /// A collector's receipt public key (receipt.pub); repeat for several
        /// collectors or a rotation. With it, the bundle must carry a receipt
        /// by one of them and reach the receipt's seq with its hash.
        #[arg(long = "collector-key", value_name = "FILE")]
        collector_keys: Vec<PathBuf>,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

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
    }
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

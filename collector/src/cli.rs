//! The command line (clap): parsed by `mctc-collector` (main.rs) and
//! rendered into man pages and completions by `mctc-packaging`, so both
//! describe exactly what the binary parses.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// mctc lineage collector.
#[derive(Debug, Parser)]
#[command(name = "mctc-collector", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Write a consistent copy of the database while the collector runs
    /// (0600; refuses to overwrite). Exit 1 if FILE exists.
    Backup {
        /// The configuration file (TOML) of the collector whose store to copy.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The backup file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Install a backup as the database (every collector on it stopped).
    /// Exit 1 if the database is in use or the backup is unusable.
    Restore {
        /// The configuration file (TOML) of the collector whose store to replace.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The backup file to install.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
    /// Check the configuration, keys, database and certificates offline
    /// (fast; systemd ExecStartPre=). Exit 0 if nothing failed, else 1.
    CheckConfig {
        /// The configuration file (TOML).
        #[arg(long, value_name = "FILE", default_value = "/etc/mctc/collector.toml")]
        config: PathBuf,
    },
    /// check-config, then the broker (TLS handshake and CONNACK).
    Doctor {
        /// The configuration file (TOML).
        #[arg(long, value_name = "FILE", default_value = "/etc/mctc/collector.toml")]
        config: PathBuf,
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

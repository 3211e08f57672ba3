//! The crate's one error type. Verification outcomes are not errors: a
//! broken chain is an anomaly (ingest) or a failed report (offline verify);
//! these are the faults that stop an operation.

use std::path::PathBuf;

use crate::store::StoreError;

/// What stops the collector or a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file could not be read.
    #[error("{path}: {source}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration does not parse or breaks a rule.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The first problem, on one line.
        reason: String,
    },
    /// A file, key or broker setting at the IO edge failed.
    #[error(transparent)]
    Service(#[from] mctc_service::ServiceError),
    /// The store failed (open, schema, read or write).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A bundle file could not be read (missing, unreadable, too large).
    #[error("{path}: {reason}")]
    BundleRead {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The ingest worker thread died or could not start.
    #[error("ingest worker: {0}")]
    Worker(#[from] WorkerError),
    /// The broker link task ended (it only ends on a bug or a panic; network
    /// errors are retried inside it).
    #[error("the broker link stopped")]
    LinkStopped,
    /// A backup or restore was refused or failed; nothing was changed.
    #[error(transparent)]
    Backup(#[from] mctc_service::sqlite_backup::BackupError),
    /// The async runtime could not start.
    #[error("runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// How the ingest worker thread failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The thread could not be started.
    #[error("cannot start: {0}")]
    Spawn(#[source] std::io::Error),
    /// Its queue closed while the collector was running.
    #[error("stopped unexpectedly")]
    Stopped,
    /// It panicked.
    #[error("panicked")]
    Panicked,
}

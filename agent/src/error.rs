//! The agent's one error type. Every variant says what failed (file, TPM
//! operation, message kind) and maps to an action: a CLI exit code, or for
//! the daemon, whether the gate must close.

use std::path::PathBuf;

use crate::lineage::bundle::ExportError;
use crate::lineage::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration file is missing, unparsable or inconsistent. The
    /// daemon does not start (exit 2).
    #[error("config: {0}")]
    Config(String),
    /// A file or directory of the agent's state could not be used.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A persisted state file exists but does not parse: refusing to guess
    /// (a damaged revocation marker must not reopen a revoked device).
    #[error("state file {path}: {reason}")]
    BadState { path: PathBuf, reason: String },
    /// Another agent holds the state directory.
    #[error("state directory {0} is in use by another mctc-agent")]
    Locked(PathBuf),
    /// The shared IO edge (TLS files, broker URL, key files).
    #[error(transparent)]
    Service(#[from] mctc_service::ServiceError),
    /// The TPM (through the attest worker).
    #[error("TPM: {0}")]
    Tpm(#[from] mctc_attest::Error),
    /// The lineage log.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A message did not encode, decode or verify.
    #[error("{context}: {error}")]
    Wire {
        context: &'static str,
        error: mctc_shim::Error,
    },
    /// The authority answered enrollment with a refusal, or did not answer.
    #[error("enrollment: {0}")]
    Enroll(String),
    /// The daemon's gate socket cannot be reached or answered nonsense.
    #[error("gate socket {path}: {reason}")]
    Socket { path: PathBuf, reason: String },
    /// A lineage bundle could not be made from the local lineage (boxed:
    /// it names devices, and every `Result` of the agent carries this type).
    #[error("bundle: {0}")]
    Bundle(Box<ExportError>),
    /// A thread of the agent could not be started.
    #[error("start {what} thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The daemon could not set itself up (runtime, threads, signals).
    #[error("{0}")]
    Startup(String),
    /// Run as root against a state directory the service user owns: the
    /// files it would create (the TPM-wrapped AK blob, 0600) would be
    /// root's, and the daemon could not read them.
    #[error(
        "state directory {state_dir} belongs to uid {owner}, not root: files created as root would be unreadable to the service; run it as that user (e.g. `sudo -u mctc mctc-agent {command} …`)"
    )]
    WrongUser {
        state_dir: PathBuf,
        owner: u32,
        command: &'static str,
    },
}

impl From<ExportError> for AgentError {
    fn from(error: ExportError) -> Self {
        AgentError::Bundle(Box::new(error))
    }
}

impl AgentError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| AgentError::Io { what, path, source }
    }

    pub fn wire(context: &'static str) -> impl FnOnce(mctc_shim::Error) -> Self {
        move |error| AgentError::Wire { context, error }
    }

    /// The CLI exit code: 2 for configuration, usage and unreachable
    /// (operators must look), 1 for refusals by the other side.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Enroll(_) => 1,
            _ => 2,
        }
    }
}

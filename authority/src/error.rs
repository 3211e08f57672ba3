//! The crate's one error type. Each variant says what failed and carries the
//! path, device or operation it concerns; [`Error::exit_code`] maps it to the
//! CLI contract (1 refused / not found, 2 usage, configuration or
//! environment).

use std::path::PathBuf;

use mctc_shim::DeviceId;

/// Everything that can go wrong in the authority.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration or policy file could not be read.
    #[error("{path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A configuration or policy file does not parse or breaks a rule.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// A command-line argument is invalid.
    #[error("{0}")]
    Usage(String),
    /// The database failed or is unusable.
    #[error("database {path}: {source}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// What failed, classified (busy, corrupt, full, …).
        #[source]
        source: crate::store::StoreError,
    },
    /// The shared IO edge failed (keys, TLS, broker configuration).
    #[error(transparent)]
    Service(#[from] mctc_service::ServiceError),
    /// A device id is unknown.
    #[error("device {0} is not registered")]
    UnknownDevice(String),
    /// The request is well formed but refused in the device's current state.
    #[error("{0}")]
    Refused(String),
    /// The host does not provide what the daemon needs (threads).
    #[error("{0}")]
    Environment(String),
    /// A backup or restore was refused or failed; nothing was changed.
    #[error(transparent)]
    Backup(#[from] mctc_service::sqlite_backup::BackupError),
    /// The host's clocks or boot id cannot be read.
    #[error(transparent)]
    Clock(#[from] crate::now::ClockError),
}

impl Error {
    /// The CLI exit code: 1 for refusals and unknown devices, 2 for
    /// everything else (usage, configuration, environment).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::UnknownDevice(_) | Error::Refused(_) => 1,
            Error::Backup(e) => {
                use mctc_service::sqlite_backup::BackupError as B;
                match e {
                    B::Exists(_) | B::InUse(_) | B::BadBackup { .. } | B::FixUp(_) => 1,
                    B::NoDatabase(_) | B::Io { .. } | B::Sqlite { .. } => 2,
                }
            }
            Error::ReadFile { .. }
            | Error::Config { .. }
            | Error::Usage(_)
            | Error::Store { .. }
            | Error::Service(_)
            | Error::Environment(_)
            | Error::Clock(_) => 2,
        }
    }

    pub(crate) fn config(path: &std::path::Path, reason: impl Into<String>) -> Error {
        Error::Config {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// TOML errors span several lines (a source excerpt); the CLI promises one.
pub(crate) fn one_line(text: &str) -> String {
    let mut parts = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^'));
    let mut out = parts.next().unwrap_or("invalid TOML").to_owned();
    for part in parts {
        if part.chars().next().is_some_and(char::is_numeric) {
            continue; // "12 | key = …" excerpt lines
        }
        out.push_str("; ");
        out.push_str(part);
    }
    out
}

/// A device id given on the command line: a usage error naming the
/// grammar if it is not one.
pub fn device_id(id: &str) -> Result<DeviceId, Error> {
    DeviceId::new(id).map_err(|_| {
        Error::Usage(format!(
            "invalid device id `{id}`: 1-64 characters of [a-z0-9._-], not starting with `.` or `mctc-`"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_cli_contract() {
        assert_eq!(Error::UnknownDevice("d".into()).exit_code(), 1);
        assert_eq!(Error::Refused("no".into()).exit_code(), 1);
        assert_eq!(Error::Usage("bad".into()).exit_code(), 2);
        assert_eq!(
            Error::config(std::path::Path::new("/x"), "bad key").exit_code(),
            2
        );
    }

    #[test]
    fn messages_are_one_line() {
        let e = Error::config(std::path::Path::new("/etc/a.toml"), "unknown key `x`");
        assert_eq!(e.to_string(), "/etc/a.toml: unknown key `x`");
        assert!(!e.to_string().contains('\n'));
    }
}

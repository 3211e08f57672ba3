//! The packaging tool's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} failed ({status}):\n{output}")]
    Failed {
        program: String,
        status: String,
        output: String,
    },
    #[error("no version in the first line of {}", .0.display())]
    Changelog(PathBuf),
    #[error(
        "packaging/debian/changelog is at {changelog}, the workspace at {cargo}: add a changelog entry"
    )]
    Version { changelog: String, cargo: String },
    #[error("no package {0} (known: mctc-agent, mctc-authority, mctc-collector)")]
    UnknownPackage(String),
}

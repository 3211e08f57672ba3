//! What can stop the check before it judges (a cycle is a finding, not
//! an error).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CyclesError {
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: does not parse: {message}", file.display())]
    Parse {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cargo metadata: {0}")]
    Metadata(String),
    #[error("{file}:{line}: `{text}` is not `package (target): module module …`")]
    AllowList {
        file: &'static str,
        line: usize,
        text: String,
    },
}

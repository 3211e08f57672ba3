use std::path::PathBuf;

/// What went wrong while setting up a real component for a test.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A needed program is not installed.
    #[error(
        "`{program}` is not installed: run `sudo apt-get install {packages}` (or `cargo xtask test`, which installs it)"
    )]
    Missing { program: String, packages: String },
    /// One of the project's binaries has not been built.
    #[error(
        "{} is not built: run `cargo build --workspace --bins` first (`cargo xtask test` does)",
        path.display()
    )]
    NotBuilt { path: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not become ready within {secs} s; log:\n{log}")]
    NotReady {
        what: String,
        secs: u64,
        log: String,
    },
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
}

impl HarnessError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
        let what = what.into();
        move |source| HarnessError::Io { what, source }
    }
}

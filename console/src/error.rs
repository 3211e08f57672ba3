//! The console's errors: [`ConsoleError`] for starting up (one line on
//! stderr, non-zero exit) and [`PageError`] for one request (a status code
//! and one clear line, never a panic).

use axum::http::StatusCode;

/// Why the console cannot start or a check failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The configuration file is missing, unreadable or invalid.
    #[error("config {path}: {reason}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A TLS file (certificate, key, operator CA) is unusable.
    #[error("tls: {0}")]
    Tls(String),
    /// The shared service edge failed (broker TLS files, URL).
    #[error(transparent)]
    Service(#[from] mctc_service::ServiceError),
    /// The listener could not be bound or failed.
    #[error("listen {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A store could not be opened (check-config).
    #[error("{store} database: {reason}")]
    Store {
        /// `authority` or `collector`.
        store: &'static str,
        /// Why.
        reason: String,
    },
}

/// Why one request got no page. Each maps to one status code and one line
/// of text (HTML pages show it, JSON answers carry it as `error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// The query or path is malformed (bad cursor, unknown filter value).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No such device or page.
    #[error("not found: {0}")]
    NotFound(String),
    /// An operator page without an operator certificate.
    #[error(
        "forbidden: this page needs an operator client certificate issued by the console's operator CA"
    )]
    Forbidden,
    /// The query string is longer than the console accepts.
    #[error("query string too long (at most {0} bytes)")]
    UriTooLong(usize),
    /// A database is busy, locked, missing or not yet migrated: retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A database holds what its writer never writes (corrupt rows).
    #[error("internal error: {0}")]
    Internal(String),
}

impl PageError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            PageError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PageError::NotFound(_) => StatusCode::NOT_FOUND,
            PageError::Forbidden => StatusCode::FORBIDDEN,
            PageError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            PageError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            PageError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

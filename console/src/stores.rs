//! The two databases, read-only, through the authority's and the
//! collector's own store types: the console reads exactly what
//! `mctc-authority devices list` and `mctc-collector export` read.
//!
//! Each store is one connection behind a mutex, opened on first use and
//! dropped after any failure (so a database that was missing, busy or
//! replaced is opened afresh by the next request). Reads run on tokio's
//! blocking pool. A busy database, or one that is missing or not yet
//! migrated, is [`PageError::Unavailable`] (503); corrupt rows are
//! [`PageError::Internal`] (500).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use mctc_authority::store::StoreError as AuthorityError;
use mctc_authority::store::sqlite::SqliteStore as AuthorityStore;
use mctc_collector::store::StoreError as CollectorError;
use mctc_collector::store::sqlite::SqliteStore as CollectorStore;

use crate::config::StoresConfig;
use crate::error::PageError;

/// Both stores.
#[derive(Debug)]
pub struct Stores {
    authority_path: PathBuf,
    collector_path: PathBuf,
    authority: Mutex<Option<AuthorityStore>>,
    collector: Mutex<Option<CollectorStore>>,
}

impl Stores {
    /// Stores at the configured paths (nothing is opened yet).
    pub fn new(config: &StoresConfig) -> Arc<Stores> {
        Arc::new(Stores {
            authority_path: config.authority.clone(),
            collector_path: config.collector.clone(),
            authority: Mutex::new(None),
            collector: Mutex::new(None),
        })
    }

    /// Runs `read` on the authority's store (on the blocking pool).
    pub async fn authority<T: Send + 'static>(
        self: &Arc<Self>,
        read: impl FnOnce(&mut AuthorityStore) -> Result<T, AuthorityError> + Send + 'static,
    ) -> Result<T, PageError> {
        let this = Arc::clone(self);
        blocking(move || {
            // A panic while holding the lock cannot leave a half-read
            // connection worse than a fresh one: the guard's value is only
            // an open connection.
            let mut slot = this
                .authority
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() {
                *slot = Some(
                    AuthorityStore::open_read_only(&this.authority_path)
                        .map_err(|e| authority_error(&e))?,
                );
            }
            let Some(store) = slot.as_mut() else {
                return Err(PageError::Internal("authority store slot empty".into()));
            };
            read(store).map_err(|e| {
                *slot = None;
                authority_error(&e)
            })
        })
        .await
    }

    /// Runs `read` on the collector's store (on the blocking pool).
    pub async fn collector<T: Send + 'static>(
        self: &Arc<Self>,
        read: impl FnOnce(&mut CollectorStore) -> Result<T, CollectorError> + Send + 'static,
    ) -> Result<T, PageError> {
        let this = Arc::clone(self);
        blocking(move || {
            let mut slot = this
                .collector
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() {
                *slot = Some(
                    CollectorStore::open_read_only(&this.collector_path)
                        .map_err(|e| collector_error(&e))?,
                );
            }
            let Some(store) = slot.as_mut() else {
                return Err(PageError::Internal("collector store slot empty".into()));
            };
            read(store).map_err(|e| {
                *slot = None;
                collector_error(&e)
            })
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PageError> + Send + 'static,
) -> Result<T, PageError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(PageError::Internal(format!("store reader failed: {e}"))))
}

/// Corrupt rows are ours (500); everything else — busy, locked, missing,
/// unreadable, an older or newer schema — is the database not being
/// available to read now (503), said in one line.
fn authority_error(e: &AuthorityError) -> PageError {
    tracing::warn!(store = "authority", kind = e.kind(), error = %e, "read failed");
    match e {
        AuthorityError::Corrupt(_) => PageError::Internal(format!("authority database: {e}")),
        _ => PageError::Unavailable(format!("authority database: {e}")),
    }
}

fn collector_error(e: &CollectorError) -> PageError {
    tracing::warn!(store = "collector", kind = e.kind(), error = %e, "read failed");
    match e {
        CollectorError::Corrupt(_) => PageError::Internal(format!("collector database: {e}")),
        _ => PageError::Unavailable(format!("collector database: {e}")),
    }
}

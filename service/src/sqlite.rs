//! SQLite as every mctc store uses it (feature `sqlite`): one way to open
//! a store file, and what a failure means for the caller.
//!
//! [`open`] creates the file 0600 with `O_EXCL`, sets a busy timeout,
//! requires WAL (and checks that it took effect), `synchronous = FULL` and
//! foreign keys, and brings the schema up to date through numbered
//! migrations (`PRAGMA user_version`) in one `BEGIN IMMEDIATE`
//! transaction. The authority and the collector open their databases here;
//! a PostgreSQL backend will be the second implementation of their store
//! traits, not of this module.
//!
//! A store error has one of two owners. A database busy or locked by
//! another writer past the busy timeout is transient: the same operation
//! may succeed later, and nobody is at fault. Everything else (a corrupt
//! file, a full disk, an IO error, a read-only file, a violated constraint)
//! is the operator's or this code's problem: it is logged loudly and never
//! reported to a device as something the device did wrong.

use std::fmt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, TransactionBehavior};

/// How long a writer waits for another connection's transaction.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A store's schema: `migrations[i]` takes version `i` to `i + 1`, so the
/// version a binary writes is `migrations.len()`.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// The migrations, oldest first. Never edit a released one: add another.
    pub migrations: &'static [&'static str],
}

impl Schema {
    /// The version this binary writes.
    pub fn version(&self) -> i64 {
        i64::try_from(self.migrations.len()).unwrap_or(i64::MAX)
    }
}

/// Why a store file could not be opened as required.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file could not be created.
    #[error("{path}: cannot create the file: {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// WAL did not take effect.
    #[error("journal_mode stays {mode}; WAL is required (is the file on a network filesystem?)")]
    NotWal {
        /// The mode SQLite reported.
        mode: String,
    },
    /// The database was written by a newer binary.
    #[error("schema version {found} is newer than this binary supports ({supported})")]
    TooNew {
        /// Found in the file.
        found: i64,
        /// What this binary writes.
        supported: i64,
    },
    /// A read-only reader found an older schema than it reads (the
    /// daemon that owns the file migrates it when it next starts).
    #[error(
        "schema version {found} is older than this reader's {expected}; start the owning daemon once to migrate it"
    )]
    NotCurrent {
        /// Found in the file.
        found: i64,
        /// What this binary reads.
        expected: i64,
    },
    /// SQLite failed.
    #[error("{fault}: {source}")]
    Sqlite {
        /// What kind of failure.
        fault: Fault,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
}

impl From<rusqlite::Error> for OpenError {
    fn from(source: rusqlite::Error) -> Self {
        OpenError::Sqlite {
            fault: Fault::of(&source),
            source,
        }
    }
}

impl OpenError {
    /// The failure's kind, if SQLite reported it.
    pub fn fault(&self) -> Option<Fault> {
        match self {
            OpenError::Sqlite { fault, .. } => Some(*fault),
            OpenError::Create { .. } => Some(Fault::Io),
            OpenError::NotWal { .. } | OpenError::TooNew { .. } | OpenError::NotCurrent { .. } => {
                None
            }
        }
    }
}

/// Opens the store at `path`: created 0600 if new, WAL, `synchronous =
/// FULL`, foreign keys on, migrated to `schema`.
pub fn open(path: &Path, schema: &Schema) -> Result<Connection, OpenError> {
    // SQLite would create the file with the umask's mode; a store holds
    // pending proofs, nonces and lineage, so it is made private first. Only
    // a *new* file is opened here (O_EXCL): closing any descriptor of a
    // database file drops every POSIX lock this process holds on it,
    // including those of another open connection, after which another
    // process may checkpoint and delete the WAL under that connection (its
    // later commits would be lost).
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(OpenError::Create {
                path: path.to_owned(),
                source,
            });
        }
    }
    configure(Connection::open(path)?, schema)
}

/// Sets up an open connection as [`open`] does: busy timeout, WAL
/// (required), durability, foreign keys, migrations.
pub fn configure(mut conn: Connection, schema: &Schema) -> Result<Connection, OpenError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::NotWal { mode });
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate(&mut conn, schema)?;
    Ok(conn)
}

/// A private in-memory database with `schema` (unit tests of a store: no
/// file, so no WAL).
pub fn open_in_memory(schema: &Schema) -> Result<Connection, OpenError> {
    let mut conn = Connection::open_in_memory()?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate(&mut conn, schema)?;
    Ok(conn)
}

/// Runs the migrations `conn` has not had, in one `BEGIN IMMEDIATE`
/// transaction (two processes opening one new file migrate it once); a
/// database newer than `schema` is refused.
pub fn migrate(conn: &mut Connection, schema: &Schema) -> Result<(), OpenError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > schema.version() {
        return Err(OpenError::TooNew {
            found,
            supported: schema.version(),
        });
    }
    let done = usize::try_from(found).unwrap_or(0);
    for (version, sql) in schema.migrations.iter().enumerate().skip(done) {
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(version + 1).unwrap_or(i64::MAX),
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// How long a read-only reader waits for a writer's lock before the read
/// fails as busy: a page that cannot be read says so at once (HTTP 503)
/// rather than holding a request for [`BUSY_TIMEOUT`].
pub const READ_BUSY_TIMEOUT: Duration = Duration::from_millis(250);

/// Opens an existing store at `path` for reading only (the console): no
/// file is created, nothing is migrated or written, and a database whose
/// schema is not exactly `schema`'s is refused (newer: [`OpenError::TooNew`];
/// older: the owning daemon has not migrated it yet, reported as
/// [`OpenError::NotCurrent`]).
pub fn open_read_only(path: &Path, schema: &Schema) -> Result<Connection, OpenError> {
    use rusqlite::OpenFlags;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(READ_BUSY_TIMEOUT)?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > schema.version() {
        return Err(OpenError::TooNew {
            found,
            supported: schema.version(),
        });
    }
    if found < schema.version() {
        return Err(OpenError::NotCurrent {
            found,
            expected: schema.version(),
        });
    }
    Ok(conn)
}

/// What kind of failure a database error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Another connection holds the lock (`SQLITE_BUSY`, `SQLITE_LOCKED`):
    /// retry later.
    Busy,
    /// The file is not a database or is malformed (`SQLITE_CORRUPT`,
    /// `SQLITE_NOTADB`).
    Corrupt,
    /// The disk or the database is full (`SQLITE_FULL`), or out of memory.
    Full,
    /// The operating system failed a read, write, open or lock.
    Io,
    /// The file or its directory cannot be written.
    ReadOnly,
    /// A constraint or type check failed: a bug in the code that wrote it.
    Constraint,
    /// Anything else the engine reports (SQL errors, misuse): a bug.
    Other,
}

impl Fault {
    /// The kind of `error`.
    pub fn of(error: &rusqlite::Error) -> Fault {
        match error.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Fault::Busy,
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => Fault::Corrupt,
            Some(ErrorCode::DiskFull | ErrorCode::OutOfMemory | ErrorCode::TooBig) => Fault::Full,
            Some(
                ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::NoLargeFileSupport,
            ) => Fault::Io,
            Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => Fault::ReadOnly,
            Some(ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch) => Fault::Constraint,
            _ => Fault::Other,
        }
    }

    /// Whether trying the same operation again later may succeed.
    pub const fn is_transient(self) -> bool {
        matches!(self, Fault::Busy)
    }

    /// A stable name (logs, metrics).
    pub const fn name(self) -> &'static str {
        match self {
            Fault::Busy => "busy",
            Fault::Corrupt => "corrupt",
            Fault::Full => "full",
            Fault::Io => "io",
            Fault::ReadOnly => "read_only",
            Fault::Constraint => "constraint",
            Fault::Other => "other",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Busy => "database busy",
            Fault::Corrupt => "database corrupt",
            Fault::Full => "database or disk full",
            Fault::Io => "database IO error",
            Fault::ReadOnly => "database read-only",
            Fault::Constraint => "database constraint violated",
            Fault::Other => "database error",
        })
    }
}

/// `check-config`: the store at `path` opens (read-only: nothing is
/// created or migrated by a check), is private, and is at `schema`'s
/// version or one this binary migrates on start.
pub fn check_database(report: &mut crate::checkup::Report, path: &Path, schema: &Schema) {
    let expected = i64::try_from(schema.migrations.len()).unwrap_or(i64::MAX);
    let shown = path.display();
    if !path.exists() {
        report.warn(
            format!("database {shown} does not exist yet"),
            "it is created (0600) on the first start; check that its directory is writable by the service user",
        );
        return;
    }
    crate::checkup::secret_file(report, "database", path);
    let version = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|conn| {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        });
    match version {
        Ok(found) if found == expected => {
            report.ok(format!("database {shown} opens at schema version {found}"));
        }
        Ok(found) if found < expected => report.warn(
            format!("database {shown} is at schema version {found}, this binary's is {expected}"),
            "it is migrated on the next start (take a backup first)",
        ),
        Ok(found) => report.fail(
            format!(
                "database {shown} is at schema version {found}, newer than this binary's {expected}"
            ),
            "run the newer binary, or restore a backup made for this version",
        ),
        Err(e) => report.fail(
            format!("database {shown} does not open: {e}"),
            "check the file (is it an SQLite database? readable by the service user?)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn busy_and_locked_are_transient_and_the_rest_is_not() {
        assert_eq!(Fault::of(&failure(rusqlite::ffi::SQLITE_BUSY)), Fault::Busy);
        assert_eq!(
            Fault::of(&failure(rusqlite::ffi::SQLITE_LOCKED)),
            Fault::Busy
        );
        assert!(Fault::Busy.is_transient());
        for (code, fault) in [
            (rusqlite::ffi::SQLITE_CORRUPT, Fault::Corrupt),
            (rusqlite::ffi::SQLITE_NOTADB, Fault::Corrupt),
            (rusqlite::ffi::SQLITE_FULL, Fault::Full),
            (rusqlite::ffi::SQLITE_IOERR, Fault::Io),
            (rusqlite::ffi::SQLITE_READONLY, Fault::ReadOnly),
            (rusqlite::ffi::SQLITE_CONSTRAINT, Fault::Constraint),
        ] {
            assert_eq!(Fault::of(&failure(code)), fault);
            assert!(!fault.is_transient(), "{fault}");
        }
        // Extended codes keep their primary class.
        assert_eq!(
            Fault::of(&failure(rusqlite::ffi::SQLITE_BUSY_SNAPSHOT)),
            Fault::Busy
        );
        assert_eq!(
            Fault::of(&rusqlite::Error::QueryReturnedNoRows),
            Fault::Other
        );
    }

    const SCHEMA: Schema = Schema {
        migrations: &[
            "CREATE TABLE a (x INTEGER) STRICT;",
            "CREATE TABLE b (y INTEGER) STRICT;",
        ],
    };

    fn version(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_store_is_private_wal_durable_and_migrated() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let conn = open(&path, &SCHEMA).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let journal: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL");
        assert_eq!(version(&conn), 2);
        drop(conn);
        // Reopening changes nothing.
        assert_eq!(version(&open(&path, &SCHEMA).unwrap()), 2);
    }

    #[test]
    fn an_old_schema_is_migrated_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let old = Schema {
            migrations: &SCHEMA.migrations[..1],
        };
        drop(open(&path, &old).unwrap());
        let conn = open(&path, &SCHEMA).unwrap();
        assert_eq!(version(&conn), 2);
        conn.execute("INSERT INTO b (y) VALUES (1)", []).unwrap();
        drop(conn);
        let err = open(&path, &old).unwrap_err();
        assert!(
            matches!(
                err,
                OpenError::TooNew {
                    found: 2,
                    supported: 1
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_cannot_be_put_in_wal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Without locking SQLite cannot share the WAL index, so the mode
        // stays a rollback journal: what a network filesystem does.
        let uri = format!("file:{}?nolock=1", dir.path().join("s.db").display());
        let conn = Connection::open(uri).unwrap();
        let err = configure(conn, &SCHEMA).unwrap_err();
        assert!(
            matches!(err, OpenError::NotWal { ref mode } if mode == "delete"),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_cannot_be_created_is_an_io_fault() {
        let err = open(Path::new("/nonexistent-dir/s.db"), &SCHEMA).unwrap_err();
        assert!(matches!(err, OpenError::Create { .. }), "{err}");
        assert_eq!(err.fault(), Some(Fault::Io));
    }

    #[test]
    fn a_real_corrupt_file_is_classified_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.db");
        std::fs::write(&path, vec![0x55u8; 8192]).unwrap();
        let conn = Connection::open(&path).unwrap();
        let err = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap_err();
        assert_eq!(Fault::of(&err), Fault::Corrupt, "{err}");
    }
}

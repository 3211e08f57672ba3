//! SQLite as every mctc store uses it (feature `sqlite`): what a failure
//! means for the caller.
//!
//! A store error has one of two owners. A database busy or locked by
//! another writer past the busy timeout is transient: the same operation
//! may succeed later, and nobody is at fault. Everything else (a corrupt
//! file, a full disk, an IO error, a read-only file, a violated constraint)
//! is the operator's or this code's problem: it is logged loudly and never
//! reported to a device as something the device did wrong.

use std::fmt;

use rusqlite::ErrorCode;

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

    #[test]
    fn a_real_corrupt_file_is_classified_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.db");
        std::fs::write(&path, vec![0x55u8; 8192]).unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        let err = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap_err();
        assert_eq!(Fault::of(&err), Fault::Corrupt, "{err}");
    }
}

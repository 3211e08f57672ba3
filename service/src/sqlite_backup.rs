//! Backup and restore of an mctc store file (feature `sqlite`), shared by
//! the authority and the collector; what a restore must change in the copy
//! (sequence numbers devices have seen) is the caller's, passed in as a
//! closure.
//!
//! [`backup`] is an online, consistent copy: `VACUUM INTO` reads one
//! snapshot (a read transaction: writers in WAL mode carry on) into a new
//! private file next to the destination, which is fsynced and then linked
//! to its name, so the destination appears complete or not at all and is
//! never overwritten.
//!
//! [`restore`] replaces a store that nobody uses: it refuses while another
//! connection has the database open (switching it out of WAL needs every
//! other connection gone, which SQLite checks for us), stages the copy
//! beside it (0600), migrates and checks it, lets the caller fix it up in
//! one transaction, keeps the replaced file as `<db>.replaced-<unix ms>`
//! and renames the staged copy into place.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::sqlite::{Fault, OpenError, Schema};

/// Why a backup or a restore did not happen. Nothing was changed in the
/// store in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The destination exists: a backup is never overwritten.
    #[error("{0}: exists; refusing to overwrite a backup")]
    Exists(PathBuf),
    /// The database to back up does not exist.
    #[error("{0}: no such database")]
    NoDatabase(PathBuf),
    /// Another process has the database open (a daemon is running).
    #[error("{0}: the database is in use (is the daemon still running? stop it first)")]
    InUse(PathBuf),
    /// The copy to restore is not a sound store of this kind.
    #[error("{path}: not a usable backup: {reason}")]
    BadBackup {
        /// The backup file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("{path}: {fault}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What kind of failure.
        fault: Fault,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The caller's fix-up of the staged copy failed.
    #[error("{0}")]
    FixUp(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.to_owned();
    move |source| BackupError::Io { what, path, source }
}

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> BackupError {
    let path = path.to_owned();
    move |source| BackupError::Sqlite {
        path: path.clone(),
        fault: Fault::of(&source),
        source,
    }
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    path.with_file_name(name)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn fsync_dir_of(path: &Path) -> Result<(), BackupError> {
    let dir = parent_dir(path);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", &dir))
}

/// Gives `path` the owner and group of `like`, when they differ.
fn match_owner(path: &Path, like: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::MetadataExt;
    let want = std::fs::metadata(like).map_err(io("stat", like))?;
    let have = std::fs::metadata(path).map_err(io("stat", path))?;
    if (want.uid(), want.gid()) == (have.uid(), have.gid()) {
        return Ok(());
    }
    std::os::unix::fs::chown(path, Some(want.uid()), Some(want.gid()))
        .map_err(io("give the owner of the replaced store to", path))
}

/// Creates `path` empty, 0600, failing if it exists.
fn create_private(path: &Path) -> Result<File, BackupError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                BackupError::Exists(path.to_owned())
            } else {
                BackupError::Io {
                    what: "create",
                    path: path.to_owned(),
                    source: e,
                }
            }
        })
}

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// The file written.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
}

/// Writes a consistent copy of the store at `db` to `out` (0600, fsynced,
/// appearing atomically; refused if `out` exists), while daemons keep using
/// `db`.
pub fn backup(db: &Path, out: &Path) -> Result<BackupInfo, BackupError> {
    if out.symlink_metadata().is_ok() {
        return Err(BackupError::Exists(out.to_owned()));
    }
    if !db.exists() {
        return Err(BackupError::NoDatabase(db.to_owned()));
    }
    // Opened without CREATE: a mistyped path must not make an empty store.
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql(db))?;
    conn.busy_timeout(crate::sqlite::BUSY_TIMEOUT)
        .map_err(sql(db))?;
    let staged = sibling(out, &format!(".partial-{}", std::process::id()));
    // VACUUM INTO accepts an existing empty file: made private first, so
    // the copy of nonces, proofs and lineage is never readable by others.
    drop(create_private(&staged)?);
    let written = (|| {
        let target = staged.to_str().ok_or_else(|| BackupError::Io {
            what: "use as a file name",
            path: staged.clone(),
            source: std::io::Error::other("not UTF-8"),
        })?;
        conn.execute("VACUUM INTO ?1", [target]).map_err(sql(db))?;
        let file = OpenOptions::new()
            .write(true)
            .open(&staged)
            .map_err(io("open", &staged))?;
        file.sync_all().map_err(io("fsync", &staged))?;
        // link(2) fails if `out` appeared meanwhile: never an overwrite.
        std::fs::hard_link(&staged, out).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                BackupError::Exists(out.to_owned())
            } else {
                BackupError::Io {
                    what: "link",
                    path: out.to_owned(),
                    source: e,
                }
            }
        })?;
        let bytes = file.metadata().map_err(io("stat", &staged))?.len();
        Ok(bytes)
    })();
    let _ = std::fs::remove_file(&staged);
    let bytes = written?;
    fsync_dir_of(out)?;
    Ok(BackupInfo {
        path: out.to_owned(),
        bytes,
    })
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreInfo<T> {
    /// Where the store that was replaced is kept (`None`: there was none).
    pub replaced: Option<PathBuf>,
    /// What the caller's fix-up returned.
    pub fixed: T,
}

/// Refuses unless nobody else has `db` open; leaves it in rollback-journal
/// mode with its WAL checkpointed into the main file (so the file alone is
/// the whole database while it is replaced).
fn take_out_of_use(db: &Path) -> Result<(), BackupError> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql(db))?;
    // No busy wait: a live daemon is an answer, not a delay.
    conn.busy_timeout(std::time::Duration::ZERO)
        .map_err(sql(db))?;
    let mode: Result<String, _> =
        conn.pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0));
    match mode {
        Ok(mode) if mode.eq_ignore_ascii_case("delete") => Ok(()),
        Ok(_) => Err(BackupError::InUse(db.to_owned())),
        Err(e) if Fault::of(&e) == Fault::Busy => Err(BackupError::InUse(db.to_owned())),
        Err(e) => Err(sql(db)(e)),
    }
}

/// Replaces the store at `db` with the backup `from`: refused while `db`
/// is open elsewhere; `check_live` may refuse after looking at the live
/// store (a lease still held); the copy is migrated to `schema`, must pass
/// SQLite's integrity check, and `fix_up` changes it in one transaction
/// before it takes the store's place.
pub fn restore<T>(
    db: &Path,
    from: &Path,
    schema: &Schema,
    check_live: impl FnOnce(&Connection) -> Result<(), BackupError>,
    fix_up: impl FnOnce(&Transaction<'_>) -> Result<T, BackupError>,
) -> Result<RestoreInfo<T>, BackupError> {
    if !from.is_file() {
        return Err(BackupError::BadBackup {
            path: from.to_owned(),
            reason: "no such file".into(),
        });
    }
    let live = db.exists();
    if live {
        let conn = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql(db))?;
        check_live(&conn)?;
        drop(conn);
        take_out_of_use(db)?;
    }
    let staged = sibling(db, ".restoring");
    // A staged file left by an interrupted restore is never the store.
    let _ = std::fs::remove_file(&staged);
    for suffix in ["-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(sibling(&staged, suffix));
    }
    let mut file = create_private(&staged)?;
    let fixed = (|| {
        let bytes = std::fs::read(from).map_err(io("read", from))?;
        file.write_all(&bytes).map_err(io("write", &staged))?;
        file.sync_all().map_err(io("fsync", &staged))?;
        let bad = |reason: String| BackupError::BadBackup {
            path: from.to_owned(),
            reason,
        };
        let mut conn = crate::sqlite::open(&staged, schema).map_err(|e| match e {
            OpenError::TooNew { .. } => bad(e.to_string()),
            OpenError::Sqlite {
                fault: Fault::Corrupt,
                ..
            } => bad(e.to_string()),
            e => BackupError::FixUp(format!("{}: {e}", staged.display())),
        })?;
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| bad(e.to_string()))?;
        if check != "ok" {
            return Err(bad(format!("integrity check: {check}")));
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql(&staged))?;
        let fixed = fix_up(&tx)?;
        tx.commit().map_err(sql(&staged))?;
        // Back to a single file: the WAL is checkpointed and removed.
        let _: String = conn
            .pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))
            .map_err(sql(&staged))?;
        conn.close().map_err(|(_, e)| sql(&staged)(e))?;
        File::open(&staged)
            .and_then(|f| f.sync_all())
            .map_err(io("fsync", &staged))?;
        Ok(fixed)
    })();
    let fixed = match fixed {
        Ok(fixed) => fixed,
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
    };
    // The daemon runs as its own user; a restore run as root must not
    // leave it a store it cannot open: the copy gets the owner of the file
    // it replaces (or, for a first install, of the directory).
    let owner_of = if live { db.to_owned() } else { parent_dir(db) };
    if let Err(e) = match_owner(&staged, &owner_of) {
        let _ = std::fs::remove_file(&staged);
        return Err(e);
    }
    let replaced = if live {
        let keep = sibling(db, &format!(".replaced-{}", crate::clock::wall_ms()));
        std::fs::hard_link(db, &keep).map_err(io("keep the replaced store as", &keep))?;
        Some(keep)
    } else {
        None
    };
    for suffix in ["-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(sibling(db, suffix));
    }
    std::fs::rename(&staged, db).map_err(io("rename into place", db))?;
    fsync_dir_of(db)?;
    Ok(RestoreInfo { replaced, fixed })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const SCHEMA: Schema = Schema {
        migrations: &["CREATE TABLE t (n INTEGER NOT NULL) STRICT;"],
    };

    fn store(dir: &Path) -> (PathBuf, Connection) {
        let db = dir.join("s.db");
        let conn = crate::sqlite::open(&db, &SCHEMA).unwrap();
        conn.execute("INSERT INTO t (n) VALUES (1), (2)", [])
            .unwrap();
        (db, conn)
    }

    #[test]
    fn a_backup_is_a_private_copy_taken_while_the_store_is_open_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let (db, live) = store(dir.path());
        let out = dir.path().join("b.db");
        let info = backup(&db, &out).unwrap();
        assert!(info.bytes > 0);
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let copy = Connection::open(&out).unwrap();
        let n: i64 = copy
            .query_row("SELECT sum(n) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
        live.execute("INSERT INTO t (n) VALUES (4)", []).unwrap();
        assert!(matches!(backup(&db, &out), Err(BackupError::Exists(_))));
        let n: i64 = copy
            .query_row("SELECT sum(n) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3, "the refused backup left the old one alone");
        assert!(matches!(
            backup(&dir.path().join("missing.db"), &dir.path().join("c.db")),
            Err(BackupError::NoDatabase(_))
        ));
        assert!(!dir.path().join("missing.db").exists());
    }

    #[test]
    fn a_restore_is_refused_while_the_store_is_open_and_fixes_up_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (db, live) = store(dir.path());
        let out = dir.path().join("b.db");
        backup(&db, &out).unwrap();
        live.execute("INSERT INTO t (n) VALUES (4)", []).unwrap();
        let fix = |tx: &Transaction<'_>| {
            tx.execute("INSERT INTO t (n) VALUES (100)", [])
                .map_err(|e| BackupError::FixUp(e.to_string()))
        };
        let err = restore(&db, &out, &SCHEMA, |_| Ok(()), fix).unwrap_err();
        assert!(matches!(err, BackupError::InUse(_)), "{err}");
        drop(live);
        let refused = restore(
            &db,
            &out,
            &SCHEMA,
            |_| Err(BackupError::FixUp("lease held".into())),
            fix,
        );
        assert!(refused.is_err());
        let info = restore(&db, &out, &SCHEMA, |_| Ok(()), fix).unwrap();
        let kept = info.replaced.unwrap();
        let old = Connection::open(&kept).unwrap();
        let n: i64 = old
            .query_row("SELECT sum(n) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 7, "the replaced store is kept whole");
        let conn = crate::sqlite::open(&db, &SCHEMA).unwrap();
        let n: i64 = conn
            .query_row("SELECT sum(n) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 103, "the backup's rows plus the fix-up");
        assert_eq!(
            std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(dir.path().join("junk"), b"not a database").unwrap();
        drop(conn);
        let err = restore(&db, &dir.path().join("junk"), &SCHEMA, |_| Ok(()), fix).unwrap_err();
        assert!(matches!(err, BackupError::BadBackup { .. }), "{err}");
    }

    /// A restore run as root (as operators do) leaves the daemon's user
    /// owning its store. Only root can give a file away; as anyone else the
    /// owner never differs and there is nothing to check.
    #[test]
    fn a_restore_keeps_the_owner_of_the_store_it_replaces() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::geteuid().is_root() {
            eprintln!("not root: a file cannot be given away; nothing to check");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (db, live) = store(dir.path());
        drop(live);
        let out = dir.path().join("b.db");
        backup(&db, &out).unwrap();
        std::os::unix::fs::chown(&db, Some(4321), Some(4322)).unwrap();
        restore(&db, &out, &SCHEMA, |_| Ok(()), |_| Ok(())).unwrap();
        let meta = std::fs::metadata(&db).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (4321, 4322));
    }
}

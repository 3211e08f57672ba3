//! Files that must survive a crash and files that hold secrets.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::ServiceError;

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServiceError + '_ {
    move |source| ServiceError::File {
        path: path.display().to_string(),
        source,
    }
}

/// Replaces `path` with `bytes` so that after a crash the file holds either
/// the old or the new content, never a mix: write a temporary file with
/// `mode`, fsync it, rename it over `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ServiceError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(file_err(&tmp))?;
    f.write_all(bytes).map_err(file_err(&tmp))?;
    f.sync_all().map_err(file_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(file_err(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(file_err(dir))?;
    Ok(())
}

/// [`write_atomic`] with mode 0600, for anything secret.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), ServiceError> {
    write_atomic(path, bytes, 0o600)
}

/// Refuses a secret file that others can read, or that group or others can
/// write. Group read is allowed so that `root:mctc 0640` provisioning works.
pub fn check_secret_mode(path: &Path) -> Result<(), ServiceError> {
    let mode = std::fs::metadata(path)
        .map_err(file_err(path))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o026 != 0 {
        return Err(ServiceError::InsecureSecret {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// Reads a secret file after checking its mode.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, ServiceError> {
    check_secret_mode(path)?;
    std::fs::read(path).map_err(file_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_written_0600_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_secret(&path, b"one").unwrap();
        write_secret(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_secret(&path).unwrap(), b"two");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret(&path).unwrap_err();
        assert!(
            matches!(err, ServiceError::InsecureSecret { mode: 0o644, .. }),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        read_secret(&path).unwrap();
    }
}

//! What the agent keeps in its state directory between runs, one small file
//! per fact, each written atomically (0600):
//!
//! | file | holds | if damaged |
//! |---|---|---|
//! | `lock` | an exclusive `flock` while an agent runs | — |
//! | `revoked` | present = revoked (JSON detail) | still revoked: presence decides |
//! | `control-seq` | last accepted control seq (decimal) | refuse to start (a lost seq would let an old `restore` be replayed) |
//! | `lineage-receipt` | the latest verified collector receipt (COSE_Sign1) | resend from the oldest record on disk (idempotent); nothing more is pruned until a new receipt |
//! | `enrollment.json` | AK name, EK/AK fingerprints of the last enrollment | `enroll` again |
//! | `registry.cose` | the authority's signed registry record for this device | export without it fails; `enroll` again |
//! | `measured.json` | digests extended for measured files, per TPM boot | extend again (shows as drift) |
//! | `lineage/` | the lineage segment files | see `lineage::store` |
//! | `tpm/` | the AK blob (mctc-attest) | `enroll --reprovision` |
//!
//! Open is never persisted: the gate starts Closed on every start.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::AgentError;

/// Refuses to run as root against a state directory another user owns
/// (DESIGN: `mctc-agent identity` as root once left a root-owned 0600 AK
/// blob the `mctc` service could not read). A missing directory is fine:
/// whoever creates it owns it. Dropping privileges instead would need
/// setuid in a multi-threaded process (the TPM worker, tokio), which
/// cannot be done safely without `unsafe`; a clear refusal can.
pub fn refuse_root_on_foreign_state(dir: &Path, command: &'static str) -> Result<(), AgentError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    if rustix::process::geteuid().is_root() && meta.uid() != 0 {
        return Err(AgentError::WrongUser {
            state_dir: dir.to_path_buf(),
            owner: meta.uid(),
            command,
        });
    }
    Ok(())
}

/// The agent's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

/// Held while the daemon (or another writer of the lineage) runs.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Why the device is revoked (informational: the file's presence decides).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevokedMarker {
    pub source: String,
    pub detail: String,
    pub wall_ms: u64,
}

/// The result of the last enrollment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Enrollment {
    pub device: String,
    /// Hex of the AK's TPM name.
    pub ak_name: String,
    /// Hex SHA-256 of the EK's `TPM2B_PUBLIC`.
    pub ek_sha256: String,
    /// Hex SHA-256 of the AK's `TPM2B_PUBLIC`.
    pub ak_sha256: String,
    pub wall_ms: u64,
}

/// Digests of measured files as extended in one TPM boot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Measured {
    pub reset_count: u32,
    pub restart_count: u32,
    pub pcr: u8,
    pub files: Vec<MeasuredFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MeasuredFile {
    pub path: PathBuf,
    /// Hex SHA-256 of the content.
    pub sha256: String,
}

impl StateDir {
    /// Opens `dir`, creating it with mode 0700 if needed.
    pub fn open(dir: &Path) -> Result<StateDir, AgentError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(AgentError::io("create state directory", dir))?;
        Ok(StateDir {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn lineage_dir(&self) -> PathBuf {
        self.dir.join("lineage")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Takes the state directory's lock, or says another agent has it.
    pub fn lock(&self) -> Result<StateLock, AgentError> {
        let path = self.file("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(AgentError::io("open lock file", &path))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(AgentError::Locked(self.dir.clone())),
            Err(e) => Err(AgentError::Io {
                what: "lock",
                path,
                source: e.into(),
            }),
        }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), AgentError> {
        mctc_service::files::write_secret(&self.file(name), bytes).map_err(AgentError::from)
    }

    fn read_optional(&self, name: &str) -> Result<Option<Vec<u8>>, AgentError> {
        let path = self.file(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::Io {
                what: "read state file",
                path,
                source: e,
            }),
        }
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>, AgentError> {
        match self.read_optional(name)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| AgentError::BadState {
                        path: self.file(name),
                        reason: e.to_string(),
                    })
            }
        }
    }

    fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), AgentError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| AgentError::BadState {
            path: self.file(name),
            reason: e.to_string(),
        })?;
        self.write(name, &bytes)
    }

    /// Whether the device is revoked. An unreadable marker (permissions,
    /// IO error) is an error, never "not revoked".
    pub fn is_revoked(&self) -> Result<bool, AgentError> {
        let path = self.file("revoked");
        match std::fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(AgentError::Io {
                what: "check revocation marker",
                path,
                source: e,
            }),
        }
    }

    pub fn revoked_marker(&self) -> Option<RevokedMarker> {
        self.read_json("revoked").ok().flatten()
    }

    pub fn set_revoked(&self, marker: &RevokedMarker) -> Result<(), AgentError> {
        self.write_json("revoked", marker)
    }

    /// Re-provisioning: only after the authority enrolled the device again.
    pub fn clear_revoked(&self) -> Result<(), AgentError> {
        let path = self.file("revoked");
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(AgentError::Io {
                what: "remove revocation marker",
                path,
                source: e,
            }),
        }
    }

    fn read_u64(&self, name: &str) -> Result<Option<u64>, AgentError> {
        match self.read_optional(name)? {
            None => Ok(None),
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .map(Some)
                .ok_or_else(|| AgentError::BadState {
                    path: self.file(name),
                    reason: "not a decimal number".into(),
                }),
        }
    }

    pub fn control_seq(&self) -> Result<Option<u64>, AgentError> {
        self.read_u64("control-seq")
    }

    pub fn set_control_seq(&self, seq: u64) -> Result<(), AgentError> {
        self.write("control-seq", format!("{seq}\n").as_bytes())
    }

    /// The latest verified collector receipt (COSE_Sign1 bytes as
    /// received); it is checked again when read. A missing or damaged
    /// file only means resending from the oldest record on disk.
    pub fn lineage_receipt(&self) -> Option<Vec<u8>> {
        self.read_optional("lineage-receipt").ok().flatten()
    }

    /// Written (atomically, synced) before anything it covers is pruned.
    pub fn set_lineage_receipt(&self, receipt: &[u8]) -> Result<(), AgentError> {
        self.write("lineage-receipt", receipt)
    }

    pub fn enrollment(&self) -> Result<Option<Enrollment>, AgentError> {
        self.read_json("enrollment.json")
    }

    pub fn set_enrollment(&self, enrollment: &Enrollment) -> Result<(), AgentError> {
        self.write_json("enrollment.json", enrollment)
    }

    /// The signed registry record (COSE_Sign1 bytes as received).
    pub fn registry_record(&self) -> Result<Option<Vec<u8>>, AgentError> {
        self.read_optional("registry.cose")
    }

    pub fn set_registry_record(&self, bytes: &[u8]) -> Result<(), AgentError> {
        self.write("registry.cose", bytes)
    }

    /// The AK name (hex) whose enrollment was last written to lineage.
    pub fn enrollment_recorded(&self) -> Option<String> {
        self.read_optional("lineage-enrolled")
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .map(|s| s.trim().to_owned())
    }

    pub fn set_enrollment_recorded(&self, ak_name_hex: &str) -> Result<(), AgentError> {
        self.write("lineage-enrolled", ak_name_hex.as_bytes())
    }

    /// A damaged file means "extend again", which the authority then sees.
    pub fn measured(&self) -> Option<Measured> {
        self.read_json("measured.json").ok().flatten()
    }

    pub fn set_measured(&self, measured: &Measured) -> Result<(), AgentError> {
        self.write_json("measured.json", measured)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn revocation_is_decided_by_presence_and_written_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(&tmp.path().join("s")).unwrap();
        assert!(!state.is_revoked().unwrap());
        state
            .set_revoked(&RevokedMarker {
                source: "control".into(),
                detail: "stolen".into(),
                wall_ms: 1,
            })
            .unwrap();
        assert!(state.is_revoked().unwrap());
        let mode = std::fs::metadata(tmp.path().join("s/revoked"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Garbage in the marker does not un-revoke.
        std::fs::write(tmp.path().join("s/revoked"), b"\xff\x00").unwrap();
        assert!(state.is_revoked().unwrap());
        assert_eq!(state.revoked_marker(), None);
        state.clear_revoked().unwrap();
        assert!(!state.is_revoked().unwrap());
    }

    #[test]
    fn a_damaged_control_seq_refuses_rather_than_forgets() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        assert_eq!(state.control_seq().unwrap(), None);
        state.set_control_seq(41).unwrap();
        assert_eq!(state.control_seq().unwrap(), Some(41));
        std::fs::write(tmp.path().join("control-seq"), b"forty-one").unwrap();
        assert!(matches!(
            state.control_seq(),
            Err(AgentError::BadState { .. })
        ));
    }

    #[test]
    fn the_lock_is_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let held = state.lock().unwrap();
        assert!(matches!(state.lock(), Err(AgentError::Locked(_))));
        drop(held);
        state.lock().unwrap();
    }
}

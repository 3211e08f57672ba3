//! The attestation key's TPM-wrapped blob in the state directory.
//!
//! Why a blob and not a persistent handle: a persistent handle needs owner
//! authorization (which an IT department may have set), writes TPM NV (worn
//! and small: as few as 7 persistent slots, shared with disk encryption and
//! firmware), and can collide with handles other software uses. The blob is
//! useless anywhere but in this TPM (its private part is encrypted under the
//! EK's storage key), so a file with mode 0600 is enough; re-provisioning is
//! an atomic file replacement, and the TPM keeps no state of ours. The price
//! is a TPM2_Load after every TPM reset, which the worker does on demand.
//!
//! File layout: `"MCTC-AK1" | ek kind u8 | ak kind u8 | TPM2B(EK name) |
//! TPM2B(AK TPM2B_PUBLIC) | TPM2B(AK TPM2B_PRIVATE body) | SHA-256(all before)`.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{AkBlobProblem, Error};
use crate::verifier::{AkKind, EkKind};
use crate::wire::{Reader, put_tpm2b};

const MAGIC: &[u8; 8] = b"MCTC-AK1";
const FILE_NAME: &str = "attestation-key.blob";

/// What is saved about the AK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AkBlob {
    pub(crate) ek_kind: EkKind,
    pub(crate) ak_kind: AkKind,
    /// The name of the EK it was created under.
    pub(crate) ek_name: Vec<u8>,
    /// The AK's marshalled `TPM2B_PUBLIC`.
    pub(crate) public: Vec<u8>,
    /// The body of its `TPM2B_PRIVATE` (TPM-encrypted).
    pub(crate) private: Vec<u8>,
}

pub(crate) fn blob_path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

fn ek_code(kind: EkKind) -> u8 {
    match kind {
        EkKind::EccP256 => 1,
        EkKind::Rsa2048 => 2,
    }
}

fn ak_code(kind: AkKind) -> u8 {
    match kind {
        AkKind::EccP256 => 1,
        AkKind::Rsa2048 => 2,
    }
}

impl AkBlob {
    fn encode(&self) -> Option<Vec<u8>> {
        let mut out = MAGIC.to_vec();
        out.push(ek_code(self.ek_kind));
        out.push(ak_code(self.ak_kind));
        put_tpm2b(&mut out, &self.ek_name)?;
        put_tpm2b(&mut out, &self.public)?;
        put_tpm2b(&mut out, &self.private)?;
        let sum = ring::digest::digest(&ring::digest::SHA256, &out);
        out.extend_from_slice(sum.as_ref());
        Some(out)
    }

    fn decode(bytes: &[u8]) -> Option<AkBlob> {
        let body_len = bytes.len().checked_sub(32)?;
        let (body, sum) = bytes.split_at(body_len);
        if ring::digest::digest(&ring::digest::SHA256, body).as_ref() != sum {
            return None;
        }
        let mut r = Reader::new("AK blob", body);
        if r.take(MAGIC.len()).ok()? != MAGIC {
            return None;
        }
        let ek_kind = match r.u8().ok()? {
            1 => EkKind::EccP256,
            2 => EkKind::Rsa2048,
            _ => return None,
        };
        let ak_kind = match r.u8().ok()? {
            1 => AkKind::EccP256,
            2 => AkKind::Rsa2048,
            _ => return None,
        };
        let max = usize::from(u16::MAX);
        let ek_name = r.tpm2b("EK name", max).ok()?.to_vec();
        let public = r.tpm2b("AK public", max).ok()?.to_vec();
        let private = r.tpm2b("AK private", max).ok()?.to_vec();
        r.finish().ok()?;
        Some(AkBlob {
            ek_kind,
            ak_kind,
            ek_name,
            public,
            private,
        })
    }
}

/// Reads the saved AK, `None` if there is none.
pub(crate) fn load(state_dir: &Path) -> Result<Option<AkBlob>, Error> {
    let path = blob_path(state_dir);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::State {
                what: "read",
                path,
                source,
            });
        }
    };
    AkBlob::decode(&bytes).map(Some).ok_or(Error::AkBlob {
        path,
        problem: AkBlobProblem::Corrupt,
    })
}

/// Saves the AK atomically (write, fsync, rename, fsync the directory) with
/// mode 0600 in a 0700 directory.
pub(crate) fn save(state_dir: &Path, blob: &AkBlob) -> Result<(), Error> {
    let path = blob_path(state_dir);
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::State { what, path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(io("create", state_dir))?;
    let bytes = blob.encode().ok_or(Error::InvalidArgument(
        "attestation key too large to save".into(),
    ))?;
    let tmp = state_dir.join(format!("{FILE_NAME}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    file.write_all(&bytes).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("sync", &tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io("rename into", &path))?;
    sync_dir(state_dir)
}

/// Deletes the saved AK (nothing to do if there is none).
pub(crate) fn delete(state_dir: &Path) -> Result<(), Error> {
    let path = blob_path(state_dir);
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(state_dir),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::State {
            what: "delete",
            path,
            source,
        }),
    }
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::State {
            what: "sync",
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn blob() -> AkBlob {
        AkBlob {
            ek_kind: EkKind::Rsa2048,
            ak_kind: AkKind::EccP256,
            ek_name: vec![0, 0x0b, 1, 2],
            public: vec![3; 90],
            private: vec![4; 120],
        }
    }

    #[test]
    fn round_trips_with_private_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert_eq!(load(&state).unwrap(), None);
        save(&state, &blob()).unwrap();
        assert_eq!(load(&state).unwrap(), Some(blob()));
        let mode = fs::metadata(blob_path(&state))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        delete(&state).unwrap();
        assert_eq!(load(&state).unwrap(), None);
        delete(&state).unwrap();
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let bytes = blob().encode().unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert_eq!(AkBlob::decode(&bad), None, "byte {i}");
        }
        assert_eq!(AkBlob::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(AkBlob::decode(&[]), None);
    }
}

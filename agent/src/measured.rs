//! Measured files: configured files whose content becomes part of the
//! attested platform state.
//!
//! At start each file's SHA-256 is extended into the configured PCR, once
//! per TPM boot (an agent restart must not extend again, or the PCR would
//! drift from its baseline by itself): `measured.json` remembers what was
//! extended in which boot. Each drift interval the files are checked
//! again; a change is drift, and the new digest is extended too, so the
//! authority sees the change at the next attestation and refuses.
//!
//! Re-hashing a large binary four times a second would cost real CPU, so a
//! file is re-hashed when its metadata (inode, size, mtime, ctime) changes,
//! and in full every [`FULL_REHASH_EVERY`] regardless. Changing a file
//! without changing its ctime takes root, which owns the device anyway.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mctc_shim::tpm::BootCounters;

use crate::error::AgentError;
use crate::platform::Platform;
use crate::state::{Measured, MeasuredFile, StateDir};

/// Full re-hash period, whatever the metadata says.
pub const FULL_REHASH_EVERY: Duration = Duration::from_secs(60);

/// What identifies a file version cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    })
}

/// SHA-256 of a file's content.
pub fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(buf.get(..n).unwrap_or_default());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

#[derive(Debug, Clone)]
struct Watched {
    path: PathBuf,
    digest: [u8; 32],
    stamp: Option<Stamp>,
}

/// The measured files and their last known digests.
#[derive(Debug, Clone)]
pub struct MeasuredFiles {
    pcr: u8,
    files: Vec<Watched>,
    last_full: Instant,
}

/// A file whose content changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub path: PathBuf,
    pub digest: [u8; 32],
}

/// A missing or unreadable file measures as this (so it is drift, not a
/// crash, and the authority sees a state no baseline contains).
const UNREADABLE: [u8; 32] = [0xff; 32];

fn measure(path: &Path) -> ([u8; 32], Option<Stamp>) {
    match (hash_file(path), stamp(path)) {
        (Ok(digest), Ok(stamp)) => (digest, Some(stamp)),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(path = %path.display(), error = %e, "measured file unreadable");
            (UNREADABLE, None)
        }
    }
}

impl MeasuredFiles {
    /// Hashes the files and extends them into `pcr` unless this TPM boot
    /// already has exactly these digests extended. Call before the first
    /// attestation.
    pub async fn start<P: Platform>(
        pcr: Option<u8>,
        paths: &[PathBuf],
        platform: &P,
        boot: BootCounters,
        state: &StateDir,
    ) -> Result<Option<MeasuredFiles>, AgentError> {
        let Some(pcr) = pcr.filter(|_| !paths.is_empty()) else {
            return Ok(None);
        };
        let paths = paths.to_vec();
        let files = tokio::task::spawn_blocking(move || {
            paths
                .into_iter()
                .map(|path| {
                    let (digest, stamp) = measure(&path);
                    Watched {
                        path,
                        digest,
                        stamp,
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| AgentError::Startup(format!("hash measured files: {e}")))?;
        let record = |files: &[Watched]| Measured {
            reset_count: boot.reset,
            restart_count: boot.restart,
            pcr,
            files: files
                .iter()
                .map(|w| MeasuredFile {
                    path: w.path.clone(),
                    sha256: hex::encode(w.digest),
                })
                .collect(),
        };
        let wanted = record(&files);
        let previous = state.measured();
        let same_boot = previous.as_ref().is_some_and(|p| {
            p.reset_count == boot.reset && p.restart_count == boot.restart && p.pcr == pcr
        });
        if same_boot && previous.as_ref() == Some(&wanted) {
            tracing::info!(pcr, "measured files already extended in this TPM boot");
        } else {
            // In the same boot, extend only what is new (each extension is
            // visible in the PCR); in a new boot, extend everything.
            let already: Vec<String> = if same_boot {
                previous
                    .map(|p| p.files.into_iter().map(|f| f.sha256).collect())
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            for file in &files {
                if already.contains(&hex::encode(file.digest)) {
                    continue;
                }
                platform
                    .extend(pcr, file.digest)
                    .await
                    .map_err(|e| AgentError::Startup(format!("extend PCR {pcr}: {e}")))?;
                tracing::info!(pcr, path = %file.path.display(), "measured file extended");
            }
            state.set_measured(&wanted)?;
        }
        Ok(Some(MeasuredFiles {
            pcr,
            files,
            last_full: Instant::now(),
        }))
    }

    pub fn pcr(&self) -> u8 {
        self.pcr
    }

    /// Checks every file (blocking IO: run it off the async thread).
    /// Returns the files whose digest changed since the last check; their
    /// new digests become the baseline (each change is reported once).
    pub fn check(&mut self) -> Vec<FileChange> {
        let full = self.last_full.elapsed() >= FULL_REHASH_EVERY;
        if full {
            self.last_full = Instant::now();
        }
        let mut changes = Vec::new();
        for file in &mut self.files {
            let now = stamp(&file.path).ok();
            if !full && now.is_some() && now == file.stamp {
                continue;
            }
            let (digest, stamp) = measure(&file.path);
            file.stamp = stamp;
            if digest != file.digest {
                file.digest = digest;
                changes.push(FileChange {
                    path: file.path.clone(),
                    digest,
                });
            }
        }
        changes
    }

    /// What to persist after changes were extended.
    pub fn record(&self, boot: BootCounters) -> Measured {
        Measured {
            reset_count: boot.reset,
            restart_count: boot.restart,
            pcr: self.pcr,
            files: self
                .files
                .iter()
                .map(|w| MeasuredFile {
                    path: w.path.clone(),
                    sha256: hex::encode(w.digest),
                })
                .collect(),
        }
    }
}

//! The device's durable lineage log: append-only segment files with
//! checksummed frames, group commit, crash recovery, rotation, quota and
//! pruning.
//!
//! The store knows frames, not records: a frame is a sequence number and the
//! record's canonical bytes. Building the hash chain is the caller's job; the
//! store guarantees that sequence numbers are contiguous, that what
//! [`Store::append`] acknowledged survives a crash, and that corruption of
//! anything acknowledged is reported rather than skipped.
//!
//! # On-disk format (version 1)
//!
//! A directory of segment files named `{first_seq:020}.seg`. Each segment:
//!
//! ```text
//! header:  magic "MCTCLIN1" (8 bytes) | first_seq u64 LE (8 bytes)
//! frame*:  len u32 LE | crc u32 LE | seq u64 LE | payload[len]
//! ```
//!
//! `crc` is CRC32C over `seq` (8 bytes LE) followed by the payload. Frames
//! hold consecutive sequence numbers, continuing across segments. A new
//! segment is created (header written and synced, directory synced) only
//! after the previous one was synced, so only the last segment can have a
//! torn tail.
//!
//! # Recovery
//!
//! A crash can leave the last group-commit write partially on disk, in any
//! order of its pages. Such a torn write is at most [`MAX_BATCH_BYTES`] long
//! and sits at the very end of the last segment, so: the first bad frame
//! (short, bad length, bad CRC, wrong seq) in the last segment with at most
//! `MAX_BATCH_BYTES` after it is a torn tail and is truncated away (none of
//! its records was ever acknowledged). A bad frame anywhere else is
//! corruption of acknowledged data: [`StoreError::Corrupt`], never skipped.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Segment file magic, with the format version.
pub const MAGIC: &[u8; 8] = b"MCTCLIN1";
/// Header bytes at the start of every segment.
pub const HEADER_BYTES: u64 = 16;
/// Bytes before each payload: len, crc, seq.
pub const FRAME_OVERHEAD: u64 = 16;
/// Largest payload accepted (a checkpoint record with an RSA quote is about
/// 2 KiB; anything near this is damage, not data).
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;
/// Largest single group-commit write; also the longest tail that recovery
/// treats as torn rather than corrupt.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Sizing of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub dir: PathBuf,
    /// A segment is closed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    /// Records are refused (the gate closes) once the store would exceed this.
    pub quota_bytes: u64,
    /// Extra room beyond the quota for records that must be written even when
    /// full: the gate closing and the agent stopping are always recorded.
    pub reserve_bytes: u64,
}

impl StoreConfig {
    pub fn new(dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            dir: dir.into(),
            segment_bytes: 4 * 1024 * 1024,
            quota_bytes: 64 * 1024 * 1024,
            reserve_bytes: 256 * 1024,
        }
    }
}

/// Whether an append may use the reserve beyond the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Decisions and routine records: refused at the quota.
    Normal,
    /// Gate closing, agent stopping: may use the reserve.
    Essential,
}

/// What kind of failure a lineage store error is: what the writer's log
/// line, the status and the recovery act on. Every class but `Quota` fails
/// the store (health `failed`, the gate closed); `DiskFull`, `NotWritable`
/// and `Io` are retried by the writer's recovery, `Corrupt` and `Bug` never
/// recover by themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The file system is full (ENOSPC, EDQUOT): the disk under the log,
    /// not the lineage quota. Recovers once the disk has room.
    DiskFull,
    /// The file system or a file refuses writes (EROFS, EACCES, EPERM).
    /// Recovers once writable.
    NotWritable,
    /// Any other IO error (EIO, a device gone): the disk failed.
    Io,
    /// Acknowledged data is damaged, or the log is not this device's.
    Corrupt,
    /// The lineage quota is reached: records wait for the collector.
    Quota,
    /// A frame the format cannot hold, or an invariant of this code broke.
    Bug,
}

impl FailureClass {
    /// The class of an IO error, by its kind (the errno is kept in it).
    pub fn of_io(error: &std::io::Error) -> FailureClass {
        match error.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => FailureClass::DiskFull,
            ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => {
                FailureClass::NotWritable
            }
            _ => FailureClass::Io,
        }
    }

    /// A stable name (logs, tests).
    pub const fn name(self) -> &'static str {
        match self {
            FailureClass::DiskFull => "disk_full",
            FailureClass::NotWritable => "not_writable",
            FailureClass::Io => "io",
            FailureClass::Corrupt => "corrupt",
            FailureClass::Quota => "quota",
            FailureClass::Bug => "bug",
        }
    }
}

/// A lineage store failure. Cloneable (the IO error is shared) so one
/// failure can refuse every waiting request and stay in the status with its
/// `io::ErrorKind` intact.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// IO failed; after a failed write or sync the store refuses all appends
    /// (a failed fsync is never retried as if it had succeeded).
    #[error("lineage store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Acknowledged data is damaged.
    #[error(
        "lineage store corrupted: {path} at byte {offset} (last good seq {last_good:?}): {reason}"
    )]
    Corrupt {
        path: String,
        offset: u64,
        last_good: Option<u64>,
        reason: String,
    },
    /// The store is full of records the collector has not acknowledged yet.
    #[error("lineage quota of {quota} bytes reached ({used} used)")]
    QuotaExceeded { used: u64, quota: u64 },
    /// An earlier write or sync failed (this error); nothing more is
    /// accepted.
    #[error("lineage store failed earlier and accepts nothing more: {0}")]
    Failed(Box<StoreError>),
    /// The store holds no segment to append to (an invariant of this code:
    /// open always leaves one).
    #[error("no active segment")]
    NoActiveSegment,
    /// Caller error: a frame that does not fit the format.
    #[error("lineage frame rejected: {0}")]
    BadFrame(String),
}

impl StoreError {
    /// What kind of failure this is.
    pub fn class(&self) -> FailureClass {
        match self {
            StoreError::Io { source, .. } => FailureClass::of_io(source),
            StoreError::Corrupt { .. } => FailureClass::Corrupt,
            StoreError::QuotaExceeded { .. } => FailureClass::Quota,
            StoreError::Failed(first) => first.class(),
            StoreError::NoActiveSegment | StoreError::BadFrame(_) => FailureClass::Bug,
        }
    }

    /// The IO error's kind, if IO failed (now or in the failure the store
    /// is still in).
    pub fn io_kind(&self) -> Option<ErrorKind> {
        match self {
            StoreError::Io { source, .. } => Some(source.kind()),
            StoreError::Failed(first) => first.io_kind(),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source: Arc::new(source),
    }
}

/// One stored record: its sequence number and canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Segment {
    first_seq: u64,
    /// Seq of the last frame, `None` while empty.
    last_seq: Option<u64>,
    path: PathBuf,
    len: u64,
}

/// What recovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The last intact frame: the caller continues the chain from it.
    pub last: Option<Frame>,
    /// Frames intact on disk.
    pub frames: u64,
    /// Bytes of torn tail removed.
    pub truncated_bytes: u64,
}

/// The writer side of the log; one owner appends.
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    segments: Vec<Segment>,
    active: File,
    next_seq: u64,
    used: u64,
    failed: Option<StoreError>,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if let Some(first) = name.to_str().and_then(parse_segment_name) {
            found.push((first, entry.path()));
        }
    }
    found.sort_by_key(|(first, _)| *first);
    Ok(found)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Encodes one frame into `out`.
fn put_frame(out: &mut Vec<u8>, seq: u64, payload: &[u8]) -> Result<(), StoreError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(StoreError::BadFrame(format!(
            "payload of {} bytes exceeds {MAX_PAYLOAD_BYTES}",
            payload.len()
        )));
    }
    let len =
        u32::try_from(payload.len()).map_err(|_| StoreError::BadFrame("payload length".into()))?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Outcome of scanning one segment's bytes.
struct Scan {
    frames: Vec<(u64, u64, usize)>, // (seq, payload offset, payload len)
    good_len: u64,
    bad: Option<String>,
}

/// Walks the frames of a segment image, stopping at the first bad one.
fn scan(bytes: &[u8], first_seq: u64) -> Scan {
    let mut frames = Vec::new();
    let mut at = HEADER_BYTES as usize;
    let mut expect = first_seq;
    let bad = loop {
        let Some(rest) = bytes.get(at..) else {
            break Some("offset past end".to_owned());
        };
        if rest.is_empty() {
            break None;
        }
        let Some(header) = rest.get(..FRAME_OVERHEAD as usize) else {
            break Some("short frame header".to_owned());
        };
        let word = |i: usize| -> [u8; 4] {
            let mut w = [0u8; 4];
            w.copy_from_slice(header.get(i..i + 4).unwrap_or(&[0; 4]));
            w
        };
        let len = u32::from_le_bytes(word(0)) as usize;
        let crc = u32::from_le_bytes(word(4));
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(header.get(8..16).unwrap_or(&[0; 8]));
        let seq = u64::from_le_bytes(seq_bytes);
        if len > MAX_PAYLOAD_BYTES {
            break Some(format!("frame length {len} out of range"));
        }
        let Some(payload) = rest.get(FRAME_OVERHEAD as usize..FRAME_OVERHEAD as usize + len) else {
            break Some("short frame payload".to_owned());
        };
        if crc32c::crc32c_append(crc32c::crc32c(&seq_bytes), payload) != crc {
            break Some("checksum mismatch".to_owned());
        }
        if seq != expect {
            break Some(format!("seq {seq} where {expect} was expected"));
        }
        if seq == u64::MAX {
            // Never written (no seq could follow it); counting past it would
            // wrap.
            break Some("seq u64::MAX".to_owned());
        }
        frames.push((seq, (at + FRAME_OVERHEAD as usize) as u64, len));
        at += FRAME_OVERHEAD as usize + len;
        expect += 1;
    };
    Scan {
        frames,
        good_len: at as u64,
        bad,
    }
}

fn check_header(bytes: &[u8], first_seq: u64) -> Result<(), &'static str> {
    let header = bytes
        .get(..HEADER_BYTES as usize)
        .ok_or("short segment header")?;
    if header.get(..8) != Some(MAGIC.as_slice()) {
        return Err("bad segment magic");
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(header.get(8..16).unwrap_or(&[0; 8]));
    if u64::from_le_bytes(first) != first_seq {
        return Err("segment header disagrees with its file name");
    }
    Ok(())
}

fn create_segment(dir: &Path, first_seq: u64) -> Result<(File, Segment), StoreError> {
    let path = dir.join(segment_name(first_seq));
    let mut file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let mut header = Vec::with_capacity(HEADER_BYTES as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&first_seq.to_le_bytes());
    file.write_all(&header).map_err(io_err(&path))?;
    file.sync_all().map_err(io_err(&path))?;
    sync_dir(dir)?;
    Ok((
        file,
        Segment {
            first_seq,
            last_seq: None,
            path,
            len: HEADER_BYTES,
        },
    ))
}

impl Store {
    /// Opens (creating if needed) the store in `config.dir`, recovering from
    /// a crash. Returns the last intact frame so the chain can continue.
    pub fn open(config: StoreConfig) -> Result<(Store, Recovery), StoreError> {
        std::fs::create_dir_all(&config.dir).map_err(io_err(&config.dir))?;
        let listed = list_segments(&config.dir)?;
        let mut segments = Vec::with_capacity(listed.len());
        let mut last: Option<Frame> = None;
        let mut frames_total = 0u64;
        let mut truncated = 0u64;
        let count = listed.len();
        for (index, (first_seq, path)) in listed.into_iter().enumerate() {
            let is_last = index + 1 == count;
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            let expected_first = last.as_ref().map_or(first_seq, |f| f.seq + 1);
            let corrupt =
                |offset: u64, reason: String, last_good: Option<u64>| StoreError::Corrupt {
                    path: path.display().to_string(),
                    offset,
                    last_good,
                    reason,
                };
            if first_seq != expected_first {
                return Err(corrupt(
                    0,
                    format!("segment starts at seq {first_seq}, expected {expected_first}"),
                    last.as_ref().map(|f| f.seq),
                ));
            }
            if let Err(reason) = check_header(&bytes, first_seq) {
                // A segment whose header never made it to disk: only possible
                // for the newest one, and it holds nothing acknowledged.
                if is_last && bytes.len() <= HEADER_BYTES as usize + MAX_BATCH_BYTES {
                    std::fs::remove_file(&path).map_err(io_err(&path))?;
                    sync_dir(&config.dir)?;
                    truncated += bytes.len() as u64;
                    continue;
                }
                return Err(corrupt(0, reason.to_owned(), last.as_ref().map(|f| f.seq)));
            }
            let scanned = scan(&bytes, first_seq);
            if let Some(reason) = scanned.bad {
                let tail = bytes.len() as u64 - scanned.good_len;
                let good_seq = scanned
                    .frames
                    .last()
                    .map(|f| f.0)
                    .or(last.as_ref().map(|f| f.seq));
                if !is_last || tail > MAX_BATCH_BYTES as u64 {
                    return Err(corrupt(scanned.good_len, reason, good_seq));
                }
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                file.set_len(scanned.good_len).map_err(io_err(&path))?;
                file.sync_all().map_err(io_err(&path))?;
                truncated += tail;
            }
            if let Some(&(seq, offset, len)) = scanned.frames.last() {
                let start = offset as usize;
                let payload = bytes.get(start..start + len).unwrap_or_default().to_vec();
                last = Some(Frame { seq, payload });
            }
            frames_total += scanned.frames.len() as u64;
            segments.push(Segment {
                first_seq,
                last_seq: scanned.frames.last().map(|f| f.0),
                path,
                len: scanned.good_len,
            });
        }
        let next_seq = match &last {
            Some(frame) => frame.seq + 1,
            None => {
                // No record survived. That is a new log only if it starts at
                // seq 0. One that starts higher lost the record the chain
                // continues from (its predecessors were pruned): appending
                // would reuse seqs the collector already holds, in a segment
                // whose header promises another seq, so the next recovery
                // would cut the new, acknowledged records off as a torn tail.
                if let Some(segment) = segments.iter().find(|s| s.first_seq != 0) {
                    return Err(StoreError::Corrupt {
                        path: segment.path.display().to_string(),
                        offset: HEADER_BYTES,
                        last_good: None,
                        reason: format!(
                            "no record on disk, but the log starts at seq {}: the record the chain continues from is gone",
                            segment.first_seq
                        ),
                    });
                }
                0
            }
        };
        let active = match segments.last() {
            Some(segment) => {
                let mut file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&segment.path)
                    .map_err(io_err(&segment.path))?;
                file.seek(SeekFrom::End(0)).map_err(io_err(&segment.path))?;
                file
            }
            None => {
                let (file, segment) = create_segment(&config.dir, next_seq)?;
                segments.push(segment);
                file
            }
        };
        let used = segments.iter().map(|s| s.len).sum();
        Ok((
            Store {
                config,
                segments,
                active,
                next_seq,
                used,
                failed: None,
            },
            Recovery {
                last,
                frames: frames_total,
                truncated_bytes: truncated,
            },
        ))
    }

    /// The seq the next appended frame must carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes on disk.
    pub fn used_bytes(&self) -> u64 {
        self.used
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The write or sync failure the store is in, until it recovers.
    pub fn failure(&self) -> Option<&StoreError> {
        self.failed.as_ref()
    }

    /// Appends `payloads` as frames `next_seq..` with one write and one
    /// fdatasync. Returns only after the frames are durable. On any IO error
    /// the store is failed: the error is returned now and every later append
    /// returns [`StoreError::Failed`] until [`Store::recover`] succeeds.
    pub fn append(&mut self, payloads: &[&[u8]], priority: Priority) -> Result<u64, StoreError> {
        if let Some(first) = &self.failed {
            return Err(StoreError::Failed(Box::new(first.clone())));
        }
        if payloads.is_empty() {
            return Ok(self.next_seq);
        }
        let mut buf = Vec::with_capacity(
            payloads
                .iter()
                .map(|p| p.len() + FRAME_OVERHEAD as usize)
                .sum(),
        );
        let first = self.next_seq;
        // The last frame's seq stays below u64::MAX, so every seq after a
        // stored frame, here and in recovery, exists.
        if first.checked_add(payloads.len() as u64).is_none() {
            return Err(StoreError::BadFrame(format!(
                "{} frames from seq {first} run past the last seq",
                payloads.len()
            )));
        }
        for (i, payload) in payloads.iter().enumerate() {
            put_frame(&mut buf, first + i as u64, payload)?;
        }
        if buf.len() > MAX_BATCH_BYTES {
            return Err(StoreError::BadFrame(format!(
                "batch of {} bytes exceeds {MAX_BATCH_BYTES}",
                buf.len()
            )));
        }
        let limit = match priority {
            Priority::Normal => self.config.quota_bytes,
            Priority::Essential => self.config.quota_bytes + self.config.reserve_bytes,
        };
        let rotate = self
            .segments
            .last()
            .is_some_and(|s| s.len >= self.config.segment_bytes && s.last_seq.is_some());
        let new_bytes = buf.len() as u64 + if rotate { HEADER_BYTES } else { 0 };
        if self.used + new_bytes > limit {
            return Err(StoreError::QuotaExceeded {
                used: self.used,
                quota: self.config.quota_bytes,
            });
        }
        if rotate {
            // The active segment was synced by the append that filled it.
            match create_segment(&self.config.dir, first) {
                Ok((file, segment)) => {
                    self.active = file;
                    self.used += segment.len;
                    self.segments.push(segment);
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        let Some(segment) = self.segments.last_mut() else {
            return Err(self.fail(StoreError::NoActiveSegment));
        };
        let path = segment.path.clone();
        let written = self
            .active
            .write_all(&buf)
            .and_then(|()| self.active.sync_data());
        if let Err(source) = written {
            return Err(self.fail(StoreError::Io {
                path: path.display().to_string(),
                source: Arc::new(source),
            }));
        }
        if let Some(segment) = self.segments.last_mut() {
            segment.len += buf.len() as u64;
            segment.last_seq = Some(first + payloads.len() as u64 - 1);
        }
        self.used += buf.len() as u64;
        self.next_seq = first + payloads.len() as u64;
        Ok(first)
    }

    fn fail(&mut self, error: StoreError) -> StoreError {
        self.failed = Some(error.clone());
        error
    }

    /// Test seam: the active segment's handle can no longer write (as on a
    /// file system gone read-only), so the next append fails.
    #[cfg(test)]
    pub(crate) fn lose_write_access(&mut self) {
        if let Some(segment) = self.segments.last()
            && let Ok(file) = File::open(&segment.path)
        {
            self.active = file;
        }
    }

    /// Test seam: the active segment's writes go to `/dev/full`, which
    /// refuses them with ENOSPC, as a disk that filled up does.
    #[cfg(test)]
    pub(crate) fn fill_disk(&mut self) {
        if let Ok(file) = OpenOptions::new().write(true).open("/dev/full") {
            self.active = file;
        }
    }

    /// Makes a failed store usable again once the disk is (a full disk
    /// got room, a read-only file system became writable): whatever the
    /// failed append left behind is cut off — the active segment is
    /// truncated to the end of its last acknowledged frame and synced, and
    /// a segment file the failed append was creating is removed — then a
    /// probe file of one full batch is written and synced, so the store is
    /// declared writable only when the disk takes a batch again.
    ///
    /// Nothing acknowledged is touched: an append is acknowledged only
    /// after its fdatasync, and the bytes of a failed one (which may even
    /// have reached the page cache) were never acknowledged to anyone. The
    /// cut does not rely on the failed fdatasync's pages: they are dropped
    /// with the truncation. On error the store stays failed.
    pub fn recover(&mut self) -> Result<(), StoreError> {
        if self.failed.is_none() {
            return Ok(());
        }
        let dir = self.config.dir.clone();
        let stray = dir.join(segment_name(self.next_seq));
        if !self.segments.iter().any(|s| s.path == stray) && stray.exists() {
            std::fs::remove_file(&stray).map_err(io_err(&stray))?;
            sync_dir(&dir)?;
        }
        let probe = dir.join("writable.probe");
        let written = File::create(&probe)
            .and_then(|mut f| {
                f.write_all(&[0u8; MAX_BATCH_BYTES])?;
                f.sync_data()
            })
            .map_err(io_err(&probe));
        let _ = std::fs::remove_file(&probe);
        written?;
        let Some(segment) = self.segments.last() else {
            return Err(StoreError::NoActiveSegment);
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&segment.path)
            .map_err(io_err(&segment.path))?;
        file.set_len(segment.len).map_err(io_err(&segment.path))?;
        file.sync_all().map_err(io_err(&segment.path))?;
        file.seek(SeekFrom::End(0)).map_err(io_err(&segment.path))?;
        self.active = file;
        self.failed = None;
        Ok(())
    }

    /// Deletes every segment whose frames are all at or below `acked_seq`
    /// (never the active segment). Returns the bytes freed.
    pub fn prune_through(&mut self, acked_seq: u64) -> Result<u64, StoreError> {
        let mut freed = 0;
        while self.segments.len() > 1 {
            let Some(first) = self.segments.first() else {
                break;
            };
            if first.last_seq.is_none_or(|last| last > acked_seq) {
                break;
            }
            // Never the newest segment holding records: after a crash
            // between creating a segment and writing to it the segments after
            // it are empty, and recovery continues the chain from its last
            // record.
            if !self.segments.iter().skip(1).any(|s| s.last_seq.is_some()) {
                break;
            }
            let segment = self.segments.remove(0);
            std::fs::remove_file(&segment.path).map_err(io_err(&segment.path))?;
            freed += segment.len;
            self.used -= segment.len;
        }
        if freed > 0 {
            sync_dir(&self.config.dir)?;
        }
        Ok(freed)
    }

    /// The oldest seq still on disk (`None` when empty).
    pub fn first_seq(&self) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| s.last_seq.is_some())
            .map(|s| s.first_seq)
    }
}

/// Where a sequential reader stopped: the segment (by its first seq), the
/// byte offset of the next frame in it, and that frame's seq. Handing it back
/// to [`read_range_at`] continues there instead of walking the segment from
/// its start again (segments are append-only, so a position below the
/// durable end stays valid until the segment is pruned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub segment: u64,
    pub offset: u64,
    pub seq: u64,
}

/// Reads frames `from..` (and below `end`, the first seq not yet durable)
/// from the store directory, up to `max_frames` and roughly `max_bytes` of
/// payload (at least one frame). Safe to call while the writer appends: it
/// never returns frames at or past `end`, and a segment pruned in between is
/// skipped.
pub fn read_range(
    dir: &Path,
    from: u64,
    end: u64,
    max_frames: usize,
    max_bytes: usize,
) -> Result<Vec<Frame>, StoreError> {
    read_range_at(dir, from, end, max_frames, max_bytes, None).map(|(frames, _)| frames)
}

/// [`read_range`] for a sequential reader: starts at `hint` when it names
/// `from` (else walks the segment holding `from` from its start), and
/// returns where the next read continues. Streams the segment through a
/// small buffer: frames below `from` are stepped over by their length, and
/// only the frames returned are checksummed and copied.
pub fn read_range_at(
    dir: &Path,
    from: u64,
    end: u64,
    max_frames: usize,
    max_bytes: usize,
    hint: Option<Cursor>,
) -> Result<(Vec<Frame>, Option<Cursor>), StoreError> {
    let mut out = Vec::new();
    if from >= end || max_frames == 0 {
        return Ok((out, hint));
    }
    let segments = list_segments(dir)?;
    // The segment holding `from` is the last one starting at or before it.
    let start = segments
        .iter()
        .rposition(|(first, _)| *first <= from)
        .unwrap_or(0);
    let mut reading = Reading {
        out: &mut out,
        next: from,
        end,
        max_frames,
        max_bytes,
        bytes_out: 0,
        cursor: None,
    };
    for (first_seq, path) in segments.iter().skip(start) {
        if reading.full() {
            break;
        }
        let at = hint
            .filter(|h| h.segment == *first_seq && h.seq == reading.next)
            .map(|h| (h.offset, h.seq));
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(path)(e)),
        };
        let before = reading.out.len();
        reading
            .segment(file, *first_seq, at)
            .map_err(io_err(path))?;
        if at.is_some() && reading.out.len() == before && !reading.full() {
            // The hint led nowhere (cannot happen for a cursor this function
            // returned on a durable record): walk the segment from its start.
            let file = File::open(path).map_err(io_err(path))?;
            reading
                .segment(file, *first_seq, None)
                .map_err(io_err(path))?;
        }
    }
    let cursor = reading.cursor;
    Ok((out, cursor))
}

/// The state of one [`read_range_at`] call.
struct Reading<'a> {
    out: &'a mut Vec<Frame>,
    next: u64,
    end: u64,
    max_frames: usize,
    max_bytes: usize,
    bytes_out: usize,
    cursor: Option<Cursor>,
}

impl Reading<'_> {
    fn full(&self) -> bool {
        self.next >= self.end
            || self.out.len() >= self.max_frames
            || (self.bytes_out >= self.max_bytes && !self.out.is_empty())
    }

    /// Reads one segment's frames from `at` (offset, seq) or its start,
    /// stopping at the first frame that is short, out of range, out of
    /// sequence or (when returned) fails its checksum: past it nothing is
    /// trusted, as in [`scan`].
    fn segment(
        &mut self,
        file: File,
        first_seq: u64,
        at: Option<(u64, u64)>,
    ) -> std::io::Result<()> {
        use std::io::BufReader;
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        let (mut offset, mut expect) = match at {
            Some((offset, seq)) => {
                reader.seek(SeekFrom::Start(offset))?;
                (offset, seq)
            }
            None => {
                let mut header = [0u8; HEADER_BYTES as usize];
                if !read_full(&mut reader, &mut header)?
                    || check_header(&header, first_seq).is_err()
                {
                    return Ok(());
                }
                (HEADER_BYTES, first_seq)
            }
        };
        while !self.full() {
            let mut header = [0u8; FRAME_OVERHEAD as usize];
            if !read_full(&mut reader, &mut header)? {
                return Ok(());
            }
            let (len, crc, seq) = frame_header(&header);
            if len > MAX_PAYLOAD_BYTES || seq != expect || seq == u64::MAX {
                return Ok(());
            }
            let frame_end = offset + FRAME_OVERHEAD + len as u64;
            if seq < self.next {
                reader.seek_relative(len as i64)?;
            } else {
                let mut payload = vec![0u8; len];
                if !read_full(&mut reader, &mut payload)?
                    || crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), &payload) != crc
                {
                    return Ok(());
                }
                self.bytes_out += len;
                self.out.push(Frame { seq, payload });
                self.next = seq + 1;
                self.cursor = Some(Cursor {
                    segment: first_seq,
                    offset: frame_end,
                    seq: seq + 1,
                });
            }
            offset = frame_end;
            expect = seq + 1;
        }
        Ok(())
    }
}

/// Reads exactly `buf.len()` bytes; `false` at end of file (or a short
/// tail, which a concurrent append can leave for a moment).
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(buf.get_mut(filled..).unwrap_or_default()) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// (payload length, crc, seq) of a frame header.
fn frame_header(header: &[u8; FRAME_OVERHEAD as usize]) -> (usize, u32, u64) {
    let [
        l0,
        l1,
        l2,
        l3,
        c0,
        c1,
        c2,
        c3,
        s0,
        s1,
        s2,
        s3,
        s4,
        s5,
        s6,
        s7,
    ] = *header;
    (
        u32::from_le_bytes([l0, l1, l2, l3]) as usize,
        u32::from_le_bytes([c0, c1, c2, c3]),
        u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(seq: u64) -> Vec<u8> {
        format!("record {seq} ").repeat(8).into_bytes()
    }

    fn fill(store: &mut Store, n: u64) {
        for _ in 0..n {
            let seq = store.next_seq();
            store.append(&[&payload(seq)], Priority::Normal).unwrap();
        }
    }

    fn small(dir: &Path) -> StoreConfig {
        StoreConfig {
            segment_bytes: 4096,
            ..StoreConfig::new(dir)
        }
    }

    fn last_segment(dir: &Path) -> PathBuf {
        list_segments(dir).unwrap().pop().unwrap().1
    }

    #[test]
    fn a_failed_append_is_cut_off_and_the_store_resumes_once_writable() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(small(dir.path())).unwrap();
        fill(&mut store, 10);
        // The failing write got part of a frame into the file before the
        // disk refused the rest; the handle can no longer write.
        let active = store.segments.last().unwrap().path.clone();
        OpenOptions::new()
            .append(true)
            .open(&active)
            .unwrap()
            .write_all(&[0x20, 0, 0, 0, 1, 2, 3])
            .unwrap();
        store.active = File::open(&active).unwrap();
        let err = store.append(&[&payload(10)], Priority::Normal).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
        assert_eq!(err.class(), FailureClass::Io, "EBADF is an IO error");
        assert!(store.failure().is_some());
        assert!(matches!(
            store.append(&[&payload(10)], Priority::Normal),
            Err(StoreError::Failed(_))
        ));

        store.recover().unwrap();
        assert!(store.failure().is_none());
        assert_eq!(store.append(&[&payload(10)], Priority::Normal).unwrap(), 10);
        drop(store);
        let (_, rec) = Store::open(small(dir.path())).unwrap();
        assert_eq!(
            rec.truncated_bytes, 0,
            "recover() already cut the partial frame"
        );
        assert_eq!(rec.frames, 11);
        let all = read_range(dir.path(), 0, 11, usize::MAX, usize::MAX).unwrap();
        assert!(
            all.iter()
                .enumerate()
                .all(|(i, f)| f.payload == payload(i as u64))
        );
    }

    /// ENOSPC keeps its kind through the failure the store stays in, so
    /// the writer, the log and the status can tell a full disk from a
    /// failing one; nothing about it is retried as if it had succeeded.
    #[test]
    fn a_full_disk_is_classified_and_stays_so_until_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(small(dir.path())).unwrap();
        fill(&mut store, 3);
        store.fill_disk();
        let err = store.append(&[&payload(3)], Priority::Normal).unwrap_err();
        assert_eq!(err.io_kind(), Some(ErrorKind::StorageFull), "{err}");
        assert_eq!(err.class(), FailureClass::DiskFull);
        let again = store.append(&[&payload(3)], Priority::Normal).unwrap_err();
        assert!(matches!(again, StoreError::Failed(_)), "{again}");
        assert_eq!(again.class(), FailureClass::DiskFull);
        assert_eq!(again.io_kind(), Some(ErrorKind::StorageFull));
        assert_eq!(
            store.failure().map(StoreError::class),
            Some(FailureClass::DiskFull)
        );
        // The disk has room again (the real directory takes the probe).
        store.recover().unwrap();
        assert_eq!(store.append(&[&payload(3)], Priority::Normal).unwrap(), 3);
    }

    #[test]
    fn a_segment_half_created_by_a_failed_rotation_is_removed_by_recover() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(small(dir.path())).unwrap();
        while store.segments.last().unwrap().len < 4096 {
            fill(&mut store, 1);
        }
        // The next append rotates; its new segment's file is in the way
        // (a rotation that failed after creating it).
        let next = store.next_seq();
        std::fs::write(dir.path().join(segment_name(next)), b"MCTC").unwrap();
        assert!(store.append(&[&payload(next)], Priority::Normal).is_err());
        assert!(store.failure().is_some());

        store.recover().unwrap();
        assert_eq!(
            store.append(&[&payload(next)], Priority::Normal).unwrap(),
            next
        );
        drop(store);
        let (store, rec) = Store::open(small(dir.path())).unwrap();
        assert_eq!(store.next_seq(), next + 1);
        assert_eq!(rec.truncated_bytes, 0);
    }

    #[test]
    fn recover_keeps_a_store_failed_while_the_disk_still_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(small(dir.path())).unwrap();
        fill(&mut store, 3);
        let active = store.segments.last().unwrap().path.clone();
        store.active = File::open(&active).unwrap();
        assert!(store.append(&[&payload(3)], Priority::Normal).is_err());
        // The directory is gone: no probe can be written.
        let moved = dir.path().with_extension("moved");
        std::fs::rename(dir.path(), &moved).unwrap();
        assert!(store.recover().is_err());
        assert!(store.failure().is_some());
        std::fs::rename(&moved, dir.path()).unwrap();
        store.recover().unwrap();
        assert_eq!(store.append(&[&payload(3)], Priority::Normal).unwrap(), 3);
    }

    #[test]
    fn appends_survive_reopen_and_the_chain_continues() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, rec) = Store::open(small(dir.path())).unwrap();
        assert_eq!(rec.last, None);
        fill(&mut store, 100);
        let batch: Vec<Vec<u8>> = (100..110).map(payload).collect();
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        assert_eq!(store.append(&refs, Priority::Normal).unwrap(), 100);
        drop(store);

        let (store, rec) = Store::open(small(dir.path())).unwrap();
        assert_eq!(rec.frames, 110);
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(
            rec.last,
            Some(Frame {
                seq: 109,
                payload: payload(109)
            })
        );
        assert_eq!(store.next_seq(), 110);
        assert!(list_segments(dir.path()).unwrap().len() > 1, "rotated");
        let all = read_range(dir.path(), 0, 110, usize::MAX, usize::MAX).unwrap();
        assert_eq!(all.len(), 110);
        for (i, f) in all.iter().enumerate() {
            assert_eq!(f.seq, i as u64);
            assert_eq!(f.payload, payload(i as u64));
        }
    }

    #[test]
    fn a_torn_final_record_is_truncated_and_appending_continues() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(small(dir.path())).unwrap();
        fill(&mut store, 20);
        drop(store);
        let seg = last_segment(dir.path());
        let len = std::fs::metadata(&seg).unwrap().len();
        // Cut the last frame in half, as a crash mid-write would.
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 30)
            .unwrap();

        let (mut store, rec) = Store::open(small(dir.path())).unwrap();
        assert_eq!(rec.last.as_ref().unwrap().seq, 18);
        assert!(rec.truncated_bytes > 0);
        assert_eq!(store.next_seq(), 19);
        fill(&mut store, 5);
        drop(store);
        let (_, rec) = Store::open(small(dir.path())).unwrap();
        assert_eq!(rec.last.unwrap().seq, 23);
        assert_eq!(rec.truncated_bytes, 0);
    }

    #[test]
    fn garbage_after_the_last_record_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(small(dir.path())).unwrap();
        fill(&mut store, 3);
        drop(store);
        let mut f = OpenOptions::new()
            .append(true)
            .open(last_segment(dir.path()))
            .unwrap();
        f.write_all(&[0u8; 700]).unwrap();
        let (store, rec) = Store::open(small(dir.path())).unwrap();
        assert_eq!(rec.truncated_bytes, 700);
        assert_eq!(store.next_seq(), 3);
    }

    #[test]
    fn a_corrupted_middle_record_is_reported_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(StoreConfig::new(dir.path())).unwrap();
        // More than a batch after the damage, all in one segment.
        let big = vec![7u8; 8 * 1024];
        for _ in 0..40 {
            store.append(&[&big], Priority::Normal).unwrap();
        }
        drop(store);
        let seg = last_segment(dir.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[HEADER_BYTES as usize + 3 * (8 * 1024 + 16) + 100] ^= 0x40;
        std::fs::write(&seg, &bytes).unwrap();
        match Store::open(StoreConfig::new(dir.path())) {
            Err(StoreError::Corrupt {
                last_good, reason, ..
            }) => {
                assert_eq!(last_good, Some(2));
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        // Nothing was rewritten: the file is as damaged as we left it.
        assert_eq!(std::fs::read(&seg).unwrap(), bytes);
    }

    #[test]
    fn damage_in_an_older_segment_is_corruption_even_near_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(small(dir.path())).unwrap();
        fill(&mut store, 100);
        drop(store);
        let first = list_segments(dir.path()).unwrap()[0].1.clone();
        let len = std::fs::metadata(&first).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        assert!(matches!(
            Store::open(small(dir.path())),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_missing_segment_is_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(small(dir.path())).unwrap();
        fill(&mut store, 100);
        drop(store);
        let segs = list_segments(dir.path()).unwrap();
        std::fs::remove_file(&segs[1].1).unwrap();
        let err = Store::open(small(dir.path())).unwrap_err();
        assert!(err.to_string().contains("expected"), "{err}");
    }

    #[test]
    fn quota_refuses_normal_records_but_keeps_room_for_essential_ones() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            segment_bytes: 4096,
            quota_bytes: 8192,
            reserve_bytes: 1024,
            dir: dir.path().to_owned(),
        };
        let (mut store, _) = Store::open(config).unwrap();
        let mut refused = None;
        for _ in 0..200 {
            let seq = store.next_seq();
            match store.append(&[&payload(seq)], Priority::Normal) {
                Ok(_) => {}
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        assert!(matches!(refused, Some(StoreError::QuotaExceeded { .. })));
        let before = store.next_seq();
        store
            .append(&[b"gate closed: quota"], Priority::Essential)
            .unwrap();
        assert_eq!(store.next_seq(), before + 1);
        assert!(store.failure().is_none(), "quota is not a failure");
    }

    #[test]
    fn pruning_frees_only_fully_acknowledged_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(small(dir.path())).unwrap();
        fill(&mut store, 200);
        let segs_before = list_segments(dir.path()).unwrap().len();
        let used = store.used_bytes();
        assert_eq!(
            store.prune_through(0).unwrap(),
            0,
            "first segment not fully acked"
        );
        let freed = store.prune_through(120).unwrap();
        assert!(freed > 0);
        assert_eq!(store.used_bytes(), used - freed);
        let first = store.first_seq().unwrap();
        assert!(
            first <= 121,
            "record 121 must still be there (first = {first})"
        );
        assert!(list_segments(dir.path()).unwrap().len() < segs_before);
        let rest = read_range(dir.path(), 121, 200, usize::MAX, usize::MAX).unwrap();
        assert_eq!(rest.first().unwrap().seq, 121);
        assert_eq!(rest.len(), 79);
        store.prune_through(u64::MAX).unwrap();
        assert_eq!(
            list_segments(dir.path()).unwrap().len(),
            1,
            "active segment stays"
        );
        drop(store);
        let (store, rec) = Store::open(small(dir.path())).unwrap();
        assert_eq!(store.next_seq(), 200);
        assert_eq!(rec.last.unwrap().seq, 199);
    }

    /// Found by the `lineage_recovery` fuzz target: a log whose only
    /// segment starts above seq 0 and holds no record (its predecessors
    /// pruned). Recovery used to restart at seq 0 inside it; the record
    /// appended then was cut off as a torn tail by the next recovery.
    #[test]
    fn a_log_past_seq_0_without_any_record_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let mut segment = MAGIC.to_vec();
        segment.extend_from_slice(&9u64.to_le_bytes());
        std::fs::write(dir.path().join(segment_name(9)), &segment).unwrap();
        match Store::open(small(dir.path())) {
            Err(StoreError::Corrupt {
                last_good, reason, ..
            }) => {
                assert_eq!(last_good, None);
                assert!(reason.contains("starts at seq 9"), "{reason}");
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        assert_eq!(
            std::fs::read(dir.path().join(segment_name(9))).unwrap(),
            segment
        );

        // The same with the segment's only frame torn: nothing survives.
        let mut torn = segment.clone();
        put_frame(&mut torn, 9, b"never acknowledged").unwrap();
        torn.truncate(torn.len() - 3);
        std::fs::write(dir.path().join(segment_name(9)), &torn).unwrap();
        assert!(matches!(
            Store::open(small(dir.path())),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// Found with the `lineage_recovery` fuzz target's seed at the end of
    /// the seq space: appending after a frame at `u64::MAX - 1` overflowed
    /// (a panic in debug builds; in release the next seq wrapped to 0 and
    /// recovery then took the wrapped frame as the successor of u64::MAX).
    #[test]
    fn the_end_of_the_seq_space_is_an_error_not_a_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let last = u64::MAX - 1;
        let mut segment = MAGIC.to_vec();
        segment.extend_from_slice(&last.to_le_bytes());
        put_frame(&mut segment, last, b"last").unwrap();
        std::fs::write(dir.path().join(segment_name(last)), &segment).unwrap();
        let (mut store, rec) = Store::open(small(dir.path())).unwrap();
        assert_eq!(rec.last.unwrap().seq, last);
        assert_eq!(store.next_seq(), u64::MAX);
        assert!(matches!(
            store.append(&[b"one too many"], Priority::Essential),
            Err(StoreError::BadFrame(_))
        ));
        assert!(store.failure().is_none());
        assert_eq!(store.next_seq(), u64::MAX);
        drop(store);

        // A frame at u64::MAX on disk (never written by the store) is bad
        // data, not a seq to count past.
        let dir = tempfile::tempdir().unwrap();
        let mut segment = MAGIC.to_vec();
        segment.extend_from_slice(&u64::MAX.to_le_bytes());
        put_frame(&mut segment, u64::MAX, b"impossible").unwrap();
        std::fs::write(dir.path().join(segment_name(u64::MAX)), &segment).unwrap();
        assert!(matches!(
            Store::open(small(dir.path())),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(
            read_range(dir.path(), u64::MAX - 1, u64::MAX, 10, 1 << 20)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn pruning_keeps_the_record_the_chain_continues_from() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(small(dir.path())).unwrap();
        fill(&mut store, 100);
        drop(store);
        // A crash right after rotation created the next segment, before the
        // first frame reached it.
        let (file, _) = create_segment(dir.path(), 100).unwrap();
        drop(file);
        let (mut store, rec) = Store::open(small(dir.path())).unwrap();
        assert_eq!(rec.last.as_ref().unwrap().seq, 99);
        store.prune_through(u64::MAX).unwrap();
        drop(store);

        let (mut store, rec) = Store::open(small(dir.path())).unwrap();
        assert_eq!(rec.last.unwrap().seq, 99, "the chain can continue");
        assert_eq!(store.append(&[b"next"], Priority::Normal).unwrap(), 100);
        drop(store);
        let (_, rec) = Store::open(small(dir.path())).unwrap();
        assert_eq!(rec.last.unwrap().seq, 100);
        assert_eq!(rec.truncated_bytes, 0);
    }

    #[test]
    fn read_range_respects_its_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(small(dir.path())).unwrap();
        fill(&mut store, 50);
        let got = read_range(dir.path(), 10, 40, 5, usize::MAX).unwrap();
        assert_eq!(
            got.iter().map(|f| f.seq).collect::<Vec<_>>(),
            vec![10, 11, 12, 13, 14]
        );
        let got = read_range(dir.path(), 35, 40, 100, usize::MAX).unwrap();
        assert_eq!(got.len(), 5, "never past end");
        let got = read_range(dir.path(), 0, 50, 100, 1).unwrap();
        assert_eq!(got.len(), 1, "at least one frame even over the byte budget");
        assert!(read_range(dir.path(), 50, 50, 10, 10).unwrap().is_empty());
    }

    #[test]
    fn a_sequential_reader_continues_at_its_cursor_across_segments_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(small(dir.path())).unwrap();
        fill(&mut store, 30);
        let mut cursor = None;
        let mut next = 0;
        let mut seen = Vec::new();
        // Reads of 7 interleaved with appends: rotation happens under the
        // reader (4 KiB segments hold ~35 records).
        while next < 300 {
            let end = store.next_seq();
            let (frames, after) =
                read_range_at(dir.path(), next, end, 7, usize::MAX, cursor).unwrap();
            if let Some(last) = frames.last() {
                assert_eq!(after.map(|c| c.seq), Some(last.seq + 1));
                next = last.seq + 1;
            }
            seen.extend(frames);
            cursor = after;
            if store.next_seq() < 300 {
                fill(&mut store, 5);
            }
        }
        assert!(list_segments(dir.path()).unwrap().len() > 5);
        let expected = read_range(dir.path(), 0, 300, usize::MAX, usize::MAX).unwrap();
        assert_eq!(seen, expected);
        for frame in &expected {
            assert_eq!(frame.payload, payload(frame.seq));
        }
    }

    #[test]
    fn a_cursor_that_does_not_name_the_start_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(small(dir.path())).unwrap();
        fill(&mut store, 20);
        let (_, cursor) = read_range_at(dir.path(), 0, 20, 10, usize::MAX, None).unwrap();
        let cursor = cursor.unwrap();
        assert_eq!(cursor.seq, 10);
        let seqs = |frames: Vec<Frame>| frames.iter().map(|f| f.seq).collect::<Vec<_>>();
        // A resend from 3 ignores the cursor at 10.
        let (frames, _) = read_range_at(dir.path(), 3, 20, 3, usize::MAX, Some(cursor)).unwrap();
        assert_eq!(seqs(frames), vec![3, 4, 5]);
        // A cursor whose offset is wrong for its seq falls back to a walk.
        let wrong = Cursor {
            offset: cursor.offset + 1,
            ..cursor
        };
        let (frames, _) = read_range_at(dir.path(), 10, 20, 3, usize::MAX, Some(wrong)).unwrap();
        assert_eq!(seqs(frames), vec![10, 11, 12]);
        let past = Cursor {
            offset: 1 << 30,
            ..cursor
        };
        let (frames, _) = read_range_at(dir.path(), 10, 20, 3, usize::MAX, Some(past)).unwrap();
        assert_eq!(seqs(frames), vec![10, 11, 12]);
    }

    #[test]
    fn a_reader_stops_at_a_damaged_frame_it_would_return() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(StoreConfig::new(dir.path())).unwrap();
        fill(&mut store, 10);
        let (_, cursor) = read_range_at(dir.path(), 0, 10, 5, usize::MAX, None).unwrap();
        let cursor = cursor.unwrap();
        // Flip a payload byte of record 6 (one frame after the cursor).
        let path = last_segment(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let frame = FRAME_OVERHEAD as usize + payload(5).len();
        let at = cursor.offset as usize + frame + FRAME_OVERHEAD as usize + 3;
        bytes[at] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        for hint in [Some(cursor), None] {
            let (frames, _) = read_range_at(dir.path(), 5, 10, 10, usize::MAX, hint).unwrap();
            assert_eq!(frames.len(), 1, "record 5 only, nothing past the damage");
            assert_eq!(frames[0].seq, 5);
        }
    }

    #[test]
    fn oversized_frames_are_refused_without_failing_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(small(dir.path())).unwrap();
        let huge = vec![0u8; MAX_PAYLOAD_BYTES + 1];
        assert!(matches!(
            store.append(&[&huge], Priority::Normal),
            Err(StoreError::BadFrame(_))
        ));
        assert!(store.failure().is_none());
        fill(&mut store, 1);
    }
}

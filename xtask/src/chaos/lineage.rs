//! What the suite reads back to prove nothing accepted was lost: a
//! device's lineage straight from its segment files (read here from the
//! format in agent/README.md, independently of the agent's own reader),
//! and the collector's stored records (from its SQLite database, through
//! the `sqlite3` command-line shell, so the suite links no SQLite).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use mctc_shim::DeviceId;
use mctc_shim::crypto::RingCrypto;
use mctc_shim::lineage::{Body, ChainVerifier, Record, Step, VerdictCode};
use mctc_shim::wire::Message;

use super::probe::Permit;

const MAGIC: &[u8; 8] = b"MCTCLIN1";
const HEADER: usize = 16;
const FRAME_OVERHEAD: usize = 16;
const MAX_PAYLOAD: usize = 16 * 1024;

/// One record as stored by the device.
#[derive(Debug, Clone)]
pub struct DiskRecord {
    pub seq: u64,
    pub hash: [u8; 32],
    pub bytes: Vec<u8>,
}

/// The device's lineage as found on disk, its chain verified.
#[derive(Debug, Default)]
pub struct DiskLineage {
    pub records: Vec<DiskRecord>,
    /// Bytes after the last whole frame of the last segment (a write in
    /// progress while the agent runs, or a torn tail after a crash that the
    /// next start cuts away).
    pub tail_bytes: usize,
}

impl DiskLineage {
    pub fn first_seq(&self) -> Option<u64> {
        self.records.first().map(|r| r.seq)
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.records.last().map(|r| r.seq)
    }

    /// The record with `seq`, if it is still on disk.
    pub fn get(&self, seq: u64) -> Option<&DiskRecord> {
        let first = self.first_seq()?;
        let index = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.records.get(index)
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Frames of one segment: `(seq, payload)`s and the bytes after the last
/// whole frame. A bad frame followed by more data is an error unless
/// `last` (only the last segment can have a tail).
/// A segment's frames, `(seq, payload)`, and the bytes after the last one.
type Frames = (Vec<(u64, Vec<u8>)>, usize);

fn frames(bytes: &[u8], name_seq: u64, last: bool) -> Result<Frames, String> {
    if bytes.get(..8) != Some(MAGIC.as_slice()) {
        return Err("bad segment magic".to_owned());
    }
    if u64_at(bytes, 8) != Some(name_seq) {
        return Err("segment header first_seq differs from its file name".to_owned());
    }
    let mut at = HEADER;
    let mut out = Vec::new();
    let mut expected = name_seq;
    while at < bytes.len() {
        let frame = (|| {
            let len = usize::try_from(u32_at(bytes, at)?).ok()?;
            let crc = u32_at(bytes, at + 4)?;
            let seq = u64_at(bytes, at + 8)?;
            if len > MAX_PAYLOAD || seq != expected {
                return None;
            }
            let payload = bytes.get(at + FRAME_OVERHEAD..at + FRAME_OVERHEAD + len)?;
            let sum = crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload);
            (sum == crc).then(|| (seq, payload.to_vec(), FRAME_OVERHEAD + len))
        })();
        match frame {
            Some((seq, payload, size)) => {
                out.push((seq, payload));
                expected += 1;
                at += size;
            }
            None if last => return Ok((out, bytes.len() - at)),
            None => return Err(format!("bad frame at byte {at} (expected seq {expected})")),
        }
    }
    Ok((out, 0))
}

/// Reads and verifies the lineage in `dir` of device `device`.
pub fn read_disk(dir: &Path, device: &str) -> Result<DiskLineage, String> {
    let mut segments: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let seq = name.strip_suffix(".seg")?.parse().ok()?;
            Some((seq, entry.path()))
        })
        .collect();
    segments.sort();
    let id = DeviceId::new(device).map_err(|e| format!("device id {device}: {e}"))?;
    let mut lineage = DiskLineage::default();
    let mut chain: Option<ChainVerifier> = None;
    let count = segments.len();
    for (i, (first_seq, path)) in segments.iter().enumerate() {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            // Pruned between listing and reading.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && i + 1 < count => continue,
            Err(e) => return Err(format!("read {}: {e}", path.display())),
        };
        let (frames, tail) = frames(&bytes, *first_seq, i + 1 == count)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        lineage.tail_bytes = tail;
        for (seq, payload) in frames {
            let verifier = match chain.as_mut() {
                Some(verifier) => verifier,
                None => {
                    let record = Record::decode(&payload)
                        .map_err(|e| format!("record {seq} does not decode: {e}"))?;
                    let start = match seq.checked_sub(1) {
                        None => ChainVerifier::genesis(id.clone()),
                        // Older segments were pruned after the collector
                        // acknowledged them: trust the first link here, the
                        // collector comparison covers it.
                        Some(before) => ChainVerifier::resume(id.clone(), before, record.prev.0),
                    };
                    chain.insert(start)
                }
            };
            match verifier.push(&RingCrypto, &payload) {
                Ok(Step::Appended { hash, .. }) => lineage.records.push(DiskRecord {
                    seq,
                    hash,
                    bytes: payload,
                }),
                Ok(Step::Duplicate { seq }) => return Err(format!("record {seq} stored twice")),
                Err(e) => {
                    return Err(format!(
                        "lineage chain breaks at seq {}: {:?}",
                        e.seq, e.kind
                    ));
                }
            }
        }
    }
    Ok(lineage)
}

/// Whether the record is `permit`'s own: a permit decided under its
/// artifact (`cti`, hex) for the request with its `ref`.
pub fn is_permit_of(bytes: &[u8], permit: &Permit) -> bool {
    match Record::decode(bytes) {
        Ok(record) => match record.body {
            Body::Decision(d) => {
                d.verdict == VerdictCode::Permit
                    && d.cti.is_some_and(|c| hex::encode(c.0) == permit.cti)
                    && d.reference.is_some_and(|r| r.0 == permit.reference)
            }
            _ => false,
        },
        Err(_) => false,
    }
}

/// What the collector holds for a device.
#[derive(Debug, Default)]
pub struct Collected {
    /// seq → record hash, the verified chain from seq 0.
    pub hashes: BTreeMap<u64, [u8; 32]>,
    /// Anomalies recorded for the device: `kind at seq: detail`.
    pub anomalies: Vec<String>,
}

impl Collected {
    /// The seq the collector expects next (0 when it holds nothing).
    pub fn next_seq(&self) -> u64 {
        self.hashes.keys().next_back().map_or(0, |s| s + 1)
    }
}

fn sqlite(db: &Path, sql: &str) -> Result<String, String> {
    let out = Command::new("sqlite3")
        .arg("-readonly")
        .arg("-batch")
        .arg("-noheader")
        .arg("-cmd")
        .arg(".timeout 5000")
        .arg(db)
        .arg(sql)
        .output()
        .map_err(|e| format!("cannot run sqlite3 (apt-get install sqlite3): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "sqlite3 {}: {}",
            db.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Reads the collector's records and anomalies for `device` (which must be
/// a valid device id: the shim's alphabet has no quote characters).
pub fn read_collector(db: &Path, device: &str) -> Result<Collected, String> {
    DeviceId::new(device).map_err(|e| format!("device id {device}: {e}"))?;
    let mut collected = Collected::default();
    if !db.exists() {
        return Ok(collected);
    }
    let rows = sqlite(
        db,
        &format!("SELECT seq, hex(hash) FROM records WHERE device = '{device}' ORDER BY seq;"),
    )?;
    for line in rows.lines() {
        let Some((seq, hash)) = line.split_once('|') else {
            continue;
        };
        let seq: u64 = seq
            .parse()
            .map_err(|e| format!("collector seq `{seq}`: {e}"))?;
        let hash: [u8; 32] = hex::decode(hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| format!("collector hash `{hash}` at seq {seq}"))?;
        collected.hashes.insert(seq, hash);
    }
    let anomalies = sqlite(
        db,
        &format!(
            "SELECT kind || ' at ' || seq_key || ': ' || detail FROM anomalies WHERE device = '{device}' ORDER BY id;"
        ),
    )?;
    collected.anomalies = anomalies.lines().map(str::to_owned).collect();
    Ok(collected)
}

/// The records the collector stores for `device` from `from_seq` on,
/// `(seq, bytes)` in seq order.
pub fn read_collector_records(
    db: &Path,
    device: &str,
    from_seq: u64,
) -> Result<Vec<(u64, Vec<u8>)>, String> {
    DeviceId::new(device).map_err(|e| format!("device id {device}: {e}"))?;
    let rows = sqlite(
        db,
        &format!(
            "SELECT seq, hex(bytes) FROM records WHERE device = '{device}' AND seq >= {from_seq} ORDER BY seq;"
        ),
    )?;
    rows.lines()
        .filter_map(|line| line.split_once('|'))
        .map(|(seq, bytes)| {
            let seq: u64 = seq
                .parse()
                .map_err(|e| format!("collector seq `{seq}`: {e}"))?;
            let bytes = hex::decode(bytes).map_err(|e| format!("collector record {seq}: {e}"))?;
            Ok((seq, bytes))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn segment(first: u64, frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&first.to_le_bytes());
        for f in frames {
            out.extend_from_slice(f);
        }
        out
    }

    #[test]
    fn frames_are_read_and_a_torn_tail_only_tolerated_at_the_end() {
        let good = segment(5, &[frame(5, b"a"), frame(6, b"bc")]);
        let (read, tail) = frames(&good, 5, false).unwrap();
        assert_eq!(read, vec![(5, b"a".to_vec()), (6, b"bc".to_vec())]);
        assert_eq!(tail, 0);

        let mut torn = good.clone();
        torn.extend_from_slice(&frame(7, b"def")[..10]);
        assert_eq!(frames(&torn, 5, true).unwrap().1, 10);
        assert!(frames(&torn, 5, false).is_err());

        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(frames(&flipped, 5, true).unwrap().0.len(), 1);
        assert!(
            frames(&good, 4, true).is_err(),
            "header seq must match the name"
        );
    }
}

//! The agent's crash recovery of its lineage log:
//! `mctc_agent::lineage::store::Store::open` on a directory holding the
//! fuzzed bytes as one or two segment files, then `read_range`, one append
//! and a second open, as the agent does after a restart.
//!
//! Input: a flag byte (bit 0: two segments; bit 1: file names from the
//! input instead of from the segment headers; bit 2: frame checksums made
//! right before writing, so mutations of lengths and seqs get past the
//! CRC), the names' seqs (big-endian u64 each, with bit 1), the first
//! segment's length (big-endian u16, with bit 0), then the segment bytes.
//!
//! Invariants: no panic; `open` either fails or yields a store whose frames
//! `read_range` returns with contiguous seqs, as many as recovery counted,
//! ending at the recovered last frame and just before `next_seq`; appending
//! after recovery gives the next seq, and a second open finds exactly one
//! more frame and nothing torn.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mctc_agent::lineage::store::{
    FRAME_OVERHEAD, Frame, HEADER_BYTES, Priority, Store, StoreConfig, read_range,
};
use mctc_fuzz::input::Input;

fn header_seq(bytes: &[u8]) -> u64 {
    bytes
        .get(8..16)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
}

/// Rewrites the CRC of every frame that fits (CRC32C over the seq and the
/// payload, as `store.rs` documents the format).
fn fix_checksums(segment: &mut [u8]) {
    let mut at = HEADER_BYTES as usize;
    while let Some(header) = segment.get(at..at + FRAME_OVERHEAD as usize) {
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        let seq: [u8; 8] = header[8..16].try_into().unwrap();
        let start = at + FRAME_OVERHEAD as usize;
        let Some(payload) = segment.get(start..start.saturating_add(len)) else {
            return;
        };
        let crc = crc32c::crc32c_append(crc32c::crc32c(&seq), payload);
        segment[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = start + len;
    }
}

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        // Small segments so that the append after recovery may rotate.
        segment_bytes: 4096,
        ..StoreConfig::new(dir)
    }
}

fn all_frames(dir: &Path, store: &Store) -> Vec<Frame> {
    let from = store.first_seq().unwrap_or(store.next_seq());
    read_range(dir, from, store.next_seq(), usize::MAX, usize::MAX)
        .expect("a recovered store reads back")
}

fn scratch() -> tempfile::TempDir {
    // tmpfs where there is one: recovery and append fsync, and on a disk
    // that would cap the fuzzer at a few hundred runs a second.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("a scratch dir in /dev/shm")
    } else {
        tempfile::tempdir().expect("a scratch dir")
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let two = flags & 1 != 0;
    let named = flags & 2 != 0;
    let checksummed = flags & 4 != 0;
    let names = named.then(|| (input.u64(), input.u64()));
    let (first, second) = if two {
        let split = usize::from(input.u16());
        (input.take(split), Some(input.rest()))
    } else {
        (input.rest(), None)
    };

    let dir = scratch();
    let write = |name: u64, bytes: &[u8]| {
        let mut bytes = bytes.to_vec();
        if checksummed {
            fix_checksums(&mut bytes);
        }
        std::fs::write(dir.path().join(format!("{name:020}.seg")), bytes).unwrap();
    };
    write(names.map_or_else(|| header_seq(first), |n| n.0), first);
    if let Some(second) = second {
        write(names.map_or_else(|| header_seq(second), |n| n.1), second);
    }

    let Ok((mut store, recovery)) = Store::open(config(dir.path())) else {
        return;
    };
    let frames = all_frames(dir.path(), &store);
    for pair in frames.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "read_range returned a gap");
    }
    assert_eq!(frames.len() as u64, recovery.frames, "recovery miscounted");
    assert_eq!(
        frames.last(),
        recovery.last.as_ref(),
        "recovered last frame"
    );
    if let Some(last) = &recovery.last {
        assert_eq!(Some(store.next_seq()), last.seq.checked_add(1));
    }

    let next = store.next_seq();
    let Ok(seq) = store.append(&[b"after recovery"], Priority::Essential) else {
        return;
    };
    assert_eq!(seq, next, "append after recovery took another seq");
    drop(store);

    let (store, again) = Store::open(config(dir.path())).expect("a store just written reopens");
    assert_eq!(again.truncated_bytes, 0, "a clean store had a torn tail");
    assert_eq!(again.frames, recovery.frames + 1, "a frame got lost");
    assert_eq!(
        again.last,
        Some(Frame {
            seq: next,
            payload: b"after recovery".to_vec()
        })
    );
    let frames = all_frames(dir.path(), &store);
    assert_eq!(frames.len() as u64, again.frames);
});

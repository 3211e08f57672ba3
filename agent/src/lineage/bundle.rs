//! The lineage bundle: a self-contained file that lets anyone holding the
//! authority's public key verify a device's records offline
//! (`mctc-collector verify BUNDLE --authority-key FILE`).
//!
//! `agent/README.md` ("Bundle format") is the specification. The codec is
//! the shim's (`mctc_shim::bundle`), the one the collector reads and writes
//! with too; this module only gathers what goes into a bundle from the
//! agent's lineage store and state directory, checking the chain on the way.
//!
//! The last record is always a checkpoint, so every record is covered by
//! a TPM quote of the enrolled AK.

use std::path::Path;

pub use mctc_shim::bundle::{BUNDLE_VERSION, Bundle, BundleError};
use mctc_shim::crypto::RingCrypto;
use mctc_shim::lineage::{Body, ChainVerifier, Record, record_hash};
use mctc_shim::messages::RegistryRecord;
use mctc_shim::wire::Message;
use mctc_shim::{AuthorityKey, DeviceId, Signed};

use super::store::{StoreError, read_range};

/// Why a bundle could not be made from the local lineage. The messages are
/// what `lineage export` prints after `bundle: `.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Neither `--registry FILE` nor a stored registry record.
    #[error(
        "no registry record stored (the authority sends it at enrollment); pass --registry FILE"
    )]
    NoRegistryRecord,
    /// The registry record does not verify with a configured authority key.
    #[error("registry record does not verify: {0}")]
    Registry(mctc_shim::Error),
    /// The registry record is another device's.
    #[error("registry record is for {found}, not {expected}")]
    RegistryDevice { found: String, expected: String },
    /// The log holds no record.
    #[error("no lineage records on disk")]
    NoRecords,
    /// The records asked for were pruned.
    #[error(
        "records from seq {from} are not on disk (oldest is {oldest}; older ones were acknowledged and pruned)"
    )]
    Pruned { from: u64, oldest: u64 },
    /// A stored record does not decode.
    #[error("record {seq} does not decode: {error}")]
    Undecodable { seq: u64, error: mctc_shim::Error },
    /// The stored records do not chain.
    #[error("local lineage is broken: {0}")]
    Broken(mctc_shim::lineage::ChainBreak),
    /// No checkpoint to end the bundle at.
    #[error("no checkpoint in the log yet (is the agent running? it checkpoints on request)")]
    NoCheckpoint,
    /// The collector's receipt covers records after the last checkpoint.
    #[error(
        "the collector acknowledged records through {acked}, after the last checkpoint ({last_checkpoint}); start the agent so it checkpoints, then export"
    )]
    ReceiptAhead { acked: u64, last_checkpoint: u64 },
    /// The local lineage could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bundle could not be written.
    #[error("cannot write the bundle: {0}")]
    Write(#[from] mctc_service::ServiceError),
}

/// What `lineage export` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub from_seq: u64,
    pub last_seq: u64,
    pub records: usize,
    pub checkpoints: usize,
    pub bytes: usize,
}

/// Checks the registry record (signed by a configured authority key, for
/// this device) and returns its AK public.
pub fn registry_ak(
    registry: &[u8],
    keys: &[AuthorityKey],
    device: &DeviceId,
) -> Result<Vec<u8>, ExportError> {
    let record =
        RegistryRecord::open(registry, keys, &RingCrypto).map_err(ExportError::Registry)?;
    if record.sub != *device {
        return Err(ExportError::RegistryDevice {
            found: record.sub.to_string(),
            expected: device.to_string(),
        });
    }
    Ok(record.ak_public.0.to_vec())
}

/// Builds the bundle of `lineage_dir` from `from` (default: the oldest
/// record on disk) through the last checkpoint, checking the chain on the
/// way; `receipt` is the latest verified receipt and the seq it covers
/// (the bundle must reach it).
pub fn build(
    lineage_dir: &Path,
    device: &DeviceId,
    from: Option<u64>,
    registry: Vec<u8>,
    ak_public: Vec<u8>,
    receipt: Option<(Vec<u8>, u64)>,
) -> Result<(Bundle, Exported), ExportError> {
    let frames = read_range(
        lineage_dir,
        from.unwrap_or(0),
        u64::MAX,
        usize::MAX,
        usize::MAX,
    )?;
    let first = frames
        .first()
        .map(|f| f.seq)
        .ok_or(ExportError::NoRecords)?;
    if let Some(from) = from
        && first != from
    {
        return Err(ExportError::Pruned {
            from,
            oldest: first,
        });
    }
    let crypto = RingCrypto;
    let mut verifier: Option<ChainVerifier> = None;
    let mut last_checkpoint = None;
    let mut checkpoints = 0usize;
    for (index, frame) in frames.iter().enumerate() {
        let record = Record::decode(&frame.payload).map_err(|error| ExportError::Undecodable {
            seq: frame.seq,
            error,
        })?;
        let chain = verifier.get_or_insert_with(|| {
            if record.seq == 0 {
                ChainVerifier::genesis(device.clone())
            } else {
                ChainVerifier::resume(device.clone(), record.seq - 1, record.prev.0)
            }
        });
        chain
            .push(&crypto, &frame.payload)
            .map_err(ExportError::Broken)?;
        if let Body::Checkpoint(_) = record.body {
            last_checkpoint = Some(index);
            checkpoints += 1;
        }
    }
    let Some(last) = last_checkpoint else {
        return Err(ExportError::NoCheckpoint);
    };
    let records: Vec<Vec<u8>> = frames
        .into_iter()
        .take(last + 1)
        .map(|f| f.payload)
        .collect();
    let head = records
        .last()
        .map(|r| record_hash(&crypto, r))
        .unwrap_or_default();
    let last_seq = first + last as u64;
    if let Some((_, seq)) = &receipt {
        if *seq > last_seq {
            return Err(ExportError::ReceiptAhead {
                acked: *seq,
                last_checkpoint: last_seq,
            });
        }
    }
    let bundle = Bundle {
        device: device.as_str().to_owned(),
        from_seq: first,
        head,
        registry,
        ak_public,
        receipt: receipt.map(|(bytes, _)| bytes),
        records,
    };
    let summary = Exported {
        from_seq: first,
        last_seq,
        records: last + 1,
        checkpoints,
        bytes: 0,
    };
    Ok((bundle, summary))
}

/// Writes `bundle` to `out` atomically (readable: it holds no secret).
pub fn write(out: &Path, bundle: &Bundle) -> Result<usize, ExportError> {
    let bytes = bundle.encode();
    mctc_service::files::write_atomic(out, &bytes, 0o644)?;
    Ok(bytes.len())
}

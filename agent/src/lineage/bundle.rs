//! The lineage bundle: a self-contained file that lets anyone holding the
//! authority's public key verify a device's records offline
//! (`mctc-collector verify BUNDLE --authority-key FILE`).
//!
//! `agent/README.md` ("Bundle format") is the specification; in short, a
//! CBOR sequence (RFC 8742) of a header map and one byte string per record:
//!
//! ```text
//! header = {                       ; canonical CBOR, keys 0..6 all present
//!   0: 1,                          ; v: bundle format version
//!   1: tstr,                       ; device id
//!   2: uint,                       ; from_seq: seq of the first record
//!   3: uint,                       ; count: number of records that follow (≥ 1)
//!   4: bstr .size 32,              ; head: hash of the last record
//!   5: bstr,                       ; registry: the authority's signed RegistryRecord (COSE_Sign1, as received)
//!   6: bstr,                       ; ak_public: the AK's TPM2B_PUBLIC (equals the registry record's)
//!   ? 7: bstr,                     ; receipt: the latest verified collector receipt (COSE_Sign1)
//! }
//! record = bstr                    ; one record's exact canonical encoding, ascending seq
//! ```
//!
//! The last record is always a checkpoint, so every record is covered by
//! a TPM quote of the enrolled AK.

use std::path::Path;

use mctc_shim::crypto::RingCrypto;
use mctc_shim::lineage::{Body, ChainVerifier, Record, record_hash};
use mctc_shim::messages::RegistryRecord;
use mctc_shim::wire::Message;
use mctc_shim::{AuthorityKey, DeviceId, Signed};

use super::store::read_range;
use crate::error::AgentError;

/// Bundle format version.
pub const BUNDLE_VERSION: u64 = 1;
const HEADER_KEYS: u64 = 7;
/// With the optional receipt (key 7).
const HEADER_KEYS_WITH_RECEIPT: u64 = 8;
/// Largest item a reader accepts (a registry record is ≤ 2048 bytes, a
/// record ≤ 2048 bytes).
const MAX_ITEM_BYTES: u64 = 64 * 1024;

/// A parsed or to-be-written bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub device: String,
    pub from_seq: u64,
    pub head: [u8; 32],
    pub registry: Vec<u8>,
    pub ak_public: Vec<u8>,
    /// The latest collector receipt the agent verified (header key 7).
    pub receipt: Option<Vec<u8>>,
    pub records: Vec<Vec<u8>>,
}

fn put_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if let Ok(n) = u8::try_from(n) {
        out.extend_from_slice(&[m | 24, n]);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(m | 25);
        out.extend_from_slice(&n.to_be_bytes());
    } else if let Ok(n) = u32::try_from(n) {
        out.push(m | 26);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn put_uint(out: &mut Vec<u8>, n: u64) {
    put_head(out, 0, n);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_head(out, 2, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    put_head(out, 3, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// A strict reader: shortest-form heads only, no indefinite lengths.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn head(&mut self) -> Result<(u8, u64), String> {
        let at = self.at;
        let first = *self
            .bytes
            .get(at)
            .ok_or_else(|| format!("truncated at byte {at}"))?;
        let (major, info) = (first >> 5, first & 0x1f);
        let width = match info {
            0..=23 => 0,
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return Err(format!("unsupported CBOR item at byte {at}")),
        };
        let arg = self
            .bytes
            .get(at + 1..at + 1 + width)
            .ok_or_else(|| format!("truncated at byte {at}"))?;
        let n = if width == 0 {
            u64::from(info)
        } else {
            arg.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        };
        let shortest = match width {
            0 => true,
            1 => n >= 24,
            2 => n > 0xff,
            4 => n > 0xffff,
            _ => n > 0xffff_ffff,
        };
        if !shortest {
            return Err(format!("non-canonical length at byte {at}"));
        }
        self.at = at + 1 + width;
        Ok((major, n))
    }

    fn expect(&mut self, major: u8, what: &str) -> Result<u64, String> {
        let at = self.at;
        match self.head()? {
            (m, n) if m == major => Ok(n),
            _ => Err(format!("{what} expected at byte {at}")),
        }
    }

    fn uint(&mut self, what: &str) -> Result<u64, String> {
        self.expect(0, what)
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let len = self.expect(2, what)?;
        self.take(len, what)
    }

    fn text(&mut self, what: &str) -> Result<&'a str, String> {
        let len = self.expect(3, what)?;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|_| format!("{what} is not UTF-8"))
    }

    fn take(&mut self, len: u64, what: &str) -> Result<&'a [u8], String> {
        if len > MAX_ITEM_BYTES {
            return Err(format!("{what} of {len} bytes is too long"));
        }
        let end = self.at + len as usize;
        let out = self
            .bytes
            .get(self.at..end)
            .ok_or_else(|| format!("{what} truncated"))?;
        self.at = end;
        Ok(out)
    }
}

impl Bundle {
    /// The bundle's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            256 + self.registry.len() + self.records.iter().map(|r| r.len() + 3).sum::<usize>(),
        );
        let keys = if self.receipt.is_some() {
            HEADER_KEYS_WITH_RECEIPT
        } else {
            HEADER_KEYS
        };
        put_head(&mut out, 5, keys);
        put_uint(&mut out, 0);
        put_uint(&mut out, BUNDLE_VERSION);
        put_uint(&mut out, 1);
        put_text(&mut out, &self.device);
        put_uint(&mut out, 2);
        put_uint(&mut out, self.from_seq);
        put_uint(&mut out, 3);
        put_uint(&mut out, self.records.len() as u64);
        put_uint(&mut out, 4);
        put_bytes(&mut out, &self.head);
        put_uint(&mut out, 5);
        put_bytes(&mut out, &self.registry);
        put_uint(&mut out, 6);
        put_bytes(&mut out, &self.ak_public);
        if let Some(receipt) = &self.receipt {
            put_uint(&mut out, 7);
            put_bytes(&mut out, receipt);
        }
        for record in &self.records {
            put_bytes(&mut out, record);
        }
        out
    }

    /// Parses the structure (nothing is verified here).
    pub fn parse(bytes: &[u8]) -> Result<Bundle, String> {
        let mut r = Reader { bytes, at: 0 };
        let keys = r.expect(5, "header map")?;
        if keys != HEADER_KEYS && keys != HEADER_KEYS_WITH_RECEIPT {
            return Err("header must have exactly keys 0-6, or 0-7".into());
        }
        let v = expect_key(&mut r, 0)?.uint("version")?;
        if v != BUNDLE_VERSION {
            return Err(format!("unsupported bundle version {v}"));
        }
        let device = expect_key(&mut r, 1)?.text("device")?.to_owned();
        let from_seq = expect_key(&mut r, 2)?.uint("from_seq")?;
        let count = expect_key(&mut r, 3)?.uint("count")?;
        let head = <[u8; 32]>::try_from(expect_key(&mut r, 4)?.bytes("head")?)
            .map_err(|_| "head must be 32 bytes".to_owned())?;
        let registry = expect_key(&mut r, 5)?.bytes("registry")?.to_vec();
        let ak_public = expect_key(&mut r, 6)?.bytes("ak_public")?.to_vec();
        let receipt = if keys == HEADER_KEYS_WITH_RECEIPT {
            Some(expect_key(&mut r, 7)?.bytes("receipt")?.to_vec())
        } else {
            None
        };
        let mut records = Vec::new();
        while r.at < bytes.len() {
            records.push(r.bytes("record")?.to_vec());
        }
        if records.len() as u64 != count {
            return Err(format!(
                "header says {count} records, bundle holds {}",
                records.len()
            ));
        }
        Ok(Bundle {
            device,
            from_seq,
            head,
            registry,
            ak_public,
            receipt,
            records,
        })
    }
}

fn expect_key<'r, 'a>(r: &'r mut Reader<'a>, key: u64) -> Result<&'r mut Reader<'a>, String> {
    if r.uint("header key")? != key {
        return Err(format!("header key {key} expected (ascending, each once)"));
    }
    Ok(r)
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
) -> Result<Vec<u8>, AgentError> {
    let record = RegistryRecord::open(registry, keys, &RingCrypto)
        .map_err(|e| AgentError::Bundle(format!("registry record does not verify: {e}")))?;
    if record.sub != *device {
        return Err(AgentError::Bundle(format!(
            "registry record is for {}, not {device}",
            record.sub
        )));
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
) -> Result<(Bundle, Exported), AgentError> {
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
        .ok_or_else(|| AgentError::Bundle("no lineage records on disk".into()))?;
    if let Some(from) = from
        && first != from
    {
        return Err(AgentError::Bundle(format!(
            "records from seq {from} are not on disk (oldest is {first}; older ones were acknowledged and pruned)"
        )));
    }
    let crypto = RingCrypto;
    let mut verifier: Option<ChainVerifier> = None;
    let mut last_checkpoint = None;
    let mut checkpoints = 0usize;
    for (index, frame) in frames.iter().enumerate() {
        let record = Record::decode(&frame.payload).map_err(|e| {
            AgentError::Bundle(format!("record {} does not decode: {e}", frame.seq))
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
            .map_err(|e| AgentError::Bundle(format!("local lineage is broken: {e}")))?;
        if let Body::Checkpoint(_) = record.body {
            last_checkpoint = Some(index);
            checkpoints += 1;
        }
    }
    let Some(last) = last_checkpoint else {
        return Err(AgentError::Bundle(
            "no checkpoint in the log yet (is the agent running? it checkpoints on request)".into(),
        ));
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
            return Err(AgentError::Bundle(format!(
                "the collector acknowledged records through {seq}, after the last checkpoint ({last_seq}); start the agent so it checkpoints, then export"
            )));
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
pub fn write(out: &Path, bundle: &Bundle) -> Result<usize, AgentError> {
    let bytes = bundle.encode();
    mctc_service::files::write_atomic(out, &bytes, 0o644)?;
    Ok(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bundle {
        Bundle {
            device: "d1".into(),
            from_seq: 300,
            head: [7; 32],
            registry: vec![0xd2; 40],
            ak_public: vec![1; 90],
            receipt: None,
            records: vec![vec![0xa8; 10], vec![0xa9; 300]],
        }
    }

    #[test]
    fn a_receipt_is_header_key_7() {
        let bundle = Bundle {
            receipt: Some(vec![0xd2; 120]),
            ..sample()
        };
        let bytes = bundle.encode();
        assert_eq!(bytes[0], 0xa8, "map of 8");
        assert_eq!(Bundle::parse(&bytes).unwrap(), bundle);
    }

    #[test]
    fn bundles_round_trip_and_start_as_specified() {
        let bundle = sample();
        let bytes = bundle.encode();
        // map(7), 0: 1, 1: "d1", 2: 300
        assert_eq!(
            &bytes[..11],
            &[
                0xa7, 0x00, 0x01, 0x01, 0x62, b'd', b'1', 0x02, 0x19, 0x01, 0x2c
            ]
        );
        assert_eq!(Bundle::parse(&bytes).unwrap(), bundle);
    }

    #[test]
    fn damaged_structure_is_rejected() {
        let bytes = sample().encode();
        for cut in [1, 5, 20, bytes.len() - 1] {
            assert!(Bundle::parse(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut extra = bytes.clone();
        extra.extend_from_slice(&[0x41, 0x00]);
        assert!(Bundle::parse(&extra).unwrap_err().contains("records"));
        let mut version = bytes.clone();
        version[2] = 0x02;
        assert!(Bundle::parse(&version).unwrap_err().contains("version"));
        let mut long_form = bytes;
        // from_seq 300 re-encoded with a 4-byte argument is non-canonical.
        long_form.splice(8..11, [0x1a, 0, 0, 0x01, 0x2c]);
        assert!(
            Bundle::parse(&long_form)
                .unwrap_err()
                .contains("non-canonical")
        );
    }
}

//! The lineage bundle format, as the agent's `lineage export` writes it
//! (specified in `agent/README.md`, "Bundle format"; restated in
//! `collector/README.md`): a CBOR sequence (RFC 8742) of a header map and
//! `count` byte strings, one per record.
//!
//! ```text
//! bundle = header, count * record
//! header = {0: 1 (v), 1: device (tstr), 2: from_seq (uint), 3: count (uint, ≥ 1),
//!           4: head (bstr 32), 5: registry (bstr, COSE_Sign1), 6: ak_public (bstr),
//!           ? 7: receipt (bstr, COSE_Sign1 by a collector receipt key)}
//! record = bstr            ; one record's exact encoding, ≤ 2048 bytes, ascending seq
//! ```
//!
//! The reader below accepts exactly that and only in CBOR's core
//! deterministic encoding (shortest integer and length forms, definite
//! lengths, keys in order, no tags, nothing after the last record), so one
//! bundle has one encoding. It borrows from the input and checks every
//! length against the bytes left before taking it.

use mctc_shim::limits::{MAX_AK_PUBLIC_LEN, MAX_DEVICE_ID_LEN, MAX_RECORD_LEN, MAX_SIGNED_LEN};

/// The bundle format version this build reads.
pub const BUNDLE_VERSION: u64 = 1;
/// The largest bundle file read (1 GiB: about five million typical records).
pub const MAX_BUNDLE_LEN: u64 = 1 << 30;

const MAJOR_UINT: u8 = 0;
const MAJOR_BSTR: u8 = 2;
const MAJOR_TSTR: u8 = 3;
const MAJOR_MAP: u8 = 5;

/// Why a bundle does not parse, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("byte {offset}: {problem}")]
pub struct BundleError {
    /// Byte offset in the bundle.
    pub offset: usize,
    /// What is wrong there.
    pub problem: String,
}

/// The bundle's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Format version.
    pub version: u64,
    /// The device (validated by the verifier).
    pub device: &'a str,
    /// The seq of the first record.
    pub from_seq: u64,
    /// How many records follow.
    pub count: u64,
    /// The hash of the last record (what the chain must end at).
    pub head: [u8; 32],
    /// The authority's signed registry record for the device.
    pub registry: &'a [u8],
    /// The AK's `TPM2B_PUBLIC` (must equal the registry record's).
    pub ak_public: &'a [u8],
    /// Key 7, optional: the latest receipt (COSE_Sign1 by a collector's
    /// receipt key) the exporter held.
    pub receipt: Option<&'a [u8]>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, problem: impl Into<String>) -> BundleError {
        BundleError {
            offset: self.pos,
            problem: problem.into(),
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], BundleError> {
        let n = usize::try_from(n).map_err(|_| self.error("length out of range"))?;
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| self.error(format!("truncated: {n} bytes announced")))?;
        let out = self
            .bytes
            .get(self.pos..end)
            .ok_or_else(|| self.error("truncated"))?;
        self.pos = end;
        Ok(out)
    }

    /// A head: major type and argument, in its shortest form.
    fn head(&mut self) -> Result<(u8, u64), BundleError> {
        let start = self.pos;
        let initial = *self
            .take(1)?
            .first()
            .ok_or_else(|| self.error("truncated"))?;
        let major = initial >> 5;
        let info = initial & 0x1f;
        let (arg, min) = match info {
            0..=23 => (u64::from(info), 0),
            24 => (u64::from(u8::from_be_bytes(self.be::<1>()?)), 24),
            25 => (u64::from(u16::from_be_bytes(self.be::<2>()?)), 0x100),
            26 => (u64::from(u32::from_be_bytes(self.be::<4>()?)), 0x1_0000),
            27 => (u64::from_be_bytes(self.be::<8>()?), 0x1_0000_0000),
            _ => {
                self.pos = start;
                return Err(self.error("indefinite length or reserved encoding"));
            }
        };
        if arg < min {
            self.pos = start;
            return Err(self.error("integer or length not in its shortest form"));
        }
        Ok((major, arg))
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], BundleError> {
        let bytes = self.take(N as u64)?;
        <[u8; N]>::try_from(bytes).map_err(|_| self.error("truncated"))
    }

    fn expect(&mut self, want: u8, what: &str) -> Result<u64, BundleError> {
        let start = self.pos;
        let (major, arg) = self.head()?;
        if major != want {
            self.pos = start;
            return Err(self.error(format!("{what}: wrong CBOR type")));
        }
        Ok(arg)
    }

    fn uint(&mut self, what: &str) -> Result<u64, BundleError> {
        self.expect(MAJOR_UINT, what)
    }

    fn bstr(&mut self, what: &str, max: usize) -> Result<&'a [u8], BundleError> {
        let start = self.pos;
        let len = self.expect(MAJOR_BSTR, what)?;
        if len > max as u64 {
            self.pos = start;
            return Err(self.error(format!("{what}: {len} bytes, at most {max}")));
        }
        self.take(len)
    }

    fn tstr(&mut self, what: &str, max: usize) -> Result<&'a str, BundleError> {
        let start = self.pos;
        let len = self.expect(MAJOR_TSTR, what)?;
        if len > max as u64 {
            self.pos = start;
            return Err(self.error(format!("{what}: {len} bytes, at most {max}")));
        }
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| BundleError {
            offset: start,
            problem: format!("{what}: not UTF-8"),
        })
    }

    /// A map of `min ..= max` entries whose keys are `0, 1, …` in order;
    /// returns the number of entries after reading the map head.
    fn map(&mut self, what: &str, min: u64, max: u64) -> Result<u64, BundleError> {
        let start = self.pos;
        let len = self.expect(MAJOR_MAP, what)?;
        if !(min..=max).contains(&len) {
            self.pos = start;
            return Err(self.error(format!("{what}: {len} entries, expected {min} to {max}")));
        }
        Ok(len)
    }

    fn key(&mut self, what: &str, key: u64) -> Result<(), BundleError> {
        let start = self.pos;
        let found = self.uint(what)?;
        if found != key {
            self.pos = start;
            return Err(self.error(format!("{what}: key {found} where key {key} belongs")));
        }
        Ok(())
    }
}

/// Reads a bundle record by record.
pub struct BundleReader<'a> {
    reader: Reader<'a>,
    remaining: u64,
}

impl std::fmt::Debug for BundleReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleReader")
            .field("pos", &self.reader.pos)
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl<'a> BundleReader<'a> {
    /// Reads the header; the records follow with
    /// [`BundleReader::next_record`].
    pub fn open(bytes: &'a [u8]) -> Result<(Header<'a>, Self), BundleError> {
        let mut r = Reader { bytes, pos: 0 };
        let entries = r.map("header", 7, 8)?;
        r.key("header", 0)?;
        let version = r.uint("header v")?;
        r.key("header", 1)?;
        let device = r.tstr("header device", MAX_DEVICE_ID_LEN)?;
        r.key("header", 2)?;
        let from_seq = r.uint("header from_seq")?;
        r.key("header", 3)?;
        let count_at = r.pos;
        let count = r.uint("header count")?;
        if count == 0 {
            return Err(BundleError {
                offset: count_at,
                problem: "header count: a bundle holds at least one record".to_owned(),
            });
        }
        r.key("header", 4)?;
        let head_at = r.pos;
        let head = <[u8; 32]>::try_from(r.bstr("header head", 32)?).map_err(|_| BundleError {
            offset: head_at,
            problem: "header head: not 32 bytes".to_owned(),
        })?;
        r.key("header", 5)?;
        let registry = r.bstr("header registry", MAX_SIGNED_LEN)?;
        r.key("header", 6)?;
        let ak_public = r.bstr("header ak_public", MAX_AK_PUBLIC_LEN)?;
        let receipt = if entries == 8 {
            r.key("header", 7)?;
            Some(r.bstr("header receipt", MAX_SIGNED_LEN)?)
        } else {
            None
        };
        Ok((
            Header {
                version,
                device,
                from_seq,
                count,
                head,
                registry,
                ak_public,
                receipt,
            },
            Self {
                reader: r,
                remaining: count,
            },
        ))
    }

    /// The byte offset of the next record.
    pub fn offset(&self) -> usize {
        self.reader.pos
    }

    /// The next record's encoding without consuming it (`None` at the end
    /// or where the next record would not parse).
    pub fn peek_record(&self) -> Option<&'a [u8]> {
        if self.remaining == 0 {
            return None;
        }
        let mut r = Reader {
            bytes: self.reader.bytes,
            pos: self.reader.pos,
        };
        r.bstr("record", MAX_RECORD_LEN).ok()
    }

    /// The next record's encoding; `None` once `count` records were read
    /// and the input ends there.
    pub fn next_record(&mut self) -> Option<Result<&'a [u8], BundleError>> {
        if self.remaining == 0 {
            return (!self.reader.at_end()).then(|| {
                Err(self
                    .reader
                    .error("data after the last record the header counts"))
            });
        }
        if self.reader.at_end() {
            let missing = self.remaining;
            self.remaining = 0;
            return Some(Err(self.reader.error(format!(
                "truncated: {missing} of the counted records missing"
            ))));
        }
        self.remaining -= 1;
        Some(self.reader.bstr("record", MAX_RECORD_LEN))
    }
}

/// Everything a bundle holds, to write one (`mctc-collector export`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleParts<'a> {
    /// The device.
    pub device: &'a str,
    /// The seq of the first record.
    pub from_seq: u64,
    /// The hash of the last record.
    pub head: [u8; 32],
    /// The signed registry record.
    pub registry: &'a [u8],
    /// The AK's `TPM2B_PUBLIC`.
    pub ak_public: &'a [u8],
    /// The receipt (header key 7), if any.
    pub receipt: Option<&'a [u8]>,
}

fn write_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    // Shortest form (core deterministic encoding).
    match arg {
        0..=23 => out.push(m | arg as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, arg as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(arg as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(arg as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&arg.to_be_bytes());
        }
    }
}

fn write_bytes(out: &mut Vec<u8>, major: u8, bytes: &[u8]) {
    write_head(out, major, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Encodes a bundle in the one encoding [`BundleReader`] accepts.
pub fn encode_bundle(parts: &BundleParts<'_>, records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.iter().map(|r| r.len() + 3).sum::<usize>() + 4096);
    write_head(
        &mut out,
        MAJOR_MAP,
        if parts.receipt.is_some() { 8 } else { 7 },
    );
    write_head(&mut out, MAJOR_UINT, 0);
    write_head(&mut out, MAJOR_UINT, BUNDLE_VERSION);
    write_head(&mut out, MAJOR_UINT, 1);
    write_bytes(&mut out, MAJOR_TSTR, parts.device.as_bytes());
    write_head(&mut out, MAJOR_UINT, 2);
    write_head(&mut out, MAJOR_UINT, parts.from_seq);
    write_head(&mut out, MAJOR_UINT, 3);
    write_head(&mut out, MAJOR_UINT, records.len() as u64);
    write_head(&mut out, MAJOR_UINT, 4);
    write_bytes(&mut out, MAJOR_BSTR, &parts.head);
    write_head(&mut out, MAJOR_UINT, 5);
    write_bytes(&mut out, MAJOR_BSTR, parts.registry);
    write_head(&mut out, MAJOR_UINT, 6);
    write_bytes(&mut out, MAJOR_BSTR, parts.ak_public);
    if let Some(receipt) = parts.receipt {
        write_head(&mut out, MAJOR_UINT, 7);
        write_bytes(&mut out, MAJOR_BSTR, receipt);
    }
    for record in records {
        write_bytes(&mut out, MAJOR_BSTR, record);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header with `count` records, a 3-byte registry, a 2-byte AK public.
    fn header(from_seq: u8, count: u8) -> Vec<u8> {
        let mut out = vec![
            0xa7, 0x00, 0x01, 0x01, 0x62, b'd', b'1', 0x02, from_seq, 0x03, count,
        ];
        out.extend_from_slice(&[0x04, 0x58, 0x20]);
        out.extend_from_slice(&[7; 32]);
        out.extend_from_slice(&[0x05, 0x43, 1, 2, 3, 0x06, 0x42, 9, 9]);
        out
    }

    #[test]
    fn reads_the_header_and_exactly_count_records() {
        let mut b = header(5, 2);
        b.extend_from_slice(&[0x42, 0xaa, 0xbb, 0x41, 0xcc]);
        let (h, mut records) = BundleReader::open(&b).unwrap();
        assert_eq!(
            (
                h.device,
                h.from_seq,
                h.count,
                h.head,
                h.registry,
                h.ak_public
            ),
            ("d1", 5, 2, [7; 32], &[1u8, 2, 3][..], &[9u8, 9][..])
        );
        assert_eq!(records.next_record(), Some(Ok(&[0xaa, 0xbb][..])));
        assert_eq!(records.next_record(), Some(Ok(&[0xcc][..])));
        assert_eq!(records.next_record(), None);
    }

    #[test]
    fn the_encoder_writes_what_the_reader_reads() {
        let records = vec![vec![0xaa; 30], vec![0xbb; 300]];
        for receipt in [None, Some(&[5u8; 100][..])] {
            let parts = BundleParts {
                device: "d1",
                from_seq: 70_000,
                head: [7; 32],
                registry: &[1, 2, 3],
                ak_public: &[9; 24],
                receipt,
            };
            let bytes = encode_bundle(&parts, &records);
            let (h, mut r) = BundleReader::open(&bytes).unwrap();
            assert_eq!((h.from_seq, h.count, h.receipt), (70_000, 2, receipt));
            assert_eq!(r.peek_record(), Some(&records[0][..]));
            assert_eq!(r.next_record(), Some(Ok(&records[0][..])));
            assert_eq!(r.next_record(), Some(Ok(&records[1][..])));
            assert_eq!(r.next_record(), None);
        }
    }

    #[test]
    fn fewer_or_more_records_than_counted_are_errors() {
        let mut b = header(0, 2);
        b.extend_from_slice(&[0x41, 0xcc]);
        let (_, mut records) = BundleReader::open(&b).unwrap();
        assert!(matches!(records.next_record(), Some(Ok(_))));
        assert!(matches!(records.next_record(), Some(Err(_))));
        assert_eq!(records.next_record(), None);

        let mut b = header(0, 1);
        b.extend_from_slice(&[0x41, 0xcc, 0x41, 0xdd]);
        let (_, mut records) = BundleReader::open(&b).unwrap();
        assert!(matches!(records.next_record(), Some(Ok(_))));
        assert!(matches!(records.next_record(), Some(Err(_))));

        assert!(BundleReader::open(&header(0, 0)).is_err(), "count 0");
    }

    #[test]
    fn rejects_non_shortest_forms_indefinite_lengths_and_key_disorder() {
        // from_seq 0 written as 0x18 0x00.
        let mut b = header(0, 1);
        b.splice(8..9, [0x18, 0x00]);
        assert!(BundleReader::open(&b).is_err());
        // An indefinite-length byte string record.
        let mut b = header(0, 1);
        b.extend_from_slice(&[0x5f, 0x41, 0x00, 0xff]);
        let (_, mut records) = BundleReader::open(&b).unwrap();
        assert!(matches!(records.next_record(), Some(Err(_))));
        // Keys 0 and 1 swapped.
        let mut b = header(0, 1);
        b.swap(1, 3);
        assert!(BundleReader::open(&b).is_err());
        // A head that is not 32 bytes.
        let mut b = header(0, 1);
        b[13] = 0x1f;
        assert!(BundleReader::open(&b).is_err());
    }

    #[test]
    fn oversized_records_and_impossible_lengths_are_errors_not_allocations() {
        let mut b = header(0, 1);
        b.extend_from_slice(&[0x59, 0x08, 0x01]);
        b.extend_from_slice(&[0; 2049]);
        let (_, mut records) = BundleReader::open(&b).unwrap();
        assert!(matches!(records.next_record(), Some(Err(_))));
        let mut b = header(0, 1);
        b.extend_from_slice(&[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let (_, mut records) = BundleReader::open(&b).unwrap();
        assert!(matches!(records.next_record(), Some(Err(_))));
    }
}

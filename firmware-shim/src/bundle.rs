//! The lineage bundle: the one codec of the file that lets anyone holding the
//! authority's public key verify a device's records offline. The agent's
//! `lineage export` and the collector's `export` write it with
//! [`encode_bundle_to`] (or [`Bundle::encode`]), the collector's `verify`
//! reads it with [`BundleReader`]; `agent/README.md` ("Bundle format") is
//! the specification.
//!
//! ```text
//! bundle = header, count * record          ; a CBOR sequence (RFC 8742)
//! header = {0: 1 (v), 1: device (tstr), 2: from_seq (uint), 3: count (uint, ≥ 1),
//!           4: head (bstr 32), 5: registry (bstr, COSE_Sign1), 6: ak_public (bstr),
//!           ? 7: receipt (bstr, COSE_Sign1 by a collector receipt key)}
//! record = bstr            ; one record's exact encoding, ≤ 2048 bytes, ascending seq
//! ```
//!
//! The reader accepts exactly that and only in CBOR's core deterministic
//! encoding (shortest integer and length forms, definite lengths, keys in
//! order, no tags, nothing after the last record), so one bundle has one
//! encoding. It borrows from the input, checks every length against the
//! bytes left before taking it and never allocates. The writer needs no
//! allocation either (it hands bytes to a sink); the owned [`Bundle`] and
//! [`encode_bundle`] come with the `alloc` feature.
//!
//! This codec is written by hand rather than through [`crate::codec`]: a
//! bundle is a sequence of items, not one serde value, and the reader must
//! stream records of a file of up to [`MAX_BUNDLE_LEN`] bytes without a
//! buffer per record.

use core::fmt;

use crate::limits::{MAX_AK_PUBLIC_LEN, MAX_DEVICE_ID_LEN, MAX_RECORD_LEN, MAX_SIGNED_LEN};

/// The bundle format version this build reads and writes.
pub const BUNDLE_VERSION: u64 = 1;
/// The largest bundle file a reader should load (1 GiB: about five million
/// typical records).
pub const MAX_BUNDLE_LEN: u64 = 1 << 30;

const MAJOR_UINT: u8 = 0;
const MAJOR_BSTR: u8 = 2;
const MAJOR_TSTR: u8 = 3;
const MAJOR_MAP: u8 = 5;

/// Header entries without and with the optional receipt (key 7).
const HEADER_KEYS: u64 = 7;
const HEADER_KEYS_WITH_RECEIPT: u64 = 8;

/// A part of the bundle, for error reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleField {
    /// The header map itself.
    Header,
    /// Header key 0.
    Version,
    /// Header key 1.
    Device,
    /// Header key 2.
    FromSeq,
    /// Header key 3.
    Count,
    /// Header key 4.
    Head,
    /// Header key 5.
    Registry,
    /// Header key 6.
    AkPublic,
    /// Header key 7.
    Receipt,
    /// A record after the header.
    Record,
}

impl BundleField {
    /// The field's name as in the format's specification.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Version => "header v",
            Self::Device => "header device",
            Self::FromSeq => "header from_seq",
            Self::Count => "header count",
            Self::Head => "header head",
            Self::Registry => "header registry",
            Self::AkPublic => "header ak_public",
            Self::Receipt => "header receipt",
            Self::Record => "record",
        }
    }
}

impl fmt::Display for BundleField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What is wrong at a place in a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleProblem {
    /// The input ends before the item it announces (`needed` bytes, when
    /// the item's length was known).
    Truncated {
        /// Bytes the item announced.
        needed: u64,
    },
    /// An indefinite length or a reserved additional-information value.
    Indefinite,
    /// An integer or length not in its shortest form.
    NotShortest,
    /// Another CBOR major type than the field's.
    WrongType(BundleField),
    /// Longer than the field allows.
    TooLong {
        /// The field.
        field: BundleField,
        /// Its announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A text field that is not UTF-8.
    NotUtf8(BundleField),
    /// The header has another number of entries than 7 or 8.
    HeaderEntries(u64),
    /// A header key out of place (keys are 0, 1, … in ascending order).
    WrongKey {
        /// The key found.
        found: u64,
        /// The key that belongs there.
        expected: u64,
    },
    /// `count` is 0: a bundle holds at least one record.
    NoRecords,
    /// `head` is not 32 bytes.
    HeadLength,
    /// Data after the last record the header counts.
    TrailingData,
    /// The input ends with records of the header's count missing.
    MissingRecords(u64),
    /// A version this build does not read ([`Bundle::parse`] only; the
    /// streaming reader reports the version and leaves the decision to the
    /// verifier).
    UnsupportedVersion(u64),
}

impl fmt::Display for BundleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { needed: 0 } => f.write_str("truncated"),
            Self::Truncated { needed } => write!(f, "truncated: {needed} bytes announced"),
            Self::Indefinite => f.write_str("indefinite length or reserved encoding"),
            Self::NotShortest => f.write_str("integer or length not in its shortest form"),
            Self::WrongType(field) => write!(f, "{field}: wrong CBOR type"),
            Self::TooLong { field, len, max } => {
                write!(f, "{field}: {len} bytes, at most {max}")
            }
            Self::NotUtf8(field) => write!(f, "{field}: not UTF-8"),
            Self::HeaderEntries(n) => write!(
                f,
                "header: {n} entries, expected {HEADER_KEYS} to {HEADER_KEYS_WITH_RECEIPT}"
            ),
            Self::WrongKey { found, expected } => {
                write!(f, "header: key {found} where key {expected} belongs")
            }
            Self::NoRecords => f.write_str("header count: a bundle holds at least one record"),
            Self::HeadLength => f.write_str("header head: not 32 bytes"),
            Self::TrailingData => f.write_str("data after the last record the header counts"),
            Self::MissingRecords(n) => {
                write!(f, "truncated: {n} of the counted records missing")
            }
            Self::UnsupportedVersion(v) => {
                write!(
                    f,
                    "unsupported bundle version {v} (this build reads {BUNDLE_VERSION})"
                )
            }
        }
    }
}

/// Why a bundle does not parse, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleError {
    /// Byte offset in the bundle.
    pub offset: usize,
    /// What is wrong there.
    pub problem: BundleProblem,
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "byte {}: {}", self.offset, self.problem)
    }
}

impl core::error::Error for BundleError {}

/// The bundle's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Format version (the verifier decides whether it reads it).
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

#[derive(Clone, Copy)]
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, problem: BundleProblem) -> BundleError {
        BundleError {
            offset: self.pos,
            problem,
        }
    }

    fn error_at(offset: usize, problem: BundleProblem) -> BundleError {
        BundleError { offset, problem }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], BundleError> {
        let truncated = BundleProblem::Truncated { needed: n };
        let out = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .and_then(|end| self.bytes.get(self.pos..end))
            .ok_or_else(|| self.error(truncated))?;
        self.pos += out.len();
        Ok(out)
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], BundleError> {
        let at = self.pos;
        let bytes = self.take(N as u64)?;
        <[u8; N]>::try_from(bytes)
            .map_err(|_| Self::error_at(at, BundleProblem::Truncated { needed: N as u64 }))
    }

    /// A head: major type and argument, in its shortest form. On error
    /// the position is where the head starts.
    fn head(&mut self) -> Result<(u8, u64), BundleError> {
        let start = self.pos;
        let result = self.head_inner();
        if result.is_err() {
            self.pos = start;
        }
        result
    }

    fn head_inner(&mut self) -> Result<(u8, u64), BundleError> {
        let start = self.pos;
        let [initial] = self.be::<1>()?;
        let major = initial >> 5;
        let info = initial & 0x1f;
        let (arg, min) = match info {
            0..=23 => (u64::from(info), 0),
            24 => (u64::from(u8::from_be_bytes(self.be::<1>()?)), 24),
            25 => (u64::from(u16::from_be_bytes(self.be::<2>()?)), 0x100),
            26 => (u64::from(u32::from_be_bytes(self.be::<4>()?)), 0x1_0000),
            27 => (u64::from_be_bytes(self.be::<8>()?), 0x1_0000_0000),
            _ => return Err(Self::error_at(start, BundleProblem::Indefinite)),
        };
        if arg < min {
            return Err(Self::error_at(start, BundleProblem::NotShortest));
        }
        Ok((major, arg))
    }

    fn expect(&mut self, want: u8, field: BundleField) -> Result<u64, BundleError> {
        let start = self.pos;
        let (major, arg) = self.head()?;
        if major != want {
            self.pos = start;
            return Err(self.error(BundleProblem::WrongType(field)));
        }
        Ok(arg)
    }

    fn uint(&mut self, field: BundleField) -> Result<u64, BundleError> {
        self.expect(MAJOR_UINT, field)
    }

    fn bstr(&mut self, field: BundleField, max: usize) -> Result<&'a [u8], BundleError> {
        let start = self.pos;
        let len = self.expect(MAJOR_BSTR, field)?;
        if len > max as u64 {
            self.pos = start;
            return Err(self.error(BundleProblem::TooLong { field, len, max }));
        }
        self.take(len)
    }

    fn tstr(&mut self, field: BundleField, max: usize) -> Result<&'a str, BundleError> {
        let start = self.pos;
        let len = self.expect(MAJOR_TSTR, field)?;
        if len > max as u64 {
            self.pos = start;
            return Err(self.error(BundleProblem::TooLong { field, len, max }));
        }
        let bytes = self.take(len)?;
        core::str::from_utf8(bytes)
            .map_err(|_| Self::error_at(start, BundleProblem::NotUtf8(field)))
    }

    /// The header map's head: 7 or 8 entries.
    fn header_map(&mut self) -> Result<u64, BundleError> {
        let start = self.pos;
        let len = self.expect(MAJOR_MAP, BundleField::Header)?;
        if !(HEADER_KEYS..=HEADER_KEYS_WITH_RECEIPT).contains(&len) {
            self.pos = start;
            return Err(self.error(BundleProblem::HeaderEntries(len)));
        }
        Ok(len)
    }

    fn key(&mut self, expected: u64) -> Result<(), BundleError> {
        let start = self.pos;
        let found = self.uint(BundleField::Header)?;
        if found != expected {
            self.pos = start;
            return Err(self.error(BundleProblem::WrongKey { found, expected }));
        }
        Ok(())
    }
}

/// Reads a bundle record by record.
pub struct BundleReader<'a> {
    reader: Reader<'a>,
    remaining: u64,
}

impl fmt::Debug for BundleReader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        use BundleField as F;
        let mut r = Reader { bytes, pos: 0 };
        let entries = r.header_map()?;
        r.key(0)?;
        let version = r.uint(F::Version)?;
        r.key(1)?;
        let device = r.tstr(F::Device, MAX_DEVICE_ID_LEN)?;
        r.key(2)?;
        let from_seq = r.uint(F::FromSeq)?;
        r.key(3)?;
        let count_at = r.pos;
        let count = r.uint(F::Count)?;
        if count == 0 {
            return Err(Reader::error_at(count_at, BundleProblem::NoRecords));
        }
        r.key(4)?;
        let head_at = r.pos;
        let head = <[u8; 32]>::try_from(r.bstr(F::Head, 32)?)
            .map_err(|_| Reader::error_at(head_at, BundleProblem::HeadLength))?;
        r.key(5)?;
        let registry = r.bstr(F::Registry, MAX_SIGNED_LEN)?;
        r.key(6)?;
        let ak_public = r.bstr(F::AkPublic, MAX_AK_PUBLIC_LEN)?;
        let receipt = if entries == HEADER_KEYS_WITH_RECEIPT {
            r.key(7)?;
            Some(r.bstr(F::Receipt, MAX_SIGNED_LEN)?)
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
        let mut r = self.reader;
        r.bstr(BundleField::Record, MAX_RECORD_LEN).ok()
    }

    /// The next record's encoding; `None` once `count` records were read
    /// and the input ends there. After an error, the next call returns
    /// `None` only if the error was the last word.
    pub fn next_record(&mut self) -> Option<Result<&'a [u8], BundleError>> {
        if self.remaining == 0 {
            return (!self.reader.at_end())
                .then(|| Err(self.reader.error(BundleProblem::TrailingData)));
        }
        if self.reader.at_end() {
            let missing = self.remaining;
            self.remaining = 0;
            return Some(Err(self
                .reader
                .error(BundleProblem::MissingRecords(missing))));
        }
        self.remaining -= 1;
        Some(self.reader.bstr(BundleField::Record, MAX_RECORD_LEN))
    }
}

/// Everything a bundle holds besides its records, to write one.
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

/// Writes a head in its shortest form (core deterministic encoding).
fn write_head(out: &mut impl FnMut(&[u8]), major: u8, arg: u64) {
    let m = major << 5;
    match arg {
        0..=23 => out(&[m | arg as u8]),
        24..=0xff => out(&[m | 24, arg as u8]),
        0x100..=0xffff => {
            out(&[m | 25]);
            out(&(arg as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out(&[m | 26]);
            out(&(arg as u32).to_be_bytes());
        }
        _ => {
            out(&[m | 27]);
            out(&arg.to_be_bytes());
        }
    }
}

fn write_bytes(out: &mut impl FnMut(&[u8]), major: u8, bytes: &[u8]) {
    write_head(out, major, bytes.len() as u64);
    out(bytes);
}

/// Encodes a bundle of `count` records, the one encoding [`BundleReader`]
/// accepts, handing its bytes to `out` in order. `records` must yield
/// exactly `count` encodings.
pub fn encode_bundle_to<'r>(
    parts: &BundleParts<'_>,
    count: u64,
    records: impl IntoIterator<Item = &'r [u8]>,
    mut out: impl FnMut(&[u8]),
) {
    let out = &mut out;
    let entries = if parts.receipt.is_some() {
        HEADER_KEYS_WITH_RECEIPT
    } else {
        HEADER_KEYS
    };
    write_head(out, MAJOR_MAP, entries);
    write_head(out, MAJOR_UINT, 0);
    write_head(out, MAJOR_UINT, BUNDLE_VERSION);
    write_head(out, MAJOR_UINT, 1);
    write_bytes(out, MAJOR_TSTR, parts.device.as_bytes());
    write_head(out, MAJOR_UINT, 2);
    write_head(out, MAJOR_UINT, parts.from_seq);
    write_head(out, MAJOR_UINT, 3);
    write_head(out, MAJOR_UINT, count);
    write_head(out, MAJOR_UINT, 4);
    write_bytes(out, MAJOR_BSTR, &parts.head);
    write_head(out, MAJOR_UINT, 5);
    write_bytes(out, MAJOR_BSTR, parts.registry);
    write_head(out, MAJOR_UINT, 6);
    write_bytes(out, MAJOR_BSTR, parts.ak_public);
    if let Some(receipt) = parts.receipt {
        write_head(out, MAJOR_UINT, 7);
        write_bytes(out, MAJOR_BSTR, receipt);
    }
    for record in records {
        write_bytes(out, MAJOR_BSTR, record);
    }
}

#[cfg(feature = "alloc")]
pub use owned::{Bundle, encode_bundle};

#[cfg(feature = "alloc")]
mod owned {
    use alloc::borrow::ToOwned;
    use alloc::string::String;
    use alloc::vec::Vec;

    use super::{
        BUNDLE_VERSION, BundleError, BundleParts, BundleProblem, BundleReader, encode_bundle_to,
    };

    /// Encodes a bundle into a new buffer.
    pub fn encode_bundle<R: AsRef<[u8]>>(parts: &BundleParts<'_>, records: &[R]) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            records.iter().map(|r| r.as_ref().len() + 3).sum::<usize>()
                + 64
                + parts.device.len()
                + parts.registry.len()
                + parts.ak_public.len()
                + parts.receipt.map_or(0, <[u8]>::len),
        );
        encode_bundle_to(
            parts,
            records.len() as u64,
            records.iter().map(AsRef::as_ref),
            |bytes| out.extend_from_slice(bytes),
        );
        out
    }

    /// A whole bundle held in memory (the exporter's view; a verifier
    /// streams with [`BundleReader`] instead).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Bundle {
        /// The device.
        pub device: String,
        /// The seq of the first record.
        pub from_seq: u64,
        /// The hash of the last record.
        pub head: [u8; 32],
        /// The authority's signed registry record (COSE_Sign1, as received).
        pub registry: Vec<u8>,
        /// The AK's `TPM2B_PUBLIC`.
        pub ak_public: Vec<u8>,
        /// The latest collector receipt (header key 7).
        pub receipt: Option<Vec<u8>>,
        /// Each record's exact encoding, ascending seq.
        pub records: Vec<Vec<u8>>,
    }

    impl Bundle {
        /// The parts besides the records.
        pub fn parts(&self) -> BundleParts<'_> {
            BundleParts {
                device: &self.device,
                from_seq: self.from_seq,
                head: self.head,
                registry: &self.registry,
                ak_public: &self.ak_public,
                receipt: self.receipt.as_deref(),
            }
        }

        /// The bundle's bytes.
        pub fn encode(&self) -> Vec<u8> {
            encode_bundle(&self.parts(), &self.records)
        }

        /// Parses the structure, strictly, of a version this build reads
        /// (nothing is verified here).
        pub fn parse(bytes: &[u8]) -> Result<Bundle, BundleError> {
            let (header, mut reader) = BundleReader::open(bytes)?;
            if header.version != BUNDLE_VERSION {
                return Err(BundleError {
                    offset: 2,
                    problem: BundleProblem::UnsupportedVersion(header.version),
                });
            }
            let mut records = Vec::new();
            while let Some(record) = reader.next_record() {
                records.push(record?.to_vec());
            }
            Ok(Bundle {
                device: header.device.to_owned(),
                from_seq: header.from_seq,
                head: header.head,
                registry: header.registry.to_vec(),
                ak_public: header.ak_public.to_vec(),
                receipt: header.receipt.map(<[u8]>::to_vec),
                records,
            })
        }
    }
}

#[cfg(all(test, feature = "alloc"))]
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

    #[expect(
        clippy::panic,
        reason = "test helper: an accepted input fails the test"
    )]
    fn problem<T: fmt::Debug>(result: Result<T, BundleError>) -> BundleProblem {
        match result {
            Ok(value) => panic!("accepted: {value:?}"),
            Err(e) => e.problem,
        }
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
    fn a_receipt_is_header_key_7() {
        let bundle = Bundle {
            receipt: Some(vec![0xd2; 120]),
            ..sample()
        };
        let bytes = bundle.encode();
        assert_eq!(bytes[0], 0xa8, "map of 8");
        assert_eq!(Bundle::parse(&bytes).unwrap(), bundle);
        let (h, _) = BundleReader::open(&bytes).unwrap();
        assert_eq!(h.receipt, Some(&[0xd2; 120][..]));
    }

    #[test]
    fn the_sink_encoder_and_the_owned_encoder_agree_at_every_width() {
        let records = vec![vec![0xaa; 30], vec![0xbb; 300]];
        for from_seq in [0, 23, 24, 255, 256, 70_000, 1 << 33] {
            for receipt in [None, Some(&[5u8; 100][..])] {
                let parts = BundleParts {
                    device: "d1",
                    from_seq,
                    head: [7; 32],
                    registry: &[1, 2, 3],
                    ak_public: &[9; 24],
                    receipt,
                };
                let bytes = encode_bundle(&parts, &records);
                let mut streamed = Vec::new();
                encode_bundle_to(&parts, 2, records.iter().map(Vec::as_slice), |b| {
                    streamed.extend_from_slice(b)
                });
                assert_eq!(streamed, bytes);
                let (h, mut r) = BundleReader::open(&bytes).unwrap();
                assert_eq!((h.from_seq, h.count, h.receipt), (from_seq, 2, receipt));
                assert_eq!(r.peek_record(), Some(&records[0][..]));
                assert_eq!(r.next_record(), Some(Ok(&records[0][..])));
                assert_eq!(r.next_record(), Some(Ok(&records[1][..])));
                assert_eq!(r.next_record(), None);
            }
        }
    }

    #[test]
    fn fewer_or_more_records_than_counted_are_errors() {
        let mut b = header(0, 2);
        b.extend_from_slice(&[0x41, 0xcc]);
        let (_, mut records) = BundleReader::open(&b).unwrap();
        assert!(matches!(records.next_record(), Some(Ok(_))));
        assert_eq!(
            records.next_record().unwrap().unwrap_err().problem,
            BundleProblem::MissingRecords(1)
        );
        assert_eq!(records.next_record(), None);
        assert_eq!(problem(Bundle::parse(&b)), BundleProblem::MissingRecords(1));

        let mut b = header(0, 1);
        b.extend_from_slice(&[0x41, 0xcc, 0x41, 0xdd]);
        let (_, mut records) = BundleReader::open(&b).unwrap();
        assert!(matches!(records.next_record(), Some(Ok(_))));
        assert_eq!(
            records.next_record().unwrap().unwrap_err().problem,
            BundleProblem::TrailingData
        );
        assert_eq!(problem(Bundle::parse(&b)), BundleProblem::TrailingData);

        assert_eq!(
            problem(BundleReader::open(&header(0, 0))),
            BundleProblem::NoRecords
        );
    }

    #[test]
    fn damaged_structure_is_rejected() {
        let bytes = sample().encode();
        for cut in [1, 5, 20, bytes.len() - 1] {
            assert!(Bundle::parse(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut version = bytes.clone();
        version[2] = 0x02;
        assert_eq!(
            problem(Bundle::parse(&version)),
            BundleProblem::UnsupportedVersion(2)
        );
        // The streaming reader leaves the version to its caller.
        assert_eq!(BundleReader::open(&version).unwrap().0.version, 2);
        let mut long_form = bytes;
        // from_seq 300 re-encoded with a 4-byte argument is non-canonical.
        long_form.splice(8..11, [0x1a, 0, 0, 0x01, 0x2c]);
        let e = BundleReader::open(&long_form).unwrap_err();
        assert_eq!((e.offset, e.problem), (8, BundleProblem::NotShortest));
    }

    #[test]
    fn rejects_non_shortest_forms_indefinite_lengths_and_key_disorder() {
        // from_seq 0 written as 0x18 0x00.
        let mut b = header(0, 1);
        b.splice(8..9, [0x18, 0x00]);
        assert_eq!(problem(BundleReader::open(&b)), BundleProblem::NotShortest);
        // An indefinite-length byte string record.
        let mut b = header(0, 1);
        b.extend_from_slice(&[0x5f, 0x41, 0x00, 0xff]);
        let (_, mut records) = BundleReader::open(&b).unwrap();
        assert_eq!(
            records.next_record().unwrap().unwrap_err().problem,
            BundleProblem::Indefinite
        );
        // Keys 0 and 1 swapped.
        let mut b = header(0, 1);
        b.swap(1, 3);
        assert_eq!(
            problem(BundleReader::open(&b)),
            BundleProblem::WrongKey {
                found: 1,
                expected: 0
            }
        );
        // A head that is not 32 bytes.
        let mut b = header(0, 1);
        b[13] = 0x1f;
        assert_eq!(problem(BundleReader::open(&b)), BundleProblem::HeadLength);
        // A header of 9 entries; a header that is an array.
        let mut b = header(0, 1);
        b[0] = 0xa9;
        assert_eq!(
            problem(BundleReader::open(&b)),
            BundleProblem::HeaderEntries(9)
        );
        b[0] = 0x87;
        assert_eq!(
            problem(BundleReader::open(&b)),
            BundleProblem::WrongType(BundleField::Header)
        );
    }

    #[test]
    fn oversized_records_and_impossible_lengths_are_errors_not_allocations() {
        let mut b = header(0, 1);
        b.extend_from_slice(&[0x59, 0x08, 0x01]);
        b.extend_from_slice(&[0; 2049]);
        let (_, mut records) = BundleReader::open(&b).unwrap();
        assert!(matches!(
            records.next_record(),
            Some(Err(BundleError {
                problem: BundleProblem::TooLong {
                    field: BundleField::Record,
                    len: 2049,
                    max: 2048
                },
                ..
            }))
        ));
        let mut b = header(0, 1);
        b.extend_from_slice(&[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let (_, mut records) = BundleReader::open(&b).unwrap();
        assert!(matches!(records.next_record(), Some(Err(_))));
        // A device id longer than the shim's limit.
        let mut b = vec![0xa7, 0x00, 0x01, 0x01, 0x78, 65];
        b.extend_from_slice(&[b'a'; 65]);
        assert!(matches!(
            problem(BundleReader::open(&b)),
            BundleProblem::TooLong {
                field: BundleField::Device,
                ..
            }
        ));
    }

    #[test]
    fn errors_name_the_byte_and_the_field() {
        let mut b = header(0, 1);
        b[5] = 0xff;
        let e = BundleReader::open(&b).unwrap_err();
        assert_eq!(e.to_string(), "byte 4: header device: not UTF-8");
        let e = BundleReader::open(&header(0, 0)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "byte 10: header count: a bundle holds at least one record"
        );
    }
}

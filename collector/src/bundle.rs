//! The lineage bundle format (`collector/README.md`, "Bundle format"): a
//! CBOR sequence (RFC 8742) of a header map, one byte string per record and
//! a final seal map.
//!
//! ```text
//! bundle = header, *record, seal
//! header = {0: 1, 1: device (tstr), 2: registry (bstr, COSE_Sign1), 3: from_seq (uint)}
//! record = bstr            ; one record's exact encoding, ≤ 2048 bytes
//! seal   = {0: seq (uint), 1: head (bstr 32), 2: attest (bstr ≤ 1024), 3: signature (bstr ≤ 512)}
//! ```
//!
//! The reader below accepts exactly that and only in CBOR's core
//! deterministic encoding (shortest integer and length forms, definite
//! lengths, keys in order, no tags, nothing after the seal), so one bundle
//! has one encoding. It borrows from the input and checks every length
//! against the bytes left before taking it.

use mctc_shim::limits::{
    MAX_ATTEST_LEN, MAX_DEVICE_ID_LEN, MAX_RECORD_LEN, MAX_SIGNED_LEN, MAX_TPM_SIGNATURE_LEN,
};

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
    /// The authority's signed registry record for the device.
    pub registry: &'a [u8],
    /// The seq of the first record.
    pub from_seq: u64,
}

/// A TPM quote over the last record's head, taken when the bundle was
/// exported: it covers the final record, which no checkpoint can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal<'a> {
    /// The seq of the last record.
    pub seq: u64,
    /// Its hash.
    pub head: &'a [u8],
    /// `TPMS_ATTEST` of the quote.
    pub attest: &'a [u8],
    /// `TPMT_SIGNATURE` by the AK.
    pub signature: &'a [u8],
}

/// One item after the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// A record's encoding.
    Record(&'a [u8]),
    /// The seal (always the last item).
    Seal(Seal<'a>),
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

    fn peek_major(&self) -> Option<u8> {
        self.bytes.get(self.pos).map(|b| b >> 5)
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

    /// A map of exactly `keys.len()` entries whose keys are `0, 1, …` in
    /// order; returns after reading the map head.
    fn map(&mut self, what: &str, entries: u64) -> Result<(), BundleError> {
        let start = self.pos;
        let len = self.expect(MAJOR_MAP, what)?;
        if len != entries {
            self.pos = start;
            return Err(self.error(format!("{what}: {len} entries, expected {entries}")));
        }
        Ok(())
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

/// Reads a bundle item by item.
pub struct BundleReader<'a> {
    reader: Reader<'a>,
    sealed: bool,
}

impl std::fmt::Debug for BundleReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleReader")
            .field("pos", &self.reader.pos)
            .field("sealed", &self.sealed)
            .finish()
    }
}

impl<'a> BundleReader<'a> {
    /// Reads the header; the items follow with [`BundleReader::next_item`].
    pub fn open(bytes: &'a [u8]) -> Result<(Header<'a>, Self), BundleError> {
        let mut reader = Reader { bytes, pos: 0 };
        reader.map("header", 4)?;
        reader.key("header", 0)?;
        let version = reader.uint("header version")?;
        reader.key("header", 1)?;
        let device = reader.tstr("header device", MAX_DEVICE_ID_LEN)?;
        reader.key("header", 2)?;
        let registry = reader.bstr("header registry", MAX_SIGNED_LEN)?;
        reader.key("header", 3)?;
        let from_seq = reader.uint("header from_seq")?;
        Ok((
            Header {
                version,
                device,
                registry,
                from_seq,
            },
            Self {
                reader,
                sealed: false,
            },
        ))
    }

    /// The byte offset of the next item.
    pub fn offset(&self) -> usize {
        self.reader.pos
    }

    /// The next item; `None` at the end of the input.
    pub fn next_item(&mut self) -> Option<Result<Item<'a>, BundleError>> {
        if self.reader.at_end() {
            return None;
        }
        if self.sealed {
            return Some(Err(self.reader.error("data after the seal")));
        }
        Some(match self.reader.peek_major() {
            Some(MAJOR_BSTR) => self.reader.bstr("record", MAX_RECORD_LEN).map(Item::Record),
            Some(MAJOR_MAP) => self.seal().map(Item::Seal),
            _ => Err(self
                .reader
                .error("expected a record (bstr) or the seal (map)")),
        })
    }

    fn seal(&mut self) -> Result<Seal<'a>, BundleError> {
        let r = &mut self.reader;
        r.map("seal", 4)?;
        r.key("seal", 0)?;
        let seq = r.uint("seal seq")?;
        r.key("seal", 1)?;
        let head_at = r.pos;
        let head = r.bstr("seal head", 32)?;
        if head.len() != 32 {
            return Err(BundleError {
                offset: head_at,
                problem: "seal head: not 32 bytes".to_owned(),
            });
        }
        r.key("seal", 2)?;
        let attest = r.bstr("seal attest", MAX_ATTEST_LEN)?;
        r.key("seal", 3)?;
        let signature = r.bstr("seal signature", MAX_TPM_SIGNATURE_LEN)?;
        self.sealed = true;
        Ok(Seal {
            seq,
            head,
            attest,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(device: &str, registry: &[u8], from_seq: u8) -> Vec<u8> {
        let mut out = vec![0xa4, 0x00, 0x01, 0x01];
        out.push(0x60 | device.len() as u8);
        out.extend_from_slice(device.as_bytes());
        out.push(0x02);
        out.push(0x40 | registry.len() as u8);
        out.extend_from_slice(registry);
        out.extend_from_slice(&[0x03, from_seq]);
        out
    }

    #[test]
    fn reads_a_header_records_and_a_seal() {
        let mut b = header("d1", &[1, 2, 3], 0);
        b.extend_from_slice(&[0x42, 0xaa, 0xbb]);
        b.extend_from_slice(&[0xa4, 0x00, 0x05, 0x01, 0x58, 0x20]);
        b.extend_from_slice(&[7; 32]);
        b.extend_from_slice(&[0x02, 0x41, 0x01, 0x03, 0x41, 0x02]);
        let (h, mut items) = BundleReader::open(&b).unwrap();
        assert_eq!(h.device, "d1");
        assert_eq!(h.registry, &[1, 2, 3]);
        assert_eq!(items.next_item(), Some(Ok(Item::Record(&[0xaa, 0xbb]))));
        let Some(Ok(Item::Seal(seal))) = items.next_item() else {
            panic!("seal expected")
        };
        assert_eq!(
            (seal.seq, seal.head, seal.attest),
            (5, &[7u8; 32][..], &[1u8][..])
        );
        assert_eq!(items.next_item(), None);
    }

    #[test]
    fn rejects_non_shortest_forms_indefinite_lengths_and_trailing_items() {
        // from_seq 0 written as 0x18 0x00.
        let mut b = header("d1", &[], 0);
        b.pop();
        b.extend_from_slice(&[0x18, 0x00]);
        assert!(BundleReader::open(&b).is_err());
        // An indefinite-length byte string record.
        let mut b = header("d1", &[], 0);
        b.extend_from_slice(&[0x5f, 0x41, 0x00, 0xff]);
        let (_, mut items) = BundleReader::open(&b).unwrap();
        assert!(matches!(items.next_item(), Some(Err(_))));
        // Anything after the seal.
        let mut b = header("d1", &[], 0);
        b.extend_from_slice(&[0xa4, 0x00, 0x00, 0x01, 0x58, 0x20]);
        b.extend_from_slice(&[0; 32]);
        b.extend_from_slice(&[0x02, 0x40, 0x03, 0x40, 0x40]);
        let (_, mut items) = BundleReader::open(&b).unwrap();
        assert!(matches!(items.next_item(), Some(Ok(Item::Seal(_)))));
        assert!(matches!(items.next_item(), Some(Err(_))));
    }

    #[test]
    fn rejects_keys_out_of_order_and_oversized_records() {
        let mut b = header("d1", &[], 0);
        b.swap(1, 2);
        assert!(BundleReader::open(&b).is_err());
        let mut b = header("d1", &[], 0);
        b.extend_from_slice(&[0x59, 0x08, 0x01]);
        b.extend_from_slice(&[0; 2049]);
        let (_, mut items) = BundleReader::open(&b).unwrap();
        assert!(matches!(items.next_item(), Some(Err(_))));
    }

    #[test]
    fn a_length_beyond_the_input_is_an_error_not_an_allocation() {
        let mut b = header("d1", &[], 0);
        b.extend_from_slice(&[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let (_, mut items) = BundleReader::open(&b).unwrap();
        assert!(matches!(items.next_item(), Some(Err(_))));
    }
}

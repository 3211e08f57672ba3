//! The one module that knows the CBOR library (serde_cbor, no default
//! features, no alloc). Everything else speaks serde; swapping the library
//! is a change to this file alone.
//!
//! Decoding is strict: after a value is parsed, it is serialized again and
//! compared byte for byte with the input, through a writer that compares
//! instead of storing. Only the one canonical encoding of a value is
//! accepted (RFC 8949 §4.2.1 core deterministic encoding: shortest
//! integer and length forms, definite lengths, map keys in bytewise order,
//! no tags except where the format names one), so two different byte
//! strings never decode to the same value and hashes over encodings are
//! well-defined.

use serde::{Deserialize, Serialize};
use serde_cbor::ser::{SliceWrite, Write};

/// Why the codec failed; callers add the message kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodecFailure {
    /// Not a well-formed CBOR item of the expected shape.
    Malformed { offset: u64 },
    /// The output buffer filled up.
    BufferTooSmall,
    /// A serializer refused a value (cannot happen for the crate's types).
    Unencodable,
}

fn failure(e: &serde_cbor::Error) -> CodecFailure {
    if e.is_scratch_too_small() {
        CodecFailure::BufferTooSmall
    } else {
        CodecFailure::Unencodable
    }
}

/// Serializes `value` into `buf`; returns the number of bytes written.
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut [u8],
) -> Result<usize, CodecFailure> {
    let mut serializer = serde_cbor::Serializer::new(SliceWrite::new(buf));
    value.serialize(&mut serializer).map_err(|e| failure(&e))?;
    Ok(serializer.into_inner().bytes_written())
}

/// Serializes `value` behind a one-byte CBOR tag head (tags 0–23).
pub(crate) fn encode_tagged<T: Serialize + ?Sized>(
    tag: u8,
    value: &T,
    buf: &mut [u8],
) -> Result<usize, CodecFailure> {
    let (head, rest) = buf.split_first_mut().ok_or(CodecFailure::BufferTooSmall)?;
    *head = tag_head(tag).ok_or(CodecFailure::Unencodable)?;
    Ok(1 + encode(value, rest)?)
}

/// Parses one complete CBOR item (no trailing bytes) into `T`, borrowing
/// strings and byte strings from `bytes`. Structural only: the caller
/// validates limits and then checks canonical form with [`is_canonical`].
pub(crate) fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecFailure> {
    // No scratch space: indefinite-length strings (the only thing that
    // needs it) are not canonical and fail here already.
    let mut scratch = [0u8; 0];
    serde_cbor::de::from_slice_with_scratch(bytes, &mut scratch)
        .map_err(|e| CodecFailure::Malformed { offset: e.offset() })
}

/// Strips a one-byte tag head (tags 0–23) and parses the tagged item.
pub(crate) fn parse_tagged<'a, T: Deserialize<'a>>(
    tag: u8,
    bytes: &'a [u8],
) -> Result<Option<T>, CodecFailure> {
    match (bytes.split_first(), tag_head(tag)) {
        (Some((first, rest)), Some(head)) if *first == head => parse(rest).map(Some),
        _ => Ok(None),
    }
}

const fn tag_head(tag: u8) -> Option<u8> {
    // Major type 6 with the tag number in the initial byte.
    if tag < 24 { Some(0xc0 | tag) } else { None }
}

/// Whether `bytes` is exactly the encoding of `value`.
pub(crate) fn is_canonical<T: Serialize + ?Sized>(value: &T, bytes: &[u8]) -> bool {
    let mut serializer = serde_cbor::Serializer::new(Compare {
        expected: bytes,
        pos: 0,
    });
    match value.serialize(&mut serializer) {
        Ok(()) => serializer.into_inner().pos == bytes.len(),
        Err(_) => false,
    }
}

/// A sink that checks each write against the expected bytes instead of
/// storing it, so the canonical check needs no second buffer.
struct Compare<'a> {
    expected: &'a [u8],
    pos: usize,
}

impl Write for Compare<'_> {
    type Error = serde_cbor::Error;

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        let end = self.pos.checked_add(buf.len());
        match end.and_then(|end| self.expected.get(self.pos..end).map(|s| (s, end))) {
            Some((slice, end)) if slice == buf => {
                self.pos = end;
                Ok(())
            }
            _ => Err(serde_cbor::Error::message(
                "differs from the canonical encoding",
            )),
        }
    }
}

//! Checked big-endian reader and writer for TPM 2.0 structures.
//!
//! Every decoder of bytes that came from outside (the TPM, the network, a
//! file) goes through [`Reader`]: each read either returns the bytes it asked
//! for or a [`ParseError`] naming the structure and offset, never a panic.

use std::fmt;

/// A TPM structure could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {structure} at byte {offset}: {problem}")]
pub struct ParseError {
    /// The structure being decoded (e.g. `TPMS_ATTEST`).
    pub structure: &'static str,
    /// Byte offset into the input where decoding stopped.
    pub offset: usize,
    /// What was wrong there.
    pub problem: ParseProblem,
}

/// Why a structure did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseProblem {
    /// The input ended before the structure did.
    Truncated,
    /// Bytes were left over after the structure ended.
    TrailingBytes(usize),
    /// A field held a value this crate does not accept (named).
    Invalid(&'static str),
    /// A field named an algorithm or scheme this crate does not support.
    Unsupported(&'static str, u16),
    /// A length field exceeded the maximum the TPM specification allows.
    TooLong(&'static str, usize),
}

impl fmt::Display for ParseProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseProblem::Truncated => f.write_str("input ends early"),
            ParseProblem::TrailingBytes(n) => write!(f, "{n} trailing bytes"),
            ParseProblem::Invalid(what) => write!(f, "invalid {what}"),
            ParseProblem::Unsupported(what, v) => write!(f, "unsupported {what} {v:#06x}"),
            ParseProblem::TooLong(what, n) => write!(f, "{what} of {n} bytes is too long"),
        }
    }
}

/// A cursor over untrusted bytes.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    structure: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(structure: &'static str, buf: &'a [u8]) -> Reader<'a> {
        Reader {
            structure,
            buf,
            pos: 0,
        }
    }

    pub(crate) fn error(&self, problem: ParseProblem) -> ParseError {
        ParseError {
            structure: self.structure,
            offset: self.pos,
            problem,
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| self.error(ParseProblem::Truncated))?;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.error(ParseProblem::Truncated))?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ParseError> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, ParseError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ParseError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, ParseError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A `TPM2B_*`: a 16-bit size, then that many bytes, at most `max`.
    pub(crate) fn tpm2b(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], ParseError> {
        let size = usize::from(self.u16()?);
        if size > max {
            return Err(self.error(ParseProblem::TooLong(what, size)));
        }
        self.take(size)
    }

    /// Ends decoding: the whole input must have been consumed.
    pub(crate) fn finish(self) -> Result<(), ParseError> {
        let left = self.buf.len().saturating_sub(self.pos);
        if left == 0 {
            Ok(())
        } else {
            Err(self.error(ParseProblem::TrailingBytes(left)))
        }
    }
}

/// Appends a `TPM2B_*` (16-bit size prefix); `None` when `bytes` is too long.
pub(crate) fn put_tpm2b(out: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
    let size = u16::try_from(bytes.len()).ok()?;
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(bytes);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded() {
        let mut r = Reader::new("T", &[7, 0, 3, 1, 2]);
        assert_eq!(r.u8().unwrap(), 7);
        let err = r.tpm2b("x", 10).unwrap_err();
        assert_eq!(err.problem, ParseProblem::Truncated);
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut r = Reader::new("T", &[0, 1, 9, 7]);
        assert_eq!(r.tpm2b("x", 4).unwrap(), &[9]);
        assert_eq!(
            r.finish().unwrap_err().problem,
            ParseProblem::TrailingBytes(1)
        );
    }

    #[test]
    fn size_limit_is_enforced() {
        let mut r = Reader::new("T", &[0, 5, 1, 2, 3, 4, 5]);
        assert!(matches!(
            r.tpm2b("x", 4).unwrap_err().problem,
            ParseProblem::TooLong("x", 5)
        ));
    }
}

//! Splitting one fuzz input into the parts a target needs. Every read
//! succeeds: past the end it yields zeros or an empty slice, so any byte
//! string is a valid input and the fuzzer never wastes runs on framing.

/// A cursor over the fuzz input.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    /// Starts at the beginning of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Input<'a> {
        Input { bytes }
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = tail;
        head
    }

    /// One byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    /// A big-endian u16 (missing bytes are 0).
    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        for (slot, byte) in b.iter_mut().zip(self.take(2)) {
            *slot = *byte;
        }
        u16::from_be_bytes(b)
    }

    /// A big-endian u64 (missing bytes are 0).
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for (slot, byte) in b.iter_mut().zip(self.take(8)) {
            *slot = *byte;
        }
        u64::from_be_bytes(b)
    }

    /// A chunk framed by a big-endian u16 length (cut short at the end).
    pub fn chunk(&mut self) -> &'a [u8] {
        let len = usize::from(self.u16());
        self.take(len)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.bytes.len())
    }
}

/// Frames `parts` the way [`Input::chunk`] reads them (for seeds).
pub fn chunks(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        let len = u16::try_from(part.len()).expect("seed chunks are below 64 KiB");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

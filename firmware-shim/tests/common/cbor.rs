//! An independent, minimal CBOR encoder and COSE_Sign1 sealer for tests:
//! they build inputs the crate's own encoder refuses (out-of-range values,
//! non-canonical forms), written from RFC 8949 and RFC 9052 rather than
//! through the crate.
#![allow(dead_code, reason = "each test file uses a different subset")]

use mctc_shim::{MessageKind, RingCrypto, Signer};
use serde::Serialize;

/// Encodes `value` through its `Serialize` impl without any validation.
pub fn encode_unchecked<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    value.serialize(&mut MiniCbor(&mut out)).unwrap();
    out
}

pub fn head(major: u8, v: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    match v {
        0..=23 => out.push(m | v as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, v as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(v as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(v as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

pub fn bstr(b: &[u8], out: &mut Vec<u8>) {
    head(2, b.len() as u64, out);
    out.extend_from_slice(b);
}

/// Signs `payload` as a COSE_Sign1 of `kind` with `signer`, whatever the
/// payload holds.
pub fn seal(kind: MessageKind, payload: &[u8], signer: &dyn Signer) -> Vec<u8> {
    let ct = mctc_shim::cose::content_type(kind).unwrap().as_bytes();
    let key = mctc_shim::AuthorityKey::new(&RingCrypto, signer.public_key());
    let mut protected = vec![0xa3, 0x01, 0x27, 0x03];
    head(3, ct.len() as u64, &mut protected);
    protected.extend_from_slice(ct);
    protected.extend_from_slice(&[0x04, 0x48]);
    protected.extend_from_slice(key.kid());
    let mut to_sign = vec![0x84, 0x6a];
    to_sign.extend_from_slice(b"Signature1");
    bstr(&protected, &mut to_sign);
    to_sign.push(0x40);
    bstr(payload, &mut to_sign);
    let sig = signer.sign(&to_sign).unwrap();
    let mut out = vec![0xd2, 0x84];
    bstr(&protected, &mut out);
    out.push(0xa0);
    bstr(payload, &mut out);
    bstr(&sig, &mut out);
    out
}

/// A minimal serde CBOR serializer for tests (maps, ints, text, bytes,
/// sequences): enough to encode claims without the crate's validation.
#[derive(Debug)]
pub struct MiniCbor<'o>(pub &'o mut Vec<u8>);

mod mini_cbor {
    use super::MiniCbor;
    use serde::ser::{self, Impossible, Serialize};
    use std::fmt;

    #[derive(Debug)]
    pub struct Unsupported;
    impl fmt::Display for Unsupported {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("unsupported")
        }
    }
    impl std::error::Error for Unsupported {}
    impl ser::Error for Unsupported {
        fn custom<T: fmt::Display>(_: T) -> Self {
            Unsupported
        }
    }

    impl MiniCbor<'_> {
        fn head(&mut self, major: u8, v: u64) {
            super::head(major, v, self.0);
        }
    }

    macro_rules! unsupported {
        ($($f:ident($($t:ty),*)),*) => {
            $(fn $f(self, $(_: $t),*) -> Result<(), Unsupported> { Err(Unsupported) })*
        };
    }

    impl<'a, 'o> ser::Serializer for &'a mut MiniCbor<'o> {
        type Ok = ();
        type Error = Unsupported;
        type SerializeSeq = Self;
        type SerializeTuple = Impossible<(), Unsupported>;
        type SerializeTupleStruct = Impossible<(), Unsupported>;
        type SerializeTupleVariant = Impossible<(), Unsupported>;
        type SerializeMap = Self;
        type SerializeStruct = Impossible<(), Unsupported>;
        type SerializeStructVariant = Impossible<(), Unsupported>;

        fn serialize_bool(self, v: bool) -> Result<(), Unsupported> {
            self.0.push(if v { 0xf5 } else { 0xf4 });
            Ok(())
        }
        fn serialize_u8(self, v: u8) -> Result<(), Unsupported> {
            self.head(0, v.into());
            Ok(())
        }
        fn serialize_u16(self, v: u16) -> Result<(), Unsupported> {
            self.head(0, v.into());
            Ok(())
        }
        fn serialize_u32(self, v: u32) -> Result<(), Unsupported> {
            self.head(0, v.into());
            Ok(())
        }
        fn serialize_u64(self, v: u64) -> Result<(), Unsupported> {
            self.head(0, v);
            Ok(())
        }
        fn serialize_i64(self, v: i64) -> Result<(), Unsupported> {
            if v < 0 {
                self.head(1, (-1 - v) as u64);
            } else {
                self.head(0, v as u64);
            }
            Ok(())
        }
        fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
            self.head(3, v.len() as u64);
            self.0.extend_from_slice(v.as_bytes());
            Ok(())
        }
        fn serialize_bytes(self, v: &[u8]) -> Result<(), Unsupported> {
            self.head(2, v.len() as u64);
            self.0.extend_from_slice(v);
            Ok(())
        }
        fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> Result<(), Unsupported> {
            v.serialize(self)
        }
        fn serialize_seq(self, len: Option<usize>) -> Result<Self, Unsupported> {
            self.head(4, len.ok_or(Unsupported)? as u64);
            Ok(self)
        }
        fn serialize_map(self, len: Option<usize>) -> Result<Self, Unsupported> {
            self.head(5, len.ok_or(Unsupported)? as u64);
            Ok(self)
        }
        unsupported!(
            serialize_i8(i8),
            serialize_i16(i16),
            serialize_i32(i32),
            serialize_f32(f32),
            serialize_f64(f64),
            serialize_char(char),
            serialize_none(),
            serialize_unit(),
            serialize_unit_struct(&'static str),
            serialize_unit_variant(&'static str, u32, &'static str)
        );
        fn serialize_newtype_struct<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: &T,
        ) -> Result<(), Unsupported> {
            Err(Unsupported)
        }
        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<(), Unsupported> {
            Err(Unsupported)
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStruct, Unsupported> {
            Err(Unsupported)
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, Unsupported> {
            Err(Unsupported)
        }
    }

    impl ser::SerializeSeq for &mut MiniCbor<'_> {
        type Ok = ();
        type Error = Unsupported;
        fn serialize_element<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), Unsupported> {
            v.serialize(&mut **self)
        }
        fn end(self) -> Result<(), Unsupported> {
            Ok(())
        }
    }

    impl ser::SerializeMap for &mut MiniCbor<'_> {
        type Ok = ();
        type Error = Unsupported;
        fn serialize_key<T: ?Sized + Serialize>(&mut self, k: &T) -> Result<(), Unsupported> {
            k.serialize(&mut **self)
        }
        fn serialize_value<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), Unsupported> {
            v.serialize(&mut **self)
        }
        fn end(self) -> Result<(), Unsupported> {
            Ok(())
        }
    }
}

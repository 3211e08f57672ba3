//! The building blocks of every wire message: bounded field types, the
//! [`Message`] trait (encode / decode), and the macros that define a
//! message as a CBOR map with explicit integer keys.
//!
//! Field types check their limits in a validation pass after parsing, so a
//! limit breach is reported as [`Error::Invalid`] naming the field, rather
//! than as a generic parse failure; parsing itself borrows from the input
//! and never allocates.

use core::fmt;
use core::marker::PhantomData;
use core::ops::Deref;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecFailure};
use crate::error::{Error, Invalid, MessageKind, Problem};
use crate::sealed::{Validate, WireField};

/// The wire version every message carries under its version key. A decoder
/// rejects any other value with [`Problem::UnsupportedVersion`].
pub const WIRE_VERSION: u8 = 1;

/// A message that travels on its own: has a kind, encodes into a caller's
/// buffer and decodes (borrowing from the input) with every check of the
/// format applied.
pub trait Message<'a>: crate::sealed::Wire<'a> {
    /// Which message this is (limits, content type, error reports).
    const KIND: MessageKind;

    /// Validates every field and writes the canonical encoding into `buf`;
    /// returns the written prefix of `buf`.
    fn encode<'b>(&self, buf: &'b mut [u8]) -> Result<&'b [u8], Error> {
        encode_message(self, Self::KIND, buf)
    }

    /// Decodes `bytes`: at most [`MessageKind::max_len`] bytes, well-formed,
    /// every field within its limits, canonically encoded.
    fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        decode_message(bytes, Self::KIND)
    }
}

pub(crate) fn encode_message<'b, T: Serialize + Validate + ?Sized>(
    value: &T,
    kind: MessageKind,
    buf: &'b mut [u8],
) -> Result<&'b [u8], Error> {
    value
        .validate("")
        .map_err(|invalid| Error::Invalid { kind, invalid })?;
    let len = codec::encode(value, buf).map_err(|f| encode_error(kind, f))?;
    let max = kind.max_len();
    if len > max {
        return Err(Error::Oversize { kind, len, max });
    }
    buf.get(..len).ok_or(Error::BufferTooSmall { kind })
}

pub(crate) fn decode_message<'a, T: Deserialize<'a> + Serialize + Validate>(
    bytes: &'a [u8],
    kind: MessageKind,
) -> Result<T, Error> {
    check_len(bytes, kind)?;
    let value: T = codec::parse(bytes).map_err(|f| decode_error(kind, f))?;
    value
        .validate("")
        .map_err(|invalid| Error::Invalid { kind, invalid })?;
    if !codec::is_canonical(&value, bytes) {
        return Err(Error::NonCanonical { kind });
    }
    Ok(value)
}

pub(crate) fn check_len(bytes: &[u8], kind: MessageKind) -> Result<(), Error> {
    let max = kind.max_len();
    if bytes.len() > max {
        return Err(Error::Oversize {
            kind,
            len: bytes.len(),
            max,
        });
    }
    Ok(())
}

pub(crate) fn encode_error(kind: MessageKind, failure: CodecFailure) -> Error {
    match failure {
        CodecFailure::BufferTooSmall => Error::BufferTooSmall { kind },
        CodecFailure::Malformed { offset } => Error::Malformed { kind, offset },
        CodecFailure::Unencodable => Error::Invalid {
            kind,
            invalid: Invalid {
                field: "",
                problem: Problem::BadSyntax,
            },
        },
    }
}

pub(crate) fn decode_error(kind: MessageKind, failure: CodecFailure) -> Error {
    match failure {
        CodecFailure::Malformed { offset } => Error::Malformed { kind, offset },
        CodecFailure::BufferTooSmall | CodecFailure::Unencodable => {
            Error::Malformed { kind, offset: 0 }
        }
    }
}

const fn invalid(field: &'static str, problem: Problem) -> Invalid {
    Invalid { field, problem }
}

/// Defines a wire map: a struct whose fields travel as a CBOR map with the
/// given integer keys, in the order declared (which must be the canonical
/// key order: ascending for non-negative keys, then negative keys by
/// increasing magnitude). A field of type `Option<T>` is omitted when
/// `None`; every other field is required. Unknown and duplicate keys are
/// rejected. An optional `check = path;` after the body names a
/// `fn(&Self) -> Result<(), Invalid>` for rules that span fields.
macro_rules! wire_map {
    (
        $(#[$meta:meta])*
        pub struct $name:ident $(<$lt:lifetime>)? {
            $(
                $(#[$fmeta:meta])*
                $key:literal => $field:ident : $ty:ty
            ),+ $(,)?
        }
        $(check = $check:path;)?
    ) => {
        $(#[$meta])*
        pub struct $name $(<$lt>)? {
            $( $(#[$fmeta])* pub $field: $ty, )+
        }

        const _: () = {
            use serde::ser::SerializeMap as _;

            impl $(<$lt>)? serde::Serialize for $name $(<$lt>)? {
                fn serialize<S: serde::Serializer>(
                    &self,
                    serializer: S,
                ) -> Result<S::Ok, S::Error> {
                    let len = 0usize
                        $( + usize::from($crate::sealed::WireField::present(&self.$field)) )+;
                    let mut map = serializer.serialize_map(Some(len))?;
                    $(
                        if $crate::sealed::WireField::present(&self.$field) {
                            map.serialize_entry(&($key as i64), &self.$field)?;
                        }
                    )+
                    map.end()
                }
            }

            struct MapVisitor $(<$lt>)? (core::marker::PhantomData<$name $(<$lt>)?>);

            impl<'de $(: $lt)? $(, $lt)?> serde::de::Visitor<'de> for MapVisitor $(<$lt>)? {
                type Value = $name $(<$lt>)?;

                fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                    f.write_str(concat!("a ", stringify!($name), " map"))
                }

                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut access: A,
                ) -> Result<Self::Value, A::Error> {
                    $( let mut $field: Option<$ty> = None; )+
                    while let Some(key) = access.next_key::<i64>()? {
                        match key {
                            $(
                                $key => {
                                    if $field.is_some() {
                                        return Err(serde::de::Error::duplicate_field(
                                            stringify!($field),
                                        ));
                                    }
                                    $field = Some(access.next_value()?);
                                }
                            )+
                            _ => return Err(serde::de::Error::custom("unknown key")),
                        }
                    }
                    Ok($name {
                        $(
                            $field: match $field {
                                Some(value) => value,
                                None => <$ty as $crate::sealed::WireField>::missing()
                                    .ok_or_else(|| {
                                        serde::de::Error::missing_field(stringify!($field))
                                    })?,
                            },
                        )+
                    })
                }
            }

            impl<'de $(: $lt)? $(, $lt)?> serde::Deserialize<'de> for $name $(<$lt>)? {
                fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    d.deserialize_map(MapVisitor(core::marker::PhantomData))
                }
            }

            impl $(<$lt>)? $crate::sealed::WireField for $name $(<$lt>)? {}

            impl $(<$lt>)? $crate::sealed::Validate for $name $(<$lt>)? {
                fn validate(&self, _field: &'static str) -> Result<(), $crate::error::Invalid> {
                    $( $crate::sealed::Validate::validate(&self.$field, stringify!($field))?; )+
                    $( $check(self)?; )?
                    Ok(())
                }
            }
        };
    };
}
pub(crate) use wire_map;

/// Makes a [`wire_map!`] struct a stand-alone [`Message`] of a kind.
macro_rules! wire_message {
    ($name:ident < $lt:lifetime >, $kind:expr) => {
        impl<$lt> $crate::wire::Message<$lt> for $name<$lt> {
            const KIND: $crate::error::MessageKind = $kind;
        }
    };
    ($name:ident, $kind:expr) => {
        impl<'a> $crate::wire::Message<'a> for $name {
            const KIND: $crate::error::MessageKind = $kind;
        }
    };
}
pub(crate) use wire_message;

/// Defines a closed set of numeric codes that travel as a CBOR unsigned
/// integer. An unknown code is malformed.
///
/// Each variant also gets its stable kebab-case name (`Variant = 3 =>
/// "variant"`): this is the one table of the names logs, the gate socket,
/// the status JSON and the fleet side print for a code ([`CodeName`]).
macro_rules! wire_code {
    (
        $(#[$meta:meta])*
        pub enum $name:ident : $repr:ty {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $code:literal => $text:literal
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in code order.
            pub const ALL: &'static [Self] = &[$( Self::$variant, )+];

            /// The code on the wire.
            pub const fn code(self) -> $repr {
                match self {
                    $( Self::$variant => $code, )+
                }
            }

            /// The variant for a wire code, if there is one.
            pub const fn from_code(code: $repr) -> Option<Self> {
                match code {
                    $( $code => Some(Self::$variant), )+
                    _ => None,
                }
            }

            /// The stable kebab-case name (logs, JSON, databases).
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )+
                }
            }

            /// The variant named `name`, if there is one.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.name() == name)
            }
        }

        impl $crate::wire::CodeName for $name {
            const ALL: &'static [Self] = $name::ALL;

            fn name(self) -> &'static str {
                $name::name(self)
            }

            fn wire_code(self) -> u64 {
                u64::from(self.code())
            }

            fn from_wire_code(code: u64) -> Option<Self> {
                <$repr>::try_from(code).ok().and_then(Self::from_code)
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serde::Serialize::serialize(&self.code(), s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let code = <$repr as serde::Deserialize>::deserialize(d)?;
                Self::from_code(code).ok_or_else(|| serde::de::Error::custom("unknown code"))
            }
        }

        impl $crate::sealed::WireField for $name {}

        impl $crate::sealed::Validate for $name {
            fn validate(&self, _field: &'static str) -> Result<(), $crate::error::Invalid> {
                Ok(())
            }
        }
    };
}
pub(crate) use wire_code;

/// A closed set of wire codes with stable kebab-case names. On the wire a
/// code is its number; everywhere people read it (logs, the gate socket,
/// the status JSON, the fleet side's databases) it is this name.
pub trait CodeName: Copy + Sized + 'static {
    /// Every variant, in code order.
    const ALL: &'static [Self];

    /// The variant's name.
    fn name(self) -> &'static str;

    /// The variant's code on the wire.
    fn wire_code(self) -> u64;

    /// The variant for a wire code, if there is one.
    fn from_wire_code(code: u64) -> Option<Self>;

    /// The variant named `name`, if there is one.
    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name() == name)
    }
}

macro_rules! plain_fields {
    ($($ty:ty),+) => {
        $(
            impl WireField for $ty {}
            impl Validate for $ty {
                fn validate(&self, _field: &'static str) -> Result<(), Invalid> {
                    Ok(())
                }
            }
        )+
    };
}
plain_fields!(u8, u16, u32, u64, i64, bool);

impl<T: WireField> WireField for Option<T> {
    fn present(&self) -> bool {
        self.is_some()
    }

    fn missing() -> Option<Self> {
        Some(None)
    }
}

impl<T: Validate> Validate for Option<T> {
    fn validate(&self, field: &'static str) -> Result<(), Invalid> {
        match self {
            Some(value) => value.validate(field),
            None => Ok(()),
        }
    }
}

/// The version field every message carries. Decodes any number (so an
/// unknown version is reported as such, not as malformed input); only
/// [`WIRE_VERSION`] validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version(pub u8);

impl Version {
    /// The version this implementation writes and reads.
    pub const CURRENT: Self = Self(WIRE_VERSION);
}

impl Default for Version {
    fn default() -> Self {
        Self::CURRENT
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.0)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u8::deserialize(d).map(Self)
    }
}

impl WireField for Version {}

impl Validate for Version {
    fn validate(&self, field: &'static str) -> Result<(), Invalid> {
        if self.0 == WIRE_VERSION {
            Ok(())
        } else {
            Err(invalid(field, Problem::UnsupportedVersion(self.0)))
        }
    }
}

/// UTF-8 text of at most `N` bytes (a CBOR text string), borrowed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Text<'a, const N: usize>(pub &'a str);

impl<'a, const N: usize> Text<'a, N> {
    /// The text.
    pub const fn as_str(&self) -> &'a str {
        self.0
    }
}

impl<const N: usize> fmt::Debug for Text<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl<'a, const N: usize> From<&'a str> for Text<'a, N> {
    fn from(s: &'a str) -> Self {
        Self(s)
    }
}

impl<const N: usize> Serialize for Text<'_, N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de: 'a, 'a, const N: usize> Deserialize<'de> for Text<'a, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a str>::deserialize(d).map(Self)
    }
}

impl<const N: usize> WireField for Text<'_, N> {}

impl<const N: usize> Validate for Text<'_, N> {
    fn validate(&self, field: &'static str) -> Result<(), Invalid> {
        if self.0.len() > N {
            return Err(invalid(field, Problem::TooLong { max: N }));
        }
        Ok(())
    }
}

/// An identifier-like token: 1 to `N` bytes of printable ASCII without
/// spaces (`0x21..=0x7e`), borrowed. Operation names, device classes,
/// authority ids and software versions are tokens, so they compare exactly
/// and print safely in logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token<'a, const N: usize>(pub &'a str);

impl<'a, const N: usize> Token<'a, N> {
    /// The token.
    pub const fn as_str(&self) -> &'a str {
        self.0
    }
}

/// What is wrong with `s` as a token of at most `max` bytes, if anything:
/// the one definition of the token grammar (1 to `max` bytes of printable
/// ASCII without space), which configuration parsers and the gate socket
/// check against too, so what they accept always fits the wire.
pub fn token_problem(s: &str, max: usize) -> Option<Problem> {
    if s.is_empty() {
        Some(Problem::Empty)
    } else if s.len() > max {
        Some(Problem::TooLong { max })
    } else if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        Some(Problem::BadSyntax)
    } else {
        None
    }
}

impl<const N: usize> fmt::Debug for Token<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl<'a, const N: usize> From<&'a str> for Token<'a, N> {
    fn from(s: &'a str) -> Self {
        Self(s)
    }
}

impl<const N: usize> Serialize for Token<'_, N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de: 'a, 'a, const N: usize> Deserialize<'de> for Token<'a, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a str>::deserialize(d).map(Self)
    }
}

impl<const N: usize> WireField for Token<'_, N> {}

impl<const N: usize> Validate for Token<'_, N> {
    fn validate(&self, field: &'static str) -> Result<(), Invalid> {
        match token_problem(self.0, N) {
            Some(problem) => Err(invalid(field, problem)),
            None => Ok(()),
        }
    }
}

/// A byte string of at most `N` bytes (a CBOR byte string), borrowed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Bstr<'a, const N: usize>(pub &'a [u8]);

impl<'a, const N: usize> Bstr<'a, N> {
    /// The bytes.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
}

impl<const N: usize> fmt::Debug for Bstr<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bstr({} bytes)", self.0.len())
    }
}

impl<'a, const N: usize> From<&'a [u8]> for Bstr<'a, N> {
    fn from(b: &'a [u8]) -> Self {
        Self(b)
    }
}

impl<const N: usize> Serialize for Bstr<'_, N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

struct BorrowedBytes<'a>(PhantomData<&'a [u8]>);

impl<'de: 'a, 'a> Visitor<'de> for BorrowedBytes<'a> {
    type Value = &'a [u8];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
        Ok(v)
    }
}

impl<'de: 'a, 'a, const N: usize> Deserialize<'de> for Bstr<'a, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(BorrowedBytes(PhantomData)).map(Self)
    }
}

impl<const N: usize> WireField for Bstr<'_, N> {}

impl<const N: usize> Validate for Bstr<'_, N> {
    fn validate(&self, field: &'static str) -> Result<(), Invalid> {
        if self.0.len() > N {
            return Err(invalid(field, Problem::TooLong { max: N }));
        }
        Ok(())
    }
}

/// Exactly `N` bytes (a CBOR byte string of that length), owned: digests,
/// nonces, ids, signatures.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bytes<const N: usize>(pub [u8; N]);

/// A SHA-256 digest.
pub type Digest = Bytes<32>;

impl<const N: usize> Bytes<N> {
    /// The bytes.
    pub const fn as_array(&self) -> &[u8; N] {
        &self.0
    }
}

impl<const N: usize> Default for Bytes<N> {
    fn default() -> Self {
        Self([0; N])
    }
}

impl<const N: usize> fmt::Debug for Bytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl<const N: usize> From<[u8; N]> for Bytes<N> {
    fn from(b: [u8; N]) -> Self {
        Self(b)
    }
}

impl<const N: usize> Deref for Bytes<N> {
    type Target = [u8; N];

    fn deref(&self) -> &[u8; N] {
        &self.0
    }
}

impl<const N: usize> Serialize for Bytes<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de, const N: usize> Deserialize<'de> for Bytes<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fixed<const N: usize>;
        impl<const N: usize> Visitor<'_> for Fixed<N> {
            type Value = [u8; N];

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a byte string of {N} bytes")
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<[u8; N], E> {
                <[u8; N]>::try_from(v).map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(Fixed::<N>).map(Self)
    }
}

impl<const N: usize> WireField for Bytes<N> {}

impl<const N: usize> Validate for Bytes<N> {
    fn validate(&self, _field: &'static str) -> Result<(), Invalid> {
        Ok(())
    }
}

/// A CBOR array of at most `N` items, held in place (no allocation).
///
/// Decoding keeps reading past `N` items (each parsed as `T`, so the work
/// per item stays bounded) and remembers the overflow, so that validation
/// can report [`Problem::TooMany`] for the field instead of a parse error.
#[derive(Clone, PartialEq, Eq)]
pub struct List<T, const N: usize> {
    items: heapless::Vec<T, N>,
    overflow: bool,
}

impl<T, const N: usize> List<T, N> {
    /// An empty list.
    pub const fn new() -> Self {
        Self {
            items: heapless::Vec::new(),
            overflow: false,
        }
    }

    /// Appends an item; gives it back when the list is full.
    pub fn push(&mut self, item: T) -> Result<(), T> {
        self.items.push(item)
    }

    /// The items.
    pub fn as_slice(&self) -> &[T] {
        &self.items
    }
}

impl<T: Clone, const N: usize> List<T, N> {
    /// A list holding `items`; `None` when there are more than `N`.
    pub fn from_slice(items: &[T]) -> Option<Self> {
        heapless::Vec::from_slice(items).ok().map(|items| Self {
            items,
            overflow: false,
        })
    }
}

impl<T, const N: usize> Default for List<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> Deref for List<T, N> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.items
    }
}

impl<T: fmt::Debug, const N: usize> fmt::Debug for List<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.items.iter()).finish()
    }
}

impl<T: Serialize, const N: usize> Serialize for List<T, N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.items.len()))?;
        for item in &self.items {
            seq.serialize_element(item)?;
        }
        seq.end()
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for List<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for ListVisitor<T, N> {
            type Value = List<T, N>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an array of at most {N} items")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut list = List::new();
                while let Some(item) = seq.next_element::<T>()? {
                    if list.items.push(item).is_err() {
                        list.overflow = true;
                    }
                }
                Ok(list)
            }
        }
        d.deserialize_seq(ListVisitor(PhantomData))
    }
}

impl<T, const N: usize> WireField for List<T, N> {}

impl<T: Validate, const N: usize> Validate for List<T, N> {
    fn validate(&self, field: &'static str) -> Result<(), Invalid> {
        if self.overflow {
            return Err(invalid(field, Problem::TooMany { max: N }));
        }
        self.items.iter().try_for_each(|item| item.validate(field))
    }
}

/// A CBOR map with no entries (the empty unprotected header of COSE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct EmptyMap;

impl Serialize for EmptyMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

impl<'de> Deserialize<'de> for EmptyMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EmptyVisitor;
        impl<'de> Visitor<'de> for EmptyVisitor {
            type Value = EmptyMap;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an empty map")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<EmptyMap, A::Error> {
                // A key is parsed as an integer so that a hostile nested
                // structure fails at once instead of being walked.
                match map.next_key::<i64>()? {
                    None => Ok(EmptyMap),
                    Some(_) => Err(de::Error::custom("expected an empty map")),
                }
            }
        }
        d.deserialize_map(EmptyVisitor)
    }
}

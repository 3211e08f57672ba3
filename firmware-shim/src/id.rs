//! Device identity as it appears in topics, messages, lineage and the
//! broker's ACL.

use core::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::error::{Error, Invalid, Problem};
use crate::limits::MAX_DEVICE_ID_LEN;
use crate::sealed::{Validate, WireField};

/// The prefix reserved for service identities (authority, collector) in the
/// broker's ACL; no device id may start with it.
pub const SERVICE_ID_PREFIX: &str = "mctc-";

/// A device id: 1 to 64 bytes of `[a-z0-9._-]`, not starting with `.`
/// (so it is safe as a file name: never `.` or `..`) and not starting with
/// `mctc-` (reserved for service identities, which the broker ACL treats
/// differently). It is the certificate CN the broker confines to
/// `mctc/v1/dev/{id}/…`, so it is safe inside a topic level: no `/`, `+`
/// or `#`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(heapless::String<MAX_DEVICE_ID_LEN>);

impl DeviceId {
    /// Validates and copies `id`.
    pub fn new(id: &str) -> Result<Self, Error> {
        if let Some(problem) = Self::problem(id) {
            return Err(Error::BadDeviceId(problem));
        }
        heapless::String::try_from(id).map(Self).map_err(|_| {
            Error::BadDeviceId(Problem::TooLong {
                max: MAX_DEVICE_ID_LEN,
            })
        })
    }

    /// What is wrong with `id` as a device id, if anything.
    pub fn problem(id: &str) -> Option<Problem> {
        if id.is_empty() {
            Some(Problem::Empty)
        } else if id.len() > MAX_DEVICE_ID_LEN {
            Some(Problem::TooLong {
                max: MAX_DEVICE_ID_LEN,
            })
        } else if !id
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
            || id.starts_with('.')
            || id.starts_with(SERVICE_ID_PREFIX)
        {
            Some(Problem::BadSyntax)
        } else {
            None
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<&str> for DeviceId {
    type Error = Error;

    fn try_from(id: &str) -> Result<Self, Error> {
        Self::new(id)
    }
}

impl PartialEq<str> for DeviceId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = DeviceId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a device id")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<DeviceId, E> {
                DeviceId::new(v).map_err(|_| E::custom("invalid device id"))
            }
        }
        d.deserialize_str(IdVisitor)
    }
}

impl WireField for DeviceId {}

impl Validate for DeviceId {
    fn validate(&self, _field: &'static str) -> Result<(), Invalid> {
        // Every DeviceId was validated when it was made.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["a", "locker-17", "pos.eu_west-3", &"x".repeat(64)] {
            assert!(DeviceId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for (bad, problem) in [
            ("", Problem::Empty),
            (&*"x".repeat(65), Problem::TooLong { max: 64 }),
            ("Locker", Problem::BadSyntax),
            ("a/b", Problem::BadSyntax),
            ("a+", Problem::BadSyntax),
            ("a#", Problem::BadSyntax),
            ("a b", Problem::BadSyntax),
            ("..", Problem::BadSyntax),
            (".hidden", Problem::BadSyntax),
            ("mctc-authority", Problem::BadSyntax),
            ("é", Problem::BadSyntax),
        ] {
            assert_eq!(
                DeviceId::new(bad),
                Err(Error::BadDeviceId(problem)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn service_prefix_only_matters_at_the_start() {
        assert!(DeviceId::new("x-mctc-1").is_ok());
    }
}

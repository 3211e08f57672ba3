//! The authority's signed registry records: which AK a device enrolled and
//! its standing. The collector trusts a device's checkpoints only through a
//! record that verifies with a configured authority key.

use mctc_attest::verifier::{AkPublic, PublicKeyError};
use mctc_shim::messages::{DeviceStatus, RegistryRecord};
use mctc_shim::{AuthorityKey, Crypto, DeviceId, Signed};

/// A verified registry record, owned, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    /// The device.
    pub device: DeviceId,
    /// Strictly increasing per device; the highest wins.
    pub version: u64,
    /// The device's standing.
    pub status: DeviceStatus,
    /// Device class.
    pub class: String,
    /// Marshalled `TPM2B_PUBLIC` of the enrolled AK.
    pub ak_public: Vec<u8>,
    /// The AK's TPM name.
    pub ak_name: Vec<u8>,
    /// SHA-256 of the EK's `TPM2B_PUBLIC`.
    pub ek_sha256: [u8; 32],
    /// Issue time, Unix seconds.
    pub iat: u64,
    /// The COSE_Sign1 bytes as received (proof that the authority vouched).
    pub signed: Vec<u8>,
}

/// Why a registry record is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The envelope or payload does not verify with a trusted key.
    #[error("registry record does not verify: {0}")]
    Signature(mctc_shim::Error),
    /// The record is about another device than its topic or bundle names.
    #[error("registry record is for device {found}")]
    WrongDevice {
        /// The record's subject.
        found: String,
    },
    /// The AK public in the record is not an acceptable AK.
    #[error("registry record's AK: {0}")]
    Ak(PublicKeyError),
    /// The AK name in the record is not the name of its AK public.
    #[error("registry record's AK name does not match its AK public")]
    AkName,
}

/// Verifies a signed registry record for `device` with the trusted authority
/// `keys`, and checks its AK. Returns the entry and the parsed AK.
pub fn verify_registry(
    signed: &[u8],
    device: &DeviceId,
    keys: &[AuthorityKey],
    crypto: &dyn Crypto,
) -> Result<(RegistryEntry, AkPublic), RegistryError> {
    let record = RegistryRecord::open(signed, keys, crypto).map_err(RegistryError::Signature)?;
    if record.sub != *device {
        return Err(RegistryError::WrongDevice {
            found: record.sub.to_string(),
        });
    }
    let ak = AkPublic::parse(record.ak_public.as_bytes()).map_err(RegistryError::Ak)?;
    if ak.name() != record.ak_name.as_bytes() {
        return Err(RegistryError::AkName);
    }
    let entry = RegistryEntry {
        device: record.sub,
        version: record.version,
        status: record.status,
        class: record.class.as_str().to_owned(),
        ak_public: record.ak_public.as_bytes().to_vec(),
        ak_name: record.ak_name.as_bytes().to_vec(),
        ek_sha256: record.ek_sha256.0,
        iat: record.iat,
        signed: signed.to_vec(),
    };
    Ok((entry, ak))
}

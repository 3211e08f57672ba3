//! What the TPM worker and its handle share: how to reach the TPM, what it
//! says about itself, and the identity the authority enrolls. A module of
//! its own so the worker and the handle both build on it without importing
//! each other.

use std::path::PathBuf;

use crate::verifier::{AkKind, EkKind, public_key_fingerprint};

/// The TCTI used when none is configured: the kernel resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// How to reach and use the TPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmConfig {
    /// TCTI configuration: `device:/dev/tpmrm0` (default) or
    /// `swtpm:host=127.0.0.1,port=2321` (tests, demo).
    pub tcti: String,
    /// Accept a software TPM (swtpm, a simulator). A simulator gives no
    /// hardware protection to the keys; it is refused unless this is set.
    pub allow_software_tpm: bool,
    /// Where the attestation key's TPM-wrapped blob is kept (mode 0600).
    pub state_dir: PathBuf,
    /// Which endorsement key to use.
    pub ek_kind: EkKind,
    /// Which attestation key to create.
    pub ak_kind: AkKind,
}

impl TpmConfig {
    /// The defaults (hardware TPM via the kernel resource manager, ECC P-256
    /// EK and AK) with the given state directory.
    pub fn new(state_dir: impl Into<PathBuf>) -> TpmConfig {
        TpmConfig {
            tcti: DEFAULT_TCTI.to_owned(),
            allow_software_tpm: false,
            state_dir: state_dir.into(),
            ek_kind: EkKind::default(),
            ak_kind: AkKind::default(),
        }
    }
}

/// What the TPM says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmInfo {
    /// TPM_PT_MANUFACTURER as text (e.g. "IFX", "NTC", "IBM" for libtpms).
    pub manufacturer: String,
    /// TPM_PT_VENDOR_STRING_1..4 as text.
    pub vendor: String,
    /// TPM_PT_FIRMWARE_VERSION_1 and _2.
    pub firmware_version: u64,
    /// Whether this is a software simulator.
    pub simulator: bool,
}

/// The device's TPM identity, as the authority enrolls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The EK's marshalled `TPM2B_PUBLIC`.
    pub ek_public: Vec<u8>,
    /// The EK certificate (DER) from its NV index, if the TPM has one.
    pub ek_cert: Option<Vec<u8>>,
    /// The AK's marshalled `TPM2B_PUBLIC`.
    pub ak_public: Vec<u8>,
    /// The AK's TPM name (what a credential is bound to).
    pub ak_name: Vec<u8>,
}

impl Identity {
    /// SHA-256 of the EK's `TPM2B_PUBLIC` (allow-list key).
    pub fn ek_fingerprint(&self) -> [u8; 32] {
        public_key_fingerprint(&self.ek_public)
    }

    /// SHA-256 of the AK's `TPM2B_PUBLIC`.
    pub fn ak_fingerprint(&self) -> [u8; 32] {
        public_key_fingerprint(&self.ak_public)
    }
}

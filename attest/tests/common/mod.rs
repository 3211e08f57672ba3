//! Shared helpers for the swtpm-backed tests: each test starts its own swtpm
//! and its own state directory.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::path::Path;

use mctc_attest::device::{AkKind, EkKind, Tpm, TpmConfig};
use mctc_tests::Swtpm;

/// A config for `tpm` that allows the simulator.
pub fn config(tpm: &Swtpm, state_dir: &Path) -> TpmConfig {
    TpmConfig {
        tcti: tpm.tcti(),
        allow_software_tpm: true,
        ..TpmConfig::new(state_dir)
    }
}

/// Opens the device side on `tpm` with the given key kinds.
pub async fn open(tpm: &Swtpm, state_dir: &Path, ek: EkKind, ak: AkKind) -> Tpm {
    Tpm::open(TpmConfig {
        ek_kind: ek,
        ak_kind: ak,
        ..config(tpm, state_dir)
    })
    .await
    .expect("open the TPM worker on swtpm")
}

/// Opens with the defaults (ECC P-256 EK and AK).
pub async fn open_default(tpm: &Swtpm, state_dir: &Path) -> Tpm {
    open(tpm, state_dir, EkKind::EccP256, AkKind::EccP256).await
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// The SHA-256 PCR extend operation: new = SHA-256(old || digest).
pub fn extended(old: &[u8], digest: &[u8]) -> Vec<u8> {
    let mut data = old.to_vec();
    data.extend_from_slice(digest);
    sha256(&data).to_vec()
}

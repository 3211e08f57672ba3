//! mctc-attest: the hardware root of mctc.
//!
//! - [`device`] (feature `device`, on by default): the TPM on the device
//!   through tss-esapi. One worker thread owns the TPM context; the cloneable
//!   [`device::Tpm`] handle sends it requests. Identity (EK, AK), credential
//!   activation, quotes, PCR reads and extends, boot counters.
//! - [`verifier`]: pure Rust and ring, no TPM: `make_credential`, quote
//!   verification with a typed verdict, EK certificate validation or
//!   allow-listing, reference values.
//! - [`pcr`] and [`evidence`]: the types both sides share.
//!
//! This crate does no network IO. `attest/README.md` lists every verifier
//! check with the attack it stops.
#![forbid(unsafe_code)]

#[cfg(feature = "device")]
pub mod device;
mod error;
pub mod evidence;
pub mod pcr;
mod tpm_constants;
pub mod verifier;
mod wire;

pub use error::{AkBlobProblem, Error, ErrorClass, TpmError, TpmOp, TssCode};
pub use evidence::{BootCounters, ClockInfo, Evidence};
pub use pcr::{HashAlg, PcrError, PcrSelection, PcrValues};
pub use wire::{ParseError, ParseProblem};

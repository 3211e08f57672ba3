//! mctc-shim: the part of mctc that must behave identically in the Linux agent
//! and inside a payment terminal's or locker's firmware.
//!
//! No std, no alloc, no IO: capacities are named constants ([`limits`]) and
//! a full buffer is an `Err`, never a panic. Time comes in as a number,
//! crypto through the [`crypto::Crypto`] and [`crypto::Signer`] traits (ring
//! implements them behind the `ring` feature on hosted targets; firmware
//! plugs in its secure element).
//!
//! # What is here
//!
//! - [`wire`], [`messages`], [`artifact`], [`lineage`], [`topics`]: every MQTT
//!   payload of mctc and its topic. The crate README specifies each format
//!   byte for byte. Decoders borrow from the input, check every limit with a
//!   typed error and accept only the canonical encoding.
//! - [`cose`]: COSE_Sign1 / EdDSA envelopes; the protected content type
//!   keeps one signed kind from being accepted as another.
//! - [`artifact::verify_artifact`]: the device's artifact check, producing
//!   the [`artifact::VerifiedArtifact`] proof token.
//! - [`gate`]: the fail-closed gate state machine.
//! - [`lineage`]: record hashing, chain building ([`lineage::ChainHead`]) and
//!   verification ([`lineage::ChainVerifier`]), checkpoint qualifying data.
//! - `api` (feature `alloc`): the device's local API and status schema
//!   (gate socket requests and answers, the status JSON), typed, shared by
//!   the agent, its CLI, the test harness and any console.
//! - [`bundle`]: the lineage bundle file (the one reader and writer the agent
//!   and the collector share); its owned form needs the `alloc` feature.
//!
//! # Size limits, and why they suffice
//!
//! | limit | value | why it is enough |
//! |---|---|---|
//! | [`limits::MAX_SCOPE_ENTRIES`] | 8 | a device governs a handful of operations (a terminal: capture, refund, void; a locker: unlock, reserve); one entry per operation |
//! | [`limits::MAX_ARTIFACT_LEN`] | 2048 bytes | an artifact with every field at its limit (64-byte ids, 8 scope entries with 32-byte ops, limits and currencies) encodes to under 1100 bytes (the `limits` test builds it) |
//! | [`limits::MAX_SIGNED_LEN`] | 2048 bytes | the largest signed message, a registry record with a 1024-byte AK public, stays under 1400 bytes |
//! | [`limits::MAX_REVOKED_PER_HEARTBEAT`] | 16 | each heartbeat repeats only the revocations of the last window; more within one window raise `since_epoch`, and devices that could have missed one close and re-attest (fail closed, self-healing) |
//! | [`limits::MAX_PCRS`] | 24 | a PC-client TPM bank has 24 PCRs |
//! | [`limits::MAX_ATTEST_LEN`] / [`limits::MAX_TPM_SIGNATURE_LEN`] | 1024 / 512 bytes | a quote's `TPMS_ATTEST` with 24 PCRs selected is under 250 bytes; an ECDSA P-256 `TPMT_SIGNATURE` about 72, RSA-2048 262 |
//! | [`limits::MAX_RECORD_LEN`] | 2048 bytes | the largest record, a checkpoint with attest and signature at their limits, stays under 1800 bytes |
//! | [`limits::MAX_BATCH_RECORDS`] / [`limits::MAX_BATCH_LEN`] | 64 / 65 536 bytes | typical records are 100–200 bytes; 64 per batch keeps ack round trips few while a batch stays far below MQTT and broker limits |
//! | [`limits::MAX_EK_CERT_LEN`] | 4096 bytes | vendor EK certificates are 1–2 KiB |
//! | [`limits::MAX_DEVICE_ID_LEN`] | 64 bytes | the broker ACL and file names use it; fleet ids are short |
//!
//! Stack, not heap: the largest working buffers are the 2048-byte
//! Sig_structure when verifying a signed message and the decoded message
//! itself (a heartbeat with 16 device ids is about 1.1 KiB).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(clippy::indexing_slicing)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[cfg(feature = "alloc")]
pub mod api;
pub mod artifact;
pub mod bundle;
mod codec;
pub mod cose;
pub mod crypto;
pub mod error;
pub mod gate;
pub mod id;
pub mod limits;
pub mod lineage;
pub mod messages;
pub mod receipt;
pub mod topics;
pub mod tpm;
pub mod wire;

pub use crate::artifact::{VerifiedArtifact, VerifyContext, verify_artifact};
pub use crate::cose::{AuthorityKey, CollectorKey, Signed};
pub use crate::crypto::{Crypto, Signer};
#[cfg(feature = "ring")]
pub use crate::crypto::{RingCrypto, RingSigner};
pub use crate::error::{Error, ErrorClass, MessageKind};
pub use crate::gate::{Gate, GateConfig, GateEvent, GateState, OpRequest, Verdict};
pub use crate::id::DeviceId;
pub use crate::receipt::{Receipt, VerifiedReceipt, verify_receipt};
pub use crate::wire::Message;

/// Traits the crate's types implement but other crates must not: they carry
/// the validation pass and the map-field behaviour of the wire format.
mod sealed {
    use crate::error::Invalid;

    /// Checks the limits and rules of a decoded or to-be-encoded value.
    pub trait Validate {
        /// `field` names the enclosing field for error reports.
        fn validate(&self, field: &'static str) -> Result<(), Invalid>;
    }

    /// How a value behaves as a field of a wire map.
    pub trait WireField: Sized {
        /// Whether the field is written (an `Option` that is `None` is not).
        fn present(&self) -> bool {
            true
        }

        /// The value of a field whose key is absent, if absence is allowed.
        fn missing() -> Option<Self> {
            None
        }
    }

    /// Everything a message type needs to travel.
    pub trait Wire<'a>: serde::Serialize + serde::Deserialize<'a> + Validate + Sized {}
    impl<'a, T: serde::Serialize + serde::Deserialize<'a> + Validate + Sized> Wire<'a> for T {}
}

//! The collector's receipt key: its own Ed25519 key (never the
//! authority's), with which every lineage ack is signed as a shim
//! [`Receipt`]. On disk as PEM: `receipt.key` (PKCS#8, 0600, refused if
//! others can read it) and `receipt.pub` (SubjectPublicKeyInfo, given to
//! devices and auditors); `mctc-collector keygen` writes both.

use std::fmt;
use std::path::Path;

use mctc_shim::limits::MAX_SIGNED_LEN;
use mctc_shim::messages::AckAnomaly;
use mctc_shim::wire::{Bytes, Version};
use mctc_shim::{DeviceId, Receipt, RingCrypto, Signer};
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::error::Error;

/// File stem of the receipt key pair (`receipt.key`, `receipt.pub`).
pub const KEY_STEM: &str = "receipt";

/// The collector's receipt signing key.
pub struct ReceiptSigner {
    pair: Ed25519KeyPair,
    public: [u8; 32],
}

impl fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never key material; the public key names the key.
        f.debug_struct("ReceiptSigner")
            .field("public", &hex::encode(self.public))
            .finish()
    }
}

impl ReceiptSigner {
    /// Reads the PKCS#8 PEM key (refused if others can read it).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let pair = mctc_service::keys::read_signing_key(path)?;
        Self::from_pair(pair).ok_or_else(|| Error::Config {
            path: path.to_owned(),
            reason: "the Ed25519 public key is not 32 bytes".into(),
        })
    }

    /// Wraps a key pair (tests build one from a seed).
    pub fn from_pair(pair: Ed25519KeyPair) -> Option<Self> {
        let public = <[u8; 32]>::try_from(pair.public_key().as_ref()).ok()?;
        Some(Self { pair, public })
    }

    /// A key from a 32-byte seed (tests and fixtures only need this).
    pub fn from_seed(seed: &[u8; 32]) -> Option<Self> {
        Ed25519KeyPair::from_seed_unchecked(seed)
            .ok()
            .and_then(Self::from_pair)
    }

    /// Signs a receipt for the verified chain `0 ..= seq` of `device`.
    /// `None` only if the receipt cannot be encoded, which a valid device
    /// id and integers never cause; the caller then sends nothing (the
    /// device prunes nothing and resends).
    pub fn sign(&self, fields: &ReceiptFields<'_>, time_ms: u64) -> Option<Vec<u8>> {
        let receipt = Receipt {
            v: Version::CURRENT,
            device: fields.device.clone(),
            seq: fields.seq,
            hash: Bytes(fields.hash),
            time_ms,
            checkpoint: fields.checkpoint,
            anomaly: fields.anomaly.map(|(a, _)| a),
            at_seq: fields.anomaly.map(|(_, s)| s),
            log_checkpoint: None,
            inclusion_proof: None,
        };
        let mut buf = [0u8; MAX_SIGNED_LEN];
        match receipt.sign(self, &RingCrypto, &mut buf) {
            Ok(bytes) => Some(bytes.to_vec()),
            Err(error) => {
                tracing::error!(device = %fields.device, %error, "could not sign a receipt");
                None
            }
        }
    }
}

/// What a receipt states, apart from the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptFields<'a> {
    /// The device.
    pub device: &'a DeviceId,
    /// The verified chain's last seq.
    pub seq: u64,
    /// The hash of record `seq` as stored.
    pub hash: [u8; 32],
    /// The newest verified checkpoint record at or below `seq`.
    pub checkpoint: Option<u64>,
    /// What stopped the chain, and where.
    pub anomaly: Option<(AckAnomaly, u64)>,
}

impl Signer for ReceiptSigner {
    fn public_key(&self) -> [u8; 32] {
        self.public
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], mctc_shim::Error> {
        <[u8; 64]>::try_from(self.pair.sign(message).as_ref()).map_err(|_| mctc_shim::Error::Signer)
    }
}

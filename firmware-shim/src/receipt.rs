//! Lineage receipts: the collector's signed acknowledgement of a device's
//! lineage, the only thing a device prunes on.
//!
//! A receipt is a COSE_Sign1 (EdDSA) by a **collector receipt key**, never
//! the authority's, with its own content type
//! (`application/vnd.mctc.receipt+cbor`). It says: at `time_ms`, this
//! collector held the verified chain of `device` from seq 0 through `seq`,
//! and record `seq` as stored hashes to `hash`; `checkpoint` is the highest
//! seq at or below `seq` of a checkpoint record whose quote the collector
//! verified. A device prunes only through `checkpoint` (a checkpoint covers
//! itself and everything before it), after checking `seq` and `hash`
//! against its own log.
//!
//! Receipts are not a [`crate::Signed`] kind: they open only with
//! [`CollectorKey`]s ([`verify_receipt`]), so a key's role is checked, not
//! only its signature.
//!
//! # Growing the format
//!
//! Decoding is strict (unknown keys are rejected), so a new field would
//! break every deployed verifier. Keys 8 and 9 are therefore reserved now
//! as optional opaque byte strings for the collector's Merkle log: `8`
//! log checkpoint, `9` inclusion proof. A v1 verifier accepts them (they are
//! covered by the signature) and ignores their content; a v1 collector does
//! not write them until their content is specified. Anything else new
//! needs wire version 2.

use crate::cose::{self, CollectorKey};
use crate::crypto::{Crypto, Signer};
use crate::error::{Error, Invalid, MessageKind, Problem};
use crate::id::DeviceId;
use crate::limits::{MAX_RECEIPT_LOG_CHECKPOINT_LEN, MAX_RECEIPT_PROOF_LEN, MAX_SIGNED_LEN};
use crate::messages::AckAnomaly;
use crate::wire::{Bstr, Digest, Message, Version, wire_map, wire_message};

wire_map! {
    /// Collector → agent on `dev/{dev}/lineage/ack` (signed by the
    /// collector's receipt key).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Receipt<'a> {
        /// Key `0`: wire version (1).
        0 => v: Version,
        /// Key `1`: the device.
        1 => device: DeviceId,
        /// Key `2`: the collector holds the verified chain `0 ..= seq`.
        2 => seq: u64,
        /// Key `3`: the lineage hash of record `seq` as the collector stores it.
        3 => hash: Digest,
        /// Key `4`: the collector's wall clock when it signed, Unix ms.
        4 => time_ms: u64,
        /// Key `5`: the highest seq `≤ seq` of a checkpoint record the
        /// collector verified (absent: none yet). The device prunes only
        /// through it.
        5 => checkpoint: Option<u64>,
        /// Key `6`: what stopped the collector's chain, if anything.
        6 => anomaly: Option<AckAnomaly>,
        /// Key `7`: the seq the anomaly was found at (present exactly when
        /// `anomaly` is).
        7 => at_seq: Option<u64>,
        /// Key `8`: reserved for the collector log's checkpoint (opaque in v1).
        8 => log_checkpoint: Option<Bstr<'a, MAX_RECEIPT_LOG_CHECKPOINT_LEN>>,
        /// Key `9`: reserved for an inclusion proof in that log (opaque in v1).
        9 => inclusion_proof: Option<Bstr<'a, MAX_RECEIPT_PROOF_LEN>>,
    }
    check = check_receipt;
}
wire_message!(Receipt<'a>, MessageKind::Receipt);

fn check_receipt(r: &Receipt<'_>) -> Result<(), Invalid> {
    if r.checkpoint.is_some_and(|c| c > r.seq) {
        return Err(Invalid {
            field: "checkpoint",
            problem: Problem::Inconsistent,
        });
    }
    if r.anomaly.is_some() != r.at_seq.is_some() {
        return Err(Invalid {
            field: "at_seq",
            problem: Problem::Inconsistent,
        });
    }
    Ok(())
}

impl Receipt<'_> {
    /// Encodes and signs the receipt with the collector's receipt key into
    /// `buf`; returns the COSE_Sign1 bytes.
    pub fn sign<'b>(
        &self,
        signer: &dyn Signer,
        crypto: &dyn Crypto,
        buf: &'b mut [u8],
    ) -> Result<&'b [u8], Error> {
        let mut payload_buf = [0u8; MAX_SIGNED_LEN];
        let payload = self.encode(&mut payload_buf)?;
        cose::seal(MessageKind::Receipt, payload, signer, crypto, buf)
    }
}

/// A receipt whose envelope, encoding, signer role and device verified.
/// Only [`verify_receipt`] makes one. Whether it matches the device's own
/// log (`seq` sent, `hash` equal) is the device's check: only it holds the
/// log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReceipt<'a>(Receipt<'a>);

impl<'a> VerifiedReceipt<'a> {
    /// The receipt.
    pub const fn receipt(&self) -> &Receipt<'a> {
        &self.0
    }
}

/// Verifies a receipt: at most 2048 bytes; a COSE_Sign1 (EdDSA) by one of
/// the trusted collector `keys`; the receipt content type; the payload
/// decodes strictly; it is for `device`.
pub fn verify_receipt<'a>(
    bytes: &'a [u8],
    keys: &[CollectorKey],
    crypto: &dyn Crypto,
    device: &DeviceId,
) -> Result<VerifiedReceipt<'a>, Error> {
    let payload = cose::open(bytes, MessageKind::Receipt, keys, crypto)?;
    let receipt = Receipt::decode(payload)?;
    if receipt.device != *device {
        return Err(Error::WrongSubject {
            kind: MessageKind::Receipt,
        });
    }
    Ok(VerifiedReceipt(receipt))
}

#[cfg(all(test, feature = "ring"))]
#[expect(
    clippy::unwrap_used,
    reason = "test fixtures: a failure stops the test"
)]
mod tests {
    use super::*;
    use crate::crypto::{RingCrypto, RingSigner};
    use crate::error::EnvelopeError;
    use crate::{AuthorityKey, Signed};

    fn device(id: &str) -> DeviceId {
        DeviceId::new(id).unwrap()
    }

    fn receipt() -> Receipt<'static> {
        Receipt {
            v: Version::CURRENT,
            device: device("d1"),
            seq: 41,
            hash: crate::wire::Bytes([7; 32]),
            time_ms: 1_764_000_000_000,
            checkpoint: Some(40),
            anomaly: None,
            at_seq: None,
            log_checkpoint: None,
            inclusion_proof: None,
        }
    }

    fn signed(r: &Receipt<'_>, signer: &RingSigner) -> Vec<u8> {
        let mut buf = [0u8; MAX_SIGNED_LEN];
        r.sign(signer, &RingCrypto, &mut buf).unwrap().to_vec()
    }

    fn collector() -> (RingSigner, CollectorKey) {
        let s = RingSigner::from_seed(&[3; 32]).unwrap();
        let k = CollectorKey::new(&RingCrypto, s.public_key());
        (s, k)
    }

    #[test]
    fn a_receipt_round_trips_through_its_verifier() {
        let (s, k) = collector();
        let bytes = signed(&receipt(), &s);
        let v = verify_receipt(&bytes, &[k], &RingCrypto, &device("d1")).unwrap();
        assert_eq!(*v.receipt(), receipt());
    }

    #[test]
    fn another_key_is_an_unknown_key() {
        let (_, k) = collector();
        let rogue = RingSigner::from_seed(&[4; 32]).unwrap();
        let bytes = signed(&receipt(), &rogue);
        assert_eq!(
            verify_receipt(&bytes, &[k], &RingCrypto, &device("d1")),
            Err(Error::Envelope(EnvelopeError::UnknownKey))
        );
    }

    #[test]
    fn another_device_is_the_wrong_subject() {
        let (s, k) = collector();
        let bytes = signed(&receipt(), &s);
        assert_eq!(
            verify_receipt(&bytes, &[k], &RingCrypto, &device("d2")),
            Err(Error::WrongSubject {
                kind: MessageKind::Receipt
            })
        );
    }

    #[test]
    fn every_single_byte_change_is_rejected() {
        let (s, k) = collector();
        let bytes = signed(&receipt(), &s);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(
                verify_receipt(&bad, &[k], &RingCrypto, &device("d1")).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn the_role_is_checked_not_only_the_signature() {
        // A receipt key's signature on an authority kind is refused by the
        // authority's verifier (unknown key), and an authority-signed
        // message is not a receipt (content type).
        let (s, k) = collector();
        let control = crate::messages::Control {
            v: Version::CURRENT,
            sub: device("d1"),
            seq: 1,
            action: crate::messages::ControlAction::Contain,
            reason: crate::wire::Text("x"),
            iat: 1,
        };
        let mut buf = [0u8; MAX_SIGNED_LEN];
        let control_bytes = control.sign(&s, &RingCrypto, &mut buf).unwrap().to_vec();
        assert_eq!(
            verify_receipt(&control_bytes, &[k], &RingCrypto, &device("d1")),
            Err(Error::Envelope(EnvelopeError::WrongContentType {
                expected: MessageKind::Receipt
            }))
        );
        let receipt_bytes = signed(&receipt(), &s);
        let as_authority = AuthorityKey::new(&RingCrypto, s.public_key());
        assert!(
            crate::messages::Control::open(&receipt_bytes, &[as_authority], &RingCrypto).is_err()
        );
    }

    #[test]
    fn inconsistent_fields_do_not_encode() {
        let (s, _) = collector();
        let mut r = receipt();
        r.checkpoint = Some(42);
        let mut buf = [0u8; MAX_SIGNED_LEN];
        assert!(matches!(
            r.sign(&s, &RingCrypto, &mut buf),
            Err(Error::Invalid { .. })
        ));
        let mut r = receipt();
        r.anomaly = Some(AckAnomaly::Gap);
        assert!(matches!(
            r.sign(&s, &RingCrypto, &mut buf),
            Err(Error::Invalid { .. })
        ));
    }

    #[test]
    fn reserved_log_fields_are_accepted_and_covered() {
        let (s, k) = collector();
        let mut r = receipt();
        r.log_checkpoint = Some(Bstr(b"log.example/1\n42\nAAAA\n"));
        r.inclusion_proof = Some(Bstr(&[1; 64]));
        let bytes = signed(&r, &s);
        let v = verify_receipt(&bytes, &[k], &RingCrypto, &device("d1")).unwrap();
        assert_eq!(v.receipt().log_checkpoint, r.log_checkpoint);
    }
}

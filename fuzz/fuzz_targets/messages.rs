//! Every unsigned wire message's `Message::decode` (what the agent, the
//! authority and the collector call on payloads from the broker), the
//! signed kinds not covered by their own targets (refusal, enrollment
//! result, registry record), and `topics::parse` on topic names.
//!
//! Input: a selector byte, then the payload (see `Kind` for the order).
//! For signed kinds, one selector opens the bytes as received and another
//! signs them with the trusted key first.
//!
//! Invariants: no panic; whatever decodes re-encodes to exactly the input
//! (the format is canonical, so a decoder that accepted anything else
//! would let two encodings hash differently); a signed message that opens
//! re-signs to the same envelope; a parsed topic is rebuilt exactly.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use mctc_fuzz::cose::seal;
use mctc_fuzz::fixtures::{self, NONCE};
use mctc_fuzz::input::Input;
use mctc_shim::cose::Signed;
use mctc_shim::gate::verify_refusal;
use mctc_shim::lineage::Record;
use mctc_shim::messages::{
    EnrollChallenge, EnrollProof, EnrollRequest, EnrollResult, Evidence, LineageAck, Nonce,
    NonceRequest, Refusal, RegistryRecord,
};
use mctc_shim::{CollectorKey, Message, MessageKind, Receipt, RingCrypto, topics, verify_receipt};

fn plain<'a, T: Message<'a> + Debug>(bytes: &'a [u8]) {
    if let Ok(message) = T::decode(bytes) {
        let mut buf = vec![0u8; 8192];
        let encoded = message
            .encode(&mut buf)
            .expect("a decoded message encodes again");
        assert_eq!(
            encoded, bytes,
            "accepted a non-canonical encoding: {message:?}"
        );
    }
}

fn signed<'a, T: Signed<'a> + Debug>(bytes: &'a [u8]) -> Option<T> {
    let message = T::open(bytes, &fixtures::keys(), &RingCrypto).ok()?;
    assert_eq!(
        fixtures::sign(&message),
        bytes,
        "an opened message does not re-sign to its envelope"
    );
    Some(message)
}

fn refusal(bytes: &[u8]) {
    let opened: Option<Refusal> = signed(bytes);
    let device = fixtures::device();
    let verified = verify_refusal(bytes, &fixtures::keys(), &RingCrypto, &device, &NONCE);
    if let Ok(v) = &verified {
        assert_eq!(v.message().sub, device);
        assert_eq!(v.message().nonce.0, NONCE);
        assert_eq!(Some(v.message()), opened.as_ref());
    }
}

/// A receipt under the fixture collector key, or (for the `seal` helper,
/// which signs with the authority's fixture key) under that key taken as a
/// collector's: whatever verifies names the fixture device.
fn receipt(bytes: &[u8]) {
    let keys: Vec<CollectorKey> = fixtures::keys()
        .iter()
        .map(|k| CollectorKey::new(&RingCrypto, *k.public()))
        .chain([fixtures::collector_key()])
        .collect();
    if let Ok(v) = verify_receipt(bytes, &keys, &RingCrypto, &fixtures::device()) {
        assert_eq!(v.receipt().device, fixtures::device());
        assert!(v.receipt().checkpoint.is_none_or(|c| c <= v.receipt().seq));
    }
}

fn topic(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Some((which, device)) = topics::parse(text) {
        assert_eq!(which.topic(&device).as_str(), text);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let selector = input.u8() % 18;
    let payload = input.rest();
    match selector {
        0 => plain::<EnrollRequest<'_>>(payload),
        1 => plain::<EnrollChallenge<'_>>(payload),
        2 => plain::<EnrollProof>(payload),
        3 => plain::<NonceRequest>(payload),
        4 => plain::<Nonce>(payload),
        5 => plain::<Evidence<'_>>(payload),
        6 => plain::<LineageAck>(payload),
        7 => plain::<Record<'_>>(payload),
        8 => refusal(payload),
        9 => refusal(&seal(MessageKind::Refusal, payload)),
        10 => {
            signed::<EnrollResult>(payload);
        }
        11 => {
            signed::<EnrollResult>(&seal(MessageKind::EnrollResult, payload));
        }
        12 => {
            signed::<RegistryRecord<'_>>(payload);
        }
        13 => {
            signed::<RegistryRecord<'_>>(&seal(MessageKind::RegistryRecord, payload));
        }
        15 => plain::<Receipt<'_>>(payload),
        16 => receipt(payload),
        17 => receipt(&seal(MessageKind::Receipt, payload)),
        _ => topic(payload),
    }
});

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]
//! Artifact verification: the accepted case and every typed rejection.

mod common;

use common::*;
use mctc_shim::artifact::{Claims, ScopeEntry};
use mctc_shim::cose::{AuthorityKey, Signed};
use mctc_shim::error::{ArtifactError, EnvelopeError, Invalid, Problem};
use mctc_shim::limits::{MAX_ARTIFACT_LEN, MAX_SCOPE_ENTRIES, MAX_TTL_MS};
use mctc_shim::tpm::BootCounters;
use mctc_shim::wire::{Bytes, List, Token};
use mctc_shim::{Error, MessageKind, RingCrypto, Signer, VerifyContext, verify_artifact};

fn verify_with(
    bytes: &[u8],
    ctx: &VerifyContext<'_>,
) -> Result<mctc_shim::VerifiedArtifact, Error> {
    verify_artifact(bytes, ctx, &RingCrypto)
}

fn verify(bytes: &[u8]) -> Result<mctc_shim::VerifiedArtifact, Error> {
    let dev = device();
    let keys = keys();
    verify_with(bytes, &context(&dev, &keys))
}

#[test]
fn a_valid_artifact_verifies_with_every_claim_carried_over() {
    let a = verify(&sign(&claims())).unwrap();
    assert_eq!(a.sub(), &device());
    assert_eq!(a.cti(), &[0xc7; 16]);
    assert_eq!(a.boot(), BOOT);
    assert_eq!(a.pcr_digest(), &[0xd1; 32]);
    assert_eq!(
        a.pcr_selection().indices().collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5, 6, 7, 23]
    );
    assert_eq!(a.next_nonce(), &NEXT_NONCE);
    assert_eq!(a.hb_ms(), HB_MS);
    assert_eq!(a.hb_seq(), 100);
    assert_eq!(a.epoch(), 5);
    assert_eq!(a.received_ms(), RECEIVED_MS);
    assert_eq!(a.deadline_ms(), RECEIVED_MS + u64::from(TTL_MS));
    assert_eq!(a.scope().len(), 3);
    let capture = a.scope_for("capture").unwrap();
    assert_eq!(capture.max_amount(), Some(10_000));
    assert_eq!(capture.currency().unwrap().as_str(), "EUR");
    assert!(a.scope_for("refund").unwrap().fresh_attestation());
    assert!(a.scope_for("dispense").is_none());
}

#[test]
fn an_artifact_for_another_device_is_rejected() {
    let mut c = claims();
    c.sub = other_device();
    assert_eq!(
        verify(&sign(&c)),
        Err(Error::WrongSubject {
            kind: MessageKind::Artifact
        })
    );
}

#[test]
fn an_artifact_for_another_boot_is_rejected() {
    for boot in [
        BootCounters {
            reset: 4,
            restart: 1,
        },
        BootCounters {
            reset: 3,
            restart: 2,
        },
    ] {
        let mut c = claims();
        c.boot = boot;
        assert_eq!(verify(&sign(&c)), Err(ArtifactError::WrongBoot.into()));
    }
}

#[test]
fn an_artifact_answering_a_stale_nonce_is_rejected() {
    let mut c = claims();
    c.nonce = Bytes([0x99; 32]);
    assert_eq!(verify(&sign(&c)), Err(ArtifactError::NonceMismatch.into()));
}

#[test]
fn an_artifact_from_another_authority_name_is_rejected() {
    let mut c = claims();
    c.iss = Token("mctc-authority-2");
    assert_eq!(verify(&sign(&c)), Err(ArtifactError::WrongIssuer.into()));
}

#[test]
fn an_artifact_signed_by_an_untrusted_key_is_rejected() {
    let bytes = sign_with(&claims(), &rogue_signer());
    assert_eq!(verify(&bytes), Err(EnvelopeError::UnknownKey.into()));
}

#[test]
fn any_trusted_key_of_a_rotation_set_verifies() {
    let rogue = rogue_signer();
    let both = [
        AuthorityKey::new(&RingCrypto, rogue.public_key()),
        keys()[0],
    ];
    let dev = device();
    let ctx = context(&dev, &both);
    assert!(verify_with(&sign(&claims()), &ctx).is_ok());
    assert!(verify_with(&sign_with(&claims(), &rogue), &ctx).is_ok());
}

#[test]
fn a_bad_signature_is_rejected() {
    let mut bytes = sign(&claims());
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    assert_eq!(verify(&bytes), Err(EnvelopeError::BadSignature.into()));
}

#[test]
fn a_signature_by_another_key_under_the_trusted_kid_is_rejected() {
    // Sign with the rogue key, then splice in the trusted key's kid: the
    // kid is covered by the signature, and the trusted key does not verify
    // it.
    let good = sign(&claims());
    let mut forged = sign_with(&claims(), &rogue_signer());
    let kid_at = |b: &[u8]| b.windows(2).position(|w| w == [0x04, 0x48]).unwrap() + 2;
    let (g, f) = (kid_at(&good), kid_at(&forged));
    forged[f..f + 8].copy_from_slice(&good[g..g + 8]);
    assert_eq!(verify(&forged), Err(EnvelopeError::BadSignature.into()));
}

#[test]
fn an_unsupported_algorithm_is_rejected() {
    // Replace alg -8 (0x27) by ES256 (-7, 0x26) in the protected header.
    let mut bytes = sign(&claims());
    let at = bytes.windows(2).position(|w| w == [0x01, 0x27]).unwrap();
    bytes[at + 1] = 0x26;
    assert_eq!(
        verify(&bytes),
        Err(EnvelopeError::UnsupportedAlg(-7).into())
    );
}

#[test]
fn an_untagged_or_garbage_envelope_is_rejected() {
    let bytes = sign(&claims());
    assert_eq!(verify(&bytes[1..]), Err(EnvelopeError::NotTagged.into()));
    assert!(matches!(
        verify(&[0xd2, 0x84, 0x40]),
        Err(Error::Malformed {
            kind: MessageKind::CoseSign1,
            ..
        })
    ));
    assert!(matches!(
        verify(&[]),
        Err(Error::Envelope(EnvelopeError::NotTagged))
    ));
}

#[test]
fn an_expired_artifact_is_rejected_when_the_wall_clock_is_trusted() {
    let dev = device();
    let keys = keys();
    let bytes = sign(&claims());
    let exp_ms = (IAT + 3600) * 1000;
    for wall in [exp_ms, exp_ms + 1, exp_ms + 1_000_000] {
        let ctx = VerifyContext {
            wall_ms: Some(wall),
            ..context(&dev, &keys)
        };
        assert_eq!(
            verify_with(&bytes, &ctx),
            Err(ArtifactError::Expired.into())
        );
    }
    // Five seconds before exp: the deadline is exp, not receipt + ttl.
    let ctx = VerifyContext {
        wall_ms: Some(exp_ms - 5_000),
        ..context(&dev, &keys)
    };
    assert_eq!(
        verify_with(&bytes, &ctx).unwrap().deadline_ms(),
        RECEIVED_MS + 5_000
    );
    // Without a trusted wall clock exp is not consulted: ttl alone bounds.
    assert_eq!(
        verify(&bytes).unwrap().deadline_ms(),
        RECEIVED_MS + u64::from(TTL_MS)
    );
}

#[test]
fn too_many_scope_entries_are_a_typed_error() {
    const OPS: [&str; MAX_SCOPE_ENTRIES + 1] = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    let entries: Vec<ScopeEntry<'_>> = OPS
        .iter()
        .map(|op| ScopeEntry {
            op: Token(op),
            max_amount: None,
            currency: None,
            fresh_attestation: false,
        })
        .collect();
    // The encoder refuses to build it...
    assert!(List::<ScopeEntry<'_>, MAX_SCOPE_ENTRIES>::from_slice(&entries).is_none());
    // ...so hand-craft the payload: take a valid 8-entry artifact and bump
    // the scope array's length to 9 with one more entry.
    let mut c = claims();
    c.scope = List::from_slice(&entries[..8]).unwrap();
    let payload = encode_payload(&c);
    let at = payload
        .windows(6)
        .position(|w| w == [0x3a, 0x00, 0x01, 0x00, 0x07, 0x88])
        .unwrap()
        + 5;
    let mut tampered = payload[..at].to_vec();
    tampered.push(0x89);
    let entries_end = at + 1 + 8 * 6;
    tampered.extend_from_slice(&payload[at + 1..entries_end]);
    tampered.extend_from_slice(&[0xa2, 0x00, 0x61, b'i', 0x03, 0xf4]);
    tampered.extend_from_slice(&payload[entries_end..]);
    let bytes = reseal(&tampered);
    assert_eq!(
        verify(&bytes),
        Err(Error::Invalid {
            kind: MessageKind::Artifact,
            invalid: Invalid {
                field: "scope",
                problem: Problem::TooMany {
                    max: MAX_SCOPE_ENTRIES
                }
            }
        })
    );
}

#[test]
fn an_oversize_artifact_is_rejected_before_parsing() {
    let mut bytes = sign(&claims());
    bytes.resize(MAX_ARTIFACT_LEN + 1, 0);
    assert_eq!(
        verify(&bytes),
        Err(Error::Oversize {
            kind: MessageKind::Artifact,
            len: MAX_ARTIFACT_LEN + 1,
            max: MAX_ARTIFACT_LEN
        })
    );
}

#[test]
fn claims_outside_their_ranges_are_refused_by_encoder_and_decoder() {
    type Mutation = fn(&mut Claims<'static>);
    let cases: [(Mutation, &str, Problem); 6] = [
        (|c| c.ttl_ms = 0, "ttl_ms", Problem::OutOfRange),
        (|c| c.ttl_ms = MAX_TTL_MS + 1, "ttl_ms", Problem::OutOfRange),
        (|c| c.hb_ms = 999, "hb_ms", Problem::OutOfRange),
        (|c| c.exp = c.iat, "exp", Problem::Inconsistent),
        (|c| c.pcr_mask = 0, "pcr_mask", Problem::OutOfRange),
        (|c| c.pcr_alg = 0x0004, "pcr_alg", Problem::OutOfRange),
    ];
    for (mutate, field, problem) in cases {
        let mut c = claims();
        mutate(&mut c);
        let expected = Error::Invalid {
            kind: MessageKind::Artifact,
            invalid: Invalid { field, problem },
        };
        let mut buf = [0u8; 2048];
        assert_eq!(
            c.sign(&signer(), &RingCrypto, &mut buf).err(),
            Some(expected)
        );
        // A malicious or buggy signer could still emit it: the device
        // rejects it too.
        let bytes = reseal(&encode_unchecked(&c));
        assert_eq!(verify(&bytes), Err(expected), "{field}");
    }
}

#[test]
fn duplicate_operations_in_scope_are_rejected() {
    let mut c = claims();
    let entry = c.scope[0];
    c.scope.push(entry).unwrap();
    let bytes = reseal(&encode_unchecked(&c));
    assert_eq!(
        verify(&bytes),
        Err(Error::Invalid {
            kind: MessageKind::Artifact,
            invalid: Invalid {
                field: "scope",
                problem: Problem::Inconsistent
            }
        })
    );
}

#[test]
fn a_non_canonical_payload_is_rejected_even_when_signed() {
    // exp written as a 9-byte integer instead of the shortest form.
    let payload = encode_payload(&claims());
    let exp = IAT + 3600;
    let short: Vec<u8> = [&[0x04, 0x1a][..], &(exp as u32).to_be_bytes()].concat();
    let at = payload
        .windows(6)
        .position(|w| w == short.as_slice())
        .unwrap();
    let mut long = payload[..at].to_vec();
    long.extend_from_slice(&[0x04, 0x1b]);
    long.extend_from_slice(&exp.to_be_bytes());
    long.extend_from_slice(&payload[at + 6..]);
    assert_eq!(
        verify(&reseal(&long)),
        Err(Error::NonCanonical {
            kind: MessageKind::Artifact
        })
    );
}

#[test]
fn signed_messages_of_one_kind_are_rejected_as_any_other_kind() {
    use mctc_shim::messages::{
        ControlAction, DeviceStatus, EnrollResult, EnrollStatus, RefusalCode, RegistryRecord,
    };
    use mctc_shim::wire::{Bstr, Version};
    let keys = keys();
    let registry = RegistryRecord {
        v: Version::CURRENT,
        sub: device(),
        class: Token("locker"),
        ak_public: Bstr(&[1; 90]),
        ak_name: Bstr(&[2; 34]),
        ek_sha256: Bytes([3; 32]),
        status: DeviceStatus::Active,
        version: 1,
        iat: IAT,
    };
    let enroll = EnrollResult {
        v: Version::CURRENT,
        request_id: Bytes([9; 16]),
        sub: device(),
        status: EnrollStatus::Ok,
        iat: IAT,
    };
    let signed: [(MessageKind, Vec<u8>); 6] = [
        (MessageKind::Artifact, sign(&claims())),
        (MessageKind::Heartbeat, sign(&heartbeat(1))),
        (
            MessageKind::Control,
            sign(&control(1, ControlAction::Contain)),
        ),
        (
            MessageKind::Refusal,
            sign(&refusal(RefusalCode::BadEvidence, false)),
        ),
        (MessageKind::RegistryRecord, sign(&registry)),
        (MessageKind::EnrollResult, sign(&enroll)),
    ];
    let c = &RingCrypto;
    for (kind, bytes) in &signed {
        let results: [(MessageKind, Result<(), Error>); 6] = [
            (
                MessageKind::Artifact,
                Claims::open(bytes, &keys, c).map(drop),
            ),
            (
                MessageKind::Heartbeat,
                mctc_shim::messages::Heartbeat::open(bytes, &keys, c).map(drop),
            ),
            (
                MessageKind::Control,
                mctc_shim::messages::Control::open(bytes, &keys, c).map(drop),
            ),
            (
                MessageKind::Refusal,
                mctc_shim::messages::Refusal::open(bytes, &keys, c).map(drop),
            ),
            (
                MessageKind::RegistryRecord,
                RegistryRecord::open(bytes, &keys, c).map(drop),
            ),
            (
                MessageKind::EnrollResult,
                EnrollResult::open(bytes, &keys, c).map(drop),
            ),
        ];
        for (as_kind, result) in results {
            if as_kind == *kind {
                assert_eq!(result, Ok(()), "{kind} as itself");
            } else {
                assert_eq!(
                    result,
                    Err(EnvelopeError::WrongContentType { expected: as_kind }.into()),
                    "{kind} presented as {as_kind}"
                );
            }
        }
    }
}

/// The claims' canonical encoding (validated).
fn encode_payload(c: &Claims<'_>) -> Vec<u8> {
    use mctc_shim::Message;
    let mut buf = [0u8; 2048];
    c.encode(&mut buf).unwrap().to_vec()
}

/// The claims' encoding without the crate's validation: what a buggy or
/// compromised authority could emit.
fn encode_unchecked(c: &Claims<'_>) -> Vec<u8> {
    common::cbor::encode_unchecked(c)
}

/// Signs arbitrary payload bytes as an artifact with the fixture key,
/// bypassing the encoder's checks.
fn reseal(payload: &[u8]) -> Vec<u8> {
    common::cbor::seal(MessageKind::Artifact, payload, &signer())
}

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]
//! Wire formats: exact round trips of every message, golden encodings, the
//! strictness of decoding, and that the largest message of every kind fits
//! its limit.

mod common;

use common::*;
use mctc_shim::artifact::{Claims, Currency, ScopeEntry};
use mctc_shim::cose::Signed;
use mctc_shim::crypto::{Crypto, DOMAIN_ENROLL_PROOF};
use mctc_shim::error::{Invalid, Problem};
use mctc_shim::lineage::{
    AgentStop, Body, ChainHead, Checkpoint, Decision, Drift, DriftKind, GateContained, Record,
    Source, Stamp, VerdictCode,
};
use mctc_shim::messages::*;
use mctc_shim::tpm::{BootCounters, TPM_ALG_SHA256};
use mctc_shim::wire::{Bstr, Bytes, List, Text, Token, Version};
use mctc_shim::{DeviceId, Error, Message, MessageKind, RingCrypto};

const BIG: usize = 70_000;

fn long_id(tag: char) -> DeviceId {
    let mut s = String::from(tag);
    s.push_str(&"x".repeat(63));
    DeviceId::new(&s).unwrap()
}

/// Encodes, decodes, re-encodes: the value and the bytes must survive.
fn round_trip<'a, T: Message<'a> + PartialEq + std::fmt::Debug>(
    msg: &T,
    buf: &'a mut Vec<u8>,
) -> usize {
    buf.resize(BIG, 0);
    let len = msg.encode(buf).unwrap().len();
    buf.truncate(len);
    let bytes: &'a [u8] = buf;
    let decoded = T::decode(bytes).unwrap();
    assert_eq!(&decoded, msg);
    let mut again = vec![0u8; BIG];
    assert_eq!(decoded.encode(&mut again).unwrap(), bytes);
    len
}

fn signed_round_trip<'a, T: Signed<'a> + PartialEq + std::fmt::Debug>(
    msg: &T,
    out: &'a mut Vec<u8>,
) -> usize {
    *out = sign(msg);
    let bytes: &'a [u8] = out;
    assert_eq!(&T::open(bytes, &keys(), &RingCrypto).unwrap(), msg);
    bytes.len()
}

fn enroll_request<'a>(
    ek: &'a [u8],
    cert: Option<&'a [u8]>,
    ak: &'a [u8],
    name: &'a [u8],
    dev: DeviceId,
) -> EnrollRequest<'a> {
    EnrollRequest {
        v: Version::CURRENT,
        request_id: Bytes([1; 16]),
        device: dev,
        ek_public: Bstr(ek),
        ek_cert: cert.map(Bstr),
        ak_public: Bstr(ak),
        ak_name: Bstr(name),
    }
}

#[test]
fn every_unsigned_message_round_trips_exactly() {
    let mut buf = Vec::new();
    round_trip(
        &enroll_request(&[1; 300], None, &[2; 90], &[3; 34], device()),
        &mut buf,
    );
    round_trip(
        &enroll_request(&[1; 300], Some(&[4; 900]), &[2; 90], &[3; 34], device()),
        &mut buf,
    );
    round_trip(
        &EnrollChallenge {
            v: Version::CURRENT,
            request_id: Bytes([1; 16]),
            credential_blob: Bstr(&[5; 70]),
            encrypted_secret: Bstr(&[6; 256]),
        },
        &mut buf,
    );
    round_trip(
        &EnrollProof {
            v: Version::CURRENT,
            request_id: Bytes([1; 16]),
            proof: Bytes([7; 32]),
        },
        &mut buf,
    );
    for purpose in [NoncePurpose::Renew, NoncePurpose::FreshOp] {
        round_trip(
            &NonceRequest {
                v: Version::CURRENT,
                device: device(),
                purpose,
            },
            &mut buf,
        );
        round_trip(
            &Nonce {
                v: Version::CURRENT,
                nonce: Bytes(NONCE),
                purpose,
                expires_in_ms: 30_000,
                pcr_alg: 0x000b,
                pcr_mask: 0x00_4081,
            },
            &mut buf,
        );
    }
    round_trip(&evidence(&[9; 145], &[8; 72], 0x00ff), &mut buf);
    round_trip(
        &LineageAck {
            v: Version::CURRENT,
            device: device(),
            through_seq: None,
            anomaly: None,
            at_seq: None,
        },
        &mut buf,
    );
    round_trip(
        &LineageAck {
            v: Version::CURRENT,
            device: device(),
            through_seq: Some(41),
            anomaly: Some(AckAnomaly::Gap),
            at_seq: Some(42),
        },
        &mut buf,
    );
}

fn evidence<'a>(attest: &'a [u8], sig: &'a [u8], mask: u32) -> Evidence<'a> {
    let values: Vec<Bytes<32>> = (0..mask.count_ones())
        .map(|i| Bytes([i as u8; 32]))
        .collect();
    Evidence {
        v: Version::CURRENT,
        device: device(),
        nonce: Bytes(NONCE),
        attest: Bstr(attest),
        signature: Bstr(sig),
        pcr_alg: TPM_ALG_SHA256,
        pcr_mask: mask,
        pcr_values: List::from_slice(&values).unwrap(),
    }
}

#[test]
fn every_signed_message_round_trips_exactly() {
    let mut out = Vec::new();
    signed_round_trip(&claims(), &mut out);
    let mut no_scope = claims();
    no_scope.scope = List::new();
    signed_round_trip(&no_scope, &mut out);
    let mut h = heartbeat(7);
    h.revoked = List::from_slice(&[other_device()]).unwrap();
    signed_round_trip(&h, &mut out);
    for action in [
        ControlAction::Contain,
        ControlAction::Restore,
        ControlAction::Revoke,
    ] {
        signed_round_trip(&control(3, action), &mut out);
    }
    for code in [
        RefusalCode::BadEvidence,
        RefusalCode::StaleNonce,
        RefusalCode::Internal,
    ] {
        signed_round_trip(&refusal(code, true), &mut out);
    }
    let mut named = refusal(RefusalCode::PolicyMismatch, true);
    named.pcrs = Some(
        List::from_slice(&[
            PcrFinding {
                pcr: 14,
                problem: PcrProblem::Differs,
                expected: Some(Bytes([0xab; 8])),
                got: Some(Bytes([0xcd; 8])),
            },
            PcrFinding {
                pcr: 15,
                problem: PcrProblem::NotQuoted,
                expected: None,
                got: None,
            },
        ])
        .unwrap(),
    );
    signed_round_trip(&named, &mut out);
    signed_round_trip(&registry(&[1; 90], &[2; 34], "locker"), &mut out);
    for status in [
        EnrollStatus::Ok,
        EnrollStatus::ProofMismatch,
        EnrollStatus::Revoked,
    ] {
        signed_round_trip(
            &EnrollResult {
                v: Version::CURRENT,
                request_id: Bytes([1; 16]),
                sub: device(),
                status,
                iat: IAT,
            },
            &mut out,
        );
    }
}

fn registry<'a>(ak: &'a [u8], name: &'a [u8], class: &'a str) -> RegistryRecord<'a> {
    RegistryRecord {
        v: Version::CURRENT,
        sub: device(),
        class: Token(class),
        ak_public: Bstr(ak),
        ak_name: Bstr(name),
        ek_sha256: Bytes([3; 32]),
        status: DeviceStatus::Active,
        version: 9,
        iat: IAT,
    }
}

#[test]
fn golden_encodings_match_the_documented_format() {
    let d1 = DeviceId::new("d1").unwrap();
    let mut buf = [0u8; 64];
    let req = NonceRequest {
        v: Version::CURRENT,
        device: d1.clone(),
        purpose: NoncePurpose::Renew,
    };
    assert_eq!(
        req.encode(&mut buf).unwrap(),
        [0xa3, 0x00, 0x01, 0x01, 0x62, b'd', b'1', 0x02, 0x01]
    );
    let ack = LineageAck {
        v: Version::CURRENT,
        device: d1,
        through_seq: Some(500),
        anomaly: None,
        at_seq: None,
    };
    assert_eq!(
        ack.encode(&mut buf).unwrap(),
        [
            0xa3, 0x00, 0x01, 0x01, 0x62, b'd', b'1', 0x02, 0x19, 0x01, 0xf4
        ]
    );
    // The artifact payload starts with the CWT claims in key order.
    let payload = {
        let mut b = [0u8; 2048];
        claims().encode(&mut b).unwrap().to_vec()
    };
    assert_eq!(payload[0], 0xb1, "a map of 17 claims");
    assert_eq!(&payload[1..3], &[0x01, 0x6e], "iss, a 14-byte text");
    // The envelope: tag 18, array of 4, protected header {1: -8, 3: ct, 4: kid}.
    let signed = sign(&claims());
    assert_eq!(&signed[..2], &[0xd2, 0x84]);
    assert_eq!(&signed[2..8], &[0x58, 0x32, 0xa3, 0x01, 0x27, 0x03]);
}

#[test]
fn decoding_is_strict() {
    // NonceRequest {0: 1, 1: "d1", 2: 1}
    let good: &[u8] = &[0xa3, 0x00, 0x01, 0x01, 0x62, b'd', b'1', 0x02, 0x01];
    assert!(NonceRequest::decode(good).is_ok());
    let k = MessageKind::NonceRequest;
    let non_canonical = Error::NonCanonical { kind: k };
    let cases: [(&str, Vec<u8>, Option<Error>); 14] = [
        (
            "text keys",
            vec![0xa3, 0x61, b'v', 0x01, 0x01, 0x62, b'd', b'1', 0x02, 0x01],
            None,
        ),
        (
            "keys out of order",
            vec![0xa3, 0x01, 0x62, b'd', b'1', 0x00, 0x01, 0x02, 0x01],
            Some(non_canonical),
        ),
        (
            "non-minimal integer",
            vec![0xa3, 0x00, 0x18, 0x01, 0x01, 0x62, b'd', b'1', 0x02, 0x01],
            Some(non_canonical),
        ),
        (
            "indefinite map",
            vec![0xbf, 0x00, 0x01, 0x01, 0x62, b'd', b'1', 0x02, 0x01, 0xff],
            Some(non_canonical),
        ),
        (
            "self-describe tag",
            [&[0xd9, 0xd9, 0xf7][..], good].concat(),
            Some(non_canonical),
        ),
        ("trailing byte", [good, &[0x00]].concat(), None),
        (
            "duplicate key",
            vec![
                0xa4, 0x00, 0x01, 0x01, 0x62, b'd', b'1', 0x02, 0x01, 0x02, 0x01,
            ],
            None,
        ),
        (
            "unknown key",
            vec![
                0xa4, 0x00, 0x01, 0x01, 0x62, b'd', b'1', 0x02, 0x01, 0x03, 0x00,
            ],
            None,
        ),
        (
            "missing key",
            vec![0xa2, 0x00, 0x01, 0x01, 0x62, b'd', b'1'],
            None,
        ),
        (
            "wrong type",
            vec![0xa3, 0x00, 0x01, 0x01, 0x62, b'd', b'1', 0x02, 0x61, b'x'],
            None,
        ),
        (
            "unknown code",
            vec![0xa3, 0x00, 0x01, 0x01, 0x62, b'd', b'1', 0x02, 0x03],
            None,
        ),
        (
            "invalid device id",
            vec![0xa3, 0x00, 0x01, 0x01, 0x62, b'D', b'1', 0x02, 0x01],
            None,
        ),
        (
            "indefinite text",
            vec![
                0xa3, 0x00, 0x01, 0x01, 0x7f, 0x62, b'd', b'1', 0xff, 0x02, 0x01,
            ],
            None,
        ),
        ("truncated", good[..good.len() - 1].to_vec(), None),
    ];
    for (what, bytes, expected) in cases {
        let got = NonceRequest::decode(&bytes).unwrap_err();
        match expected {
            Some(e) => assert_eq!(got, e, "{what}"),
            None => assert!(
                matches!(got, Error::Malformed { kind, .. } if kind == k),
                "{what}: {got:?}"
            ),
        }
    }
    assert_eq!(
        NonceRequest::decode(&[0xa3, 0x00, 0x02, 0x01, 0x62, b'd', b'1', 0x02, 0x01]),
        Err(Error::Invalid {
            kind: k,
            invalid: Invalid {
                field: "v",
                problem: Problem::UnsupportedVersion(2)
            }
        })
    );
    // An absent optional field is omitted, never null.
    let null_option = [
        0xa4, 0x00, 0x01, 0x01, 0x62, b'd', b'1', 0x02, 0x05, 0x03, 0xf6,
    ];
    assert_eq!(
        LineageAck::decode(&null_option),
        Err(Error::NonCanonical {
            kind: MessageKind::LineageAck
        })
    );
}

#[test]
fn field_limits_are_typed_errors_on_both_sides() {
    let cert = vec![4u8; 4097];
    let too_long = enroll_request(&[1; 300], Some(&cert), &[2; 90], &[3; 34], device());
    let expected = Error::Invalid {
        kind: MessageKind::EnrollRequest,
        invalid: Invalid {
            field: "ek_cert",
            problem: Problem::TooLong { max: 4096 },
        },
    };
    let mut buf = vec![0u8; BIG];
    assert_eq!(too_long.encode(&mut buf), Err(expected));
    assert_eq!(
        EnrollRequest::decode(&cbor::encode_unchecked(&too_long)),
        Err(expected)
    );

    let mut buf = [0u8; 2048];
    for (class, problem) in [
        ("", Problem::Empty),
        ("two words", Problem::BadSyntax),
        (&*"c".repeat(33), Problem::TooLong { max: 32 }),
    ] {
        let r = registry(&[1; 90], &[2; 34], class);
        let expected = Error::Invalid {
            kind: MessageKind::RegistryRecord,
            invalid: Invalid {
                field: "class",
                problem,
            },
        };
        assert_eq!(
            r.sign(&signer(), &RingCrypto, &mut buf).err(),
            Some(expected)
        );
        let bytes = cbor::seal(
            MessageKind::RegistryRecord,
            &cbor::encode_unchecked(&r),
            &signer(),
        );
        assert_eq!(
            RegistryRecord::open(&bytes, &keys(), &RingCrypto),
            Err(expected)
        );
    }

    let mut e = evidence(&[9; 145], &[8; 72], 0b111);
    e.pcr_mask = 0b1111;
    assert_eq!(
        e.encode(&mut buf),
        Err(Error::Invalid {
            kind: MessageKind::Evidence,
            invalid: Invalid {
                field: "pcr_values",
                problem: Problem::Inconsistent
            }
        })
    );

    let mut h = heartbeat(1);
    h.since_epoch = h.epoch + 1;
    assert_eq!(
        h.sign(&signer(), &RingCrypto, &mut buf).err(),
        Some(Error::Invalid {
            kind: MessageKind::Heartbeat,
            invalid: Invalid {
                field: "since_epoch",
                problem: Problem::Inconsistent
            }
        })
    );

    // 17 revoked ids: the list cannot even hold them, so splice one more
    // into the encoding of 16.
    let ids: Vec<DeviceId> = (0..16)
        .map(|i| DeviceId::new(&format!("dev-{i}")).unwrap())
        .collect();
    let mut h = heartbeat(1);
    h.revoked = List::from_slice(&ids).unwrap();
    assert!(h.revoked.clone().push(device()).is_err());
    let mut payload = cbor::encode_unchecked(&h);
    let at = payload.windows(2).position(|w| w == [0x06, 0x90]).unwrap();
    payload[at + 1] = 0x91;
    payload.extend_from_slice(&[0x62, b'z', b'z']);
    let bytes = cbor::seal(MessageKind::Heartbeat, &payload, &signer());
    assert_eq!(
        Heartbeat::open(&bytes, &keys(), &RingCrypto),
        Err(Error::Invalid {
            kind: MessageKind::Heartbeat,
            invalid: Invalid {
                field: "revoked",
                problem: Problem::TooMany { max: 16 }
            }
        })
    );
}

#[test]
fn a_small_buffer_is_an_error_not_a_panic() {
    let mut tiny = [0u8; 8];
    assert_eq!(
        claims().encode(&mut tiny),
        Err(Error::BufferTooSmall {
            kind: MessageKind::Artifact
        })
    );
    assert_eq!(
        claims().sign(&signer(), &RingCrypto, &mut tiny).err(),
        Some(Error::BufferTooSmall {
            kind: MessageKind::Artifact
        })
    );
    let mut head = ChainHead::genesis(device());
    let body = Body::AgentStop(AgentStop {
        reason: Text("bye"),
    });
    let stamp = Stamp {
        boot: BOOT,
        mono_ms: 0,
        wall_ms: None,
    };
    assert!(head.append(&RingCrypto, stamp, body, &mut tiny).is_err());
    assert_eq!(
        head.next_seq(),
        0,
        "a failed append does not advance the chain"
    );
}

#[test]
fn the_enrollment_proof_is_the_documented_tagged_hash() {
    let c = RingCrypto;
    let proof = enroll_proof(&c, &[5; 32], &device(), &[6; 34]).unwrap();
    let expected = c.sha256(&[
        DOMAIN_ENROLL_PROOF,
        &[0],
        &32u64.to_be_bytes(),
        &[5; 32],
        &8u64.to_be_bytes(),
        b"locker-7",
        &34u64.to_be_bytes(),
        &[6; 34],
    ]);
    assert_eq!(proof, expected);
    assert_ne!(
        proof,
        enroll_proof(&c, &[5; 32], &other_device(), &[6; 34]).unwrap()
    );
    assert!(enroll_proof(&c, &[5; 65], &device(), &[6; 34]).is_err());
}

/// The largest message of every kind fits its limit, with the margins the
/// crate docs state.
#[test]
fn the_largest_message_of_every_kind_fits_its_limit() {
    let mut sizes: Vec<(MessageKind, usize)> = Vec::new();
    let mut buf = Vec::new();
    let dev = long_id('d');

    let (ek, cert, ak, name) = (
        vec![1u8; 1024],
        vec![2u8; 4096],
        vec![3u8; 1024],
        vec![4u8; 68],
    );
    let req = enroll_request(&ek, Some(&cert), &ak, &name, dev.clone());
    sizes.push((MessageKind::EnrollRequest, round_trip(&req, &mut buf)));

    let (blob, secret) = (vec![5u8; 256], vec![6u8; 512]);
    let ch = EnrollChallenge {
        v: Version::CURRENT,
        request_id: Bytes([1; 16]),
        credential_blob: Bstr(&blob),
        encrypted_secret: Bstr(&secret),
    };
    sizes.push((MessageKind::EnrollChallenge, round_trip(&ch, &mut buf)));

    let (attest, sig) = (vec![7u8; 1024], vec![8u8; 512]);
    let mut ev = evidence(&attest, &sig, 0xff_ffff);
    ev.device = dev.clone();
    ev.nonce = Bytes([0xff; 32]);
    sizes.push((MessageKind::Evidence, round_trip(&ev, &mut buf)));

    let ack = LineageAck {
        v: Version::CURRENT,
        device: dev.clone(),
        through_seq: Some(u64::MAX),
        anomaly: Some(AckAnomaly::ClockRegression),
        at_seq: Some(u64::MAX),
    };
    sizes.push((MessageKind::LineageAck, round_trip(&ack, &mut buf)));

    // Artifact: every field at its limit.
    let ops: Vec<String> = (0..8).map(|i| format!("{i}{}", "o".repeat(31))).collect();
    let entries: Vec<ScopeEntry<'_>> = ops
        .iter()
        .map(|op| ScopeEntry {
            op: Token(op),
            max_amount: Some(u64::MAX),
            currency: Currency::new("EUR"),
            fresh_attestation: true,
        })
        .collect();
    let iss = "i".repeat(64);
    let c = Claims {
        iss: Token(&iss),
        sub: dev.clone(),
        exp: u64::MAX,
        iat: u64::MAX - 1,
        cti: Bytes([0xff; 16]),
        v: Version::CURRENT,
        ttl_ms: 86_400_000,
        nonce: Bytes([0xff; 32]),
        pcr_alg: TPM_ALG_SHA256,
        pcr_mask: 0xff_ffff,
        pcr_digest: Bytes([0xff; 32]),
        boot: BootCounters {
            reset: u32::MAX,
            restart: u32::MAX,
        },
        scope: List::from_slice(&entries).unwrap(),
        next_nonce: Bytes([0xff; 32]),
        hb_ms: 3_600_000,
        hb_seq: u64::MAX,
        epoch: u64::MAX,
    };
    let artifact_len = signed_round_trip(&c, &mut buf);
    assert!(artifact_len < 1100, "artifact: {artifact_len}");
    sizes.push((MessageKind::Artifact, artifact_len));

    let ids: Vec<DeviceId> = (0..16).map(|i| long_id(char::from(b'a' + i))).collect();
    let hb = Heartbeat {
        v: Version::CURRENT,
        seq: u64::MAX,
        epoch: u64::MAX,
        since_epoch: u64::MAX,
        iat: u64::MAX,
        hb_ms: 3_600_000,
        revoked: List::from_slice(&ids).unwrap(),
    };
    sizes.push((MessageKind::Heartbeat, signed_round_trip(&hb, &mut buf)));

    let reason = "é".repeat(32);
    let ctl = Control {
        v: Version::CURRENT,
        sub: dev.clone(),
        seq: u64::MAX,
        action: ControlAction::Revoke,
        reason: Text(&reason),
        iat: u64::MAX,
    };
    sizes.push((MessageKind::Control, signed_round_trip(&ctl, &mut buf)));

    let mut rf = refusal(RefusalCode::Internal, true);
    rf.sub = dev.clone();
    rf.iat = u64::MAX;
    // As many PCRs as a refusal names, the highest indices, both prefixes.
    let (most, bank) = (
        mctc_shim::limits::MAX_REFUSAL_PCRS,
        mctc_shim::limits::MAX_PCRS,
    );
    let findings: Vec<PcrFinding> = (bank - most..bank)
        .map(|pcr| PcrFinding {
            pcr: u8::try_from(pcr).unwrap(),
            problem: PcrProblem::NotInPolicy,
            expected: Some(Bytes([0xff; 8])),
            got: Some(Bytes([0xff; 8])),
        })
        .collect();
    rf.pcrs = Some(List::from_slice(&findings).unwrap());
    sizes.push((MessageKind::Refusal, signed_round_trip(&rf, &mut buf)));

    // A receipt with the reserved log fields at their limits: it still fits,
    // so filling them later needs no new limit.
    let (log, proof) = (vec![9u8; 512], vec![10u8; 1024]);
    let receipt = mctc_shim::Receipt {
        v: Version::CURRENT,
        device: dev.clone(),
        seq: u64::MAX,
        hash: Bytes([0xff; 32]),
        time_ms: u64::MAX,
        checkpoint: Some(u64::MAX),
        anomaly: Some(AckAnomaly::ClockRegression),
        at_seq: Some(u64::MAX),
        log_checkpoint: Some(Bstr(&log)),
        inclusion_proof: Some(Bstr(&proof)),
    };
    let signer = mctc_shim::RingSigner::from_seed(&[0x5a; 32]).unwrap();
    let mut receipt_buf = [0u8; 2048];
    let receipt_bytes = receipt
        .sign(&signer, &RingCrypto, &mut receipt_buf)
        .unwrap()
        .to_vec();
    let key = mctc_shim::CollectorKey::new(&RingCrypto, mctc_shim::Signer::public_key(&signer));
    let opened = mctc_shim::verify_receipt(&receipt_bytes, &[key], &RingCrypto, &dev).unwrap();
    assert_eq!(*opened.receipt(), receipt);
    assert!(
        receipt_bytes.len() < 1900,
        "receipt: {}",
        receipt_bytes.len()
    );
    sizes.push((MessageKind::Receipt, receipt_bytes.len()));

    let class = "c".repeat(32);
    let mut reg = registry(&ak, &name, &class);
    reg.sub = dev.clone();
    reg.version = u64::MAX;
    reg.iat = u64::MAX;
    let registry_len = signed_round_trip(&reg, &mut buf);
    assert!(registry_len < 1400, "registry: {registry_len}");
    sizes.push((MessageKind::RegistryRecord, registry_len));

    let er = EnrollResult {
        v: Version::CURRENT,
        request_id: Bytes([0xff; 16]),
        sub: dev.clone(),
        status: EnrollStatus::Internal,
        iat: u64::MAX,
    };
    sizes.push((MessageKind::EnrollResult, signed_round_trip(&er, &mut buf)));

    // Records: the largest bodies.
    let stamp = Stamp {
        boot: BootCounters {
            reset: u32::MAX,
            restart: u32::MAX,
        },
        mono_ms: u64::MAX,
        wall_ms: Some(u64::MAX),
    };
    let (text64, text128) = ("é".repeat(32), "é".repeat(64));
    let op = "o".repeat(32);
    let bodies = [
        Body::Checkpoint(Checkpoint {
            seq: u64::MAX,
            head: Bytes([0xff; 32]),
            attest: Bstr(&attest),
            signature: Bstr(&sig),
        }),
        Body::Decision(Decision {
            op: Token(&op),
            amount: Some(u64::MAX),
            currency: Currency::new("EUR"),
            reference: Some(Text(&text64)),
            verdict: VerdictCode::Deny,
            deny: Some(mctc_shim::lineage::DenyCode::FreshAttestationInvalid),
            cti: Some(Bytes([0xff; 16])),
        }),
        Body::Drift(Drift {
            what: DriftKind::File,
            detail: Text(&text128),
        }),
        Body::GateContained(GateContained {
            source: Source::Control,
            control_seq: Some(u64::MAX),
            refusal: Some(RefusalCode::Internal),
            reason: Text(&text64),
        }),
    ];
    let mut record_max = 0;
    for body in bodies {
        let mut head = ChainHead::resume(dev.clone(), u64::MAX - 2, [0xff; 32]);
        let mut out = [0u8; 2048];
        let a = head.append(&RingCrypto, stamp, body, &mut out).unwrap();
        assert_eq!(Record::decode(a.bytes).unwrap().body, body);
        record_max = record_max.max(a.bytes.len());
    }
    assert!(record_max < 1800, "record: {record_max}");
    sizes.push((MessageKind::Record, record_max));

    // A batch of 64 records of 1000 bytes fits; the byte limit is enforced.
    let record = vec![0xa0u8; 1000];
    let slices: Vec<Bstr<'_, 2048>> = (0..64).map(|_| Bstr(record.as_slice())).collect();
    let batch = LineageBatch {
        v: Version::CURRENT,
        device: dev.clone(),
        records: List::from_slice(&slices).unwrap(),
    };
    let mut out = vec![0u8; BIG * 2];
    let len = batch.encode(&mut out).unwrap().len();
    assert_eq!(LineageBatch::decode(&out[..len]).unwrap(), batch);
    sizes.push((MessageKind::LineageBatch, len));
    let record = vec![0xa0u8; 2048];
    let slices: Vec<Bstr<'_, 2048>> = (0..64).map(|_| Bstr(record.as_slice())).collect();
    let too_big = LineageBatch {
        records: List::from_slice(&slices).unwrap(),
        ..batch
    };
    assert!(matches!(
        too_big.encode(&mut out),
        Err(Error::Oversize {
            kind: MessageKind::LineageBatch,
            ..
        })
    ));

    for (kind, len) in &sizes {
        assert!(*len <= kind.max_len(), "{kind}: {len} > {}", kind.max_len());
        println!("largest {kind}: {len} bytes (limit {})", kind.max_len());
    }
}

/// The authority names the PCRs a device quotes; a selection that is empty,
/// reaches past PCR 23 or names another bank is refused on both sides, and
/// a nonce from an authority that does not send one (an old peer) does not
/// decode: the device never quotes a selection nobody chose.
#[test]
fn nonce_pcr_selection_is_required_and_bounded() {
    let mut buf = vec![0u8; BIG];
    let good = Nonce {
        v: Version::CURRENT,
        nonce: Bytes(NONCE),
        purpose: NoncePurpose::Renew,
        expires_in_ms: 30_000,
        pcr_alg: TPM_ALG_SHA256,
        pcr_mask: 1 << 23,
    };
    assert_eq!(good.pcr_selection().indices().collect::<Vec<_>>(), [23]);
    round_trip(&good, &mut buf);
    for (alg, mask, field) in [
        (TPM_ALG_SHA256, 0, "pcr_mask"),
        (TPM_ALG_SHA256, 1 << 24, "pcr_mask"),
        (TPM_ALG_SHA256, 0x8000_0001, "pcr_mask"),
        (0x0004, 1, "pcr_alg"),
    ] {
        let bad = Nonce {
            pcr_alg: alg,
            pcr_mask: mask,
            ..good
        };
        let expected = Error::Invalid {
            kind: MessageKind::Nonce,
            invalid: Invalid {
                field,
                problem: Problem::OutOfRange,
            },
        };
        assert_eq!(
            bad.encode(&mut buf).err(),
            Some(expected),
            "{alg:#x} {mask:#x}"
        );
        let bytes = cbor::encode_unchecked(&bad);
        assert_eq!(
            Nonce::decode(&bytes).err(),
            Some(expected),
            "{alg:#x} {mask:#x}"
        );
    }

    // An old authority's nonce: keys 0-3 only.
    let mut old = Vec::new();
    cbor::head(5, 4, &mut old);
    cbor::head(0, 0, &mut old);
    cbor::head(0, 1, &mut old);
    cbor::head(0, 1, &mut old);
    cbor::bstr(&NONCE, &mut old);
    cbor::head(0, 2, &mut old);
    cbor::head(0, 1, &mut old);
    cbor::head(0, 3, &mut old);
    cbor::head(0, 30_000, &mut old);
    assert!(Nonce::decode(&old).is_err());
    // The same keys plus the selection decode: only the selection was
    // missing.
    let mut new = Vec::new();
    cbor::head(5, 6, &mut new);
    new.extend_from_slice(&old[1..]);
    cbor::head(0, 4, &mut new);
    cbor::head(0, u64::from(TPM_ALG_SHA256), &mut new);
    cbor::head(0, 5, &mut new);
    cbor::head(0, 1 << 23, &mut new);
    assert_eq!(Nonce::decode(&new), Ok(good));
}

/// A refusal's PCR findings are bounded and checked: an index beyond the
/// bank is invalid, not a panic; a decoder that does not know a key (what
/// an agent older than key 6 does with every refusal naming PCRs) rejects
/// the whole message, so the old agent hears no answer and stays closed.
#[test]
fn refusal_pcr_findings_are_checked_and_unknown_keys_fail_closed() {
    let mut buf = vec![0u8; 4096];
    let mut rf = refusal(RefusalCode::PolicyMismatch, false);
    rf.pcrs = Some(
        List::from_slice(&[PcrFinding {
            pcr: 24,
            problem: PcrProblem::Differs,
            expected: None,
            got: None,
        }])
        .unwrap(),
    );
    assert!(matches!(
        rf.encode(&mut buf),
        Err(Error::Invalid {
            invalid: Invalid {
                field: "pcr",
                problem: Problem::OutOfRange
            },
            ..
        })
    ));
    // Key 7 is to this decoder what key 6 is to an older one.
    let plain = refusal(RefusalCode::PolicyMismatch, false);
    let bytes = plain.encode(&mut buf).unwrap().to_vec();
    let mut extended = bytes.clone();
    // Map header 0xa6 (six entries) becomes 0xa7, plus `7: 0`.
    assert_eq!(extended[0], 0xa6);
    extended[0] = 0xa7;
    extended.extend_from_slice(&[0x07, 0x00]);
    assert!(matches!(
        Refusal::decode(&extended),
        Err(Error::Malformed { .. })
    ));
    assert_eq!(Refusal::decode(&bytes).unwrap(), plain);
}

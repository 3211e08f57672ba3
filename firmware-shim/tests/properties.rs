#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]
//! Property tests: decoders never panic on any input, encodings round-trip
//! exactly, any single-byte change of a signed message is rejected, and any
//! change to any record breaks the chain at that record.

mod common;

use common::*;
use mctc_shim::artifact::{Claims, Currency, ScopeEntry};
use mctc_shim::cose::Signed;
use mctc_shim::gate::{verify_control, verify_heartbeat, verify_refusal};
use mctc_shim::lineage::{
    AgentStart, AttestVerdict, Attested, Body, BreakKind, ChainHead, ChainVerifier, Checkpoint,
    CloseCode, ControlReceived, Decision, DenyCode, Drift, DriftKind, GateClosed, HeartbeatLapse,
    Record, Stamp, Step, VerdictCode,
};
use mctc_shim::messages::*;
use mctc_shim::tpm::{BootCounters, TPM_ALG_SHA256};
use mctc_shim::wire::{Bstr, Bytes, List, Text, Token, Version};
use mctc_shim::{DeviceId, Message, MessageKind, RingCrypto, verify_artifact};
use proptest::prelude::*;

/// Feeds `bytes` to every decoder and verifier of the crate; the test is
/// that none panics (each returns whatever it returns).
fn decode_everything(bytes: &[u8]) {
    let c = &RingCrypto;
    let keys = keys();
    let dev = device();
    let _ = EnrollRequest::decode(bytes);
    let _ = EnrollChallenge::decode(bytes);
    let _ = EnrollProof::decode(bytes);
    let _ = NonceRequest::decode(bytes);
    let _ = Nonce::decode(bytes);
    let _ = Evidence::decode(bytes);
    let _ = LineageAck::decode(bytes);
    let _ = mctc_shim::Receipt::decode(bytes);
    let collector = [mctc_shim::CollectorKey::new(c, *keys[0].public())];
    let _ = mctc_shim::verify_receipt(bytes, &collector, c, &dev);
    let _ = Record::decode(bytes);
    let _ = Claims::decode(bytes);
    let _ = Heartbeat::decode(bytes);
    let _ = mctc_shim::cose::ProtectedHeader::decode(bytes);
    if let Ok(batch) = LineageBatch::decode(bytes) {
        for record in batch.decode_records() {
            let _ = record;
        }
    }
    let _ = Claims::open(bytes, &keys, c);
    let _ = Refusal::open(bytes, &keys, c);
    let _ = Control::open(bytes, &keys, c);
    let _ = RegistryRecord::open(bytes, &keys, c);
    let _ = EnrollResult::open(bytes, &keys, c);
    let _ = verify_artifact(bytes, &context(&dev, &keys), c);
    let _ = verify_heartbeat(bytes, &keys, c);
    let _ = verify_control(bytes, &keys, c, &dev);
    let _ = verify_refusal(bytes, &keys, c, &dev, &NONCE);
    let _ = ChainVerifier::genesis(dev).push(c, bytes);
    let _ = mctc_shim::topics::parse(&String::from_utf8_lossy(bytes));
}

/// Valid encodings of every kind, as seeds for mutation.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = vec![
        sign(&claims()),
        sign(&heartbeat(3)),
        sign(&control(3, ControlAction::Contain)),
        sign(&refusal(RefusalCode::PolicyMismatch, true)),
    ];
    let mut buf = vec![0u8; 8192];
    let ev = Evidence {
        v: Version::CURRENT,
        device: device(),
        nonce: Bytes(NONCE),
        attest: Bstr(&[1; 100]),
        signature: Bstr(&[2; 72]),
        pcr_alg: TPM_ALG_SHA256,
        pcr_mask: 0b101,
        pcr_values: List::from_slice(&[Bytes([3; 32]), Bytes([4; 32])]).unwrap(),
    };
    out.push(ev.encode(&mut buf).unwrap().to_vec());
    let req = EnrollRequest {
        v: Version::CURRENT,
        request_id: Bytes([1; 16]),
        device: device(),
        ek_public: Bstr(&[1; 50]),
        ek_cert: Some(Bstr(&[2; 50])),
        ak_public: Bstr(&[3; 50]),
        ak_name: Bstr(&[4; 34]),
    };
    out.push(req.encode(&mut buf).unwrap().to_vec());
    let (records, _) = chain_of(&bodies_fixture(), 0);
    let slices: Vec<Bstr<'_, 2048>> = records.iter().map(|r| Bstr(r.as_slice())).collect();
    let batch = LineageBatch {
        v: Version::CURRENT,
        device: device(),
        records: List::from_slice(&slices).unwrap(),
    };
    out.push(batch.encode(&mut buf).unwrap().to_vec());
    out.extend(records.clone());
    out
}

fn bodies_fixture() -> Vec<Body<'static>> {
    vec![
        Body::AgentStart(AgentStart {
            sw_version: Token("0.1.0"),
        }),
        Body::Attested(Attested {
            nonce_hash: Bytes([9; 32]),
            verdict: AttestVerdict::Affirmed,
            refusal: None,
            cti: Some(Bytes([1; 16])),
        }),
        Body::GateClosed(GateClosed {
            reason: CloseCode::Drift,
            detail: Some(1),
        }),
        Body::Decision(Decision {
            op: Token("unlock"),
            amount: None,
            currency: None,
            reference: Some(Text("locker 12")),
            verdict: VerdictCode::Permit,
            deny: None,
            cti: Some(Bytes([1; 16])),
        }),
    ]
}

fn chain_of(bodies: &[Body<'_>], start_mono: u64) -> (Vec<Vec<u8>>, ChainHead) {
    let mut head = ChainHead::genesis(device());
    let mut out = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let mut buf = [0u8; 2048];
        let stamp = Stamp {
            boot: BOOT,
            mono_ms: start_mono + i as u64,
            wall_ms: None,
        };
        out.push(
            head.append(&RingCrypto, stamp, *body, &mut buf)
                .unwrap()
                .bytes
                .to_vec(),
        );
    }
    (out, head)
}

fn arb_token(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[!-~]{{1,{max}}}")).unwrap()
}

fn arb_text(max_chars: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!(".{{0,{max_chars}}}")).unwrap()
}

fn arb_device() -> impl Strategy<Value = DeviceId> {
    "[a-z0-9_][a-z0-9._-]{0,63}".prop_filter_map("reserved prefix", |s| DeviceId::new(&s).ok())
}

fn arb_currency() -> impl Strategy<Value = Option<Currency>> {
    proptest::option::of("[A-Z]{3}".prop_map(|s| Currency::new(&s).unwrap()))
}

/// An owned description of a record body, so generated bodies can borrow
/// their text from it.
#[derive(Debug, Clone)]
enum Spec {
    Start(String),
    Decision {
        op: String,
        amount: Option<u64>,
        currency: Option<Currency>,
        reference: Option<String>,
        permit: bool,
        cti: [u8; 16],
    },
    Drift(String),
    Lapse(Option<u64>, u32),
    Control(u64),
    Checkpoint(u64, [u8; 32], Vec<u8>, Vec<u8>),
}

impl Spec {
    fn body(&self) -> Body<'_> {
        match self {
            Self::Start(v) => Body::AgentStart(AgentStart {
                sw_version: Token(v),
            }),
            Self::Decision {
                op,
                amount,
                currency,
                reference,
                permit,
                cti,
            } => Body::Decision(Decision {
                op: Token(op),
                amount: *amount,
                currency: *currency,
                reference: reference.as_deref().map(Text),
                verdict: if *permit {
                    VerdictCode::Permit
                } else {
                    VerdictCode::Deny
                },
                deny: (!permit).then_some(DenyCode::OverLimit),
                cti: Some(Bytes(*cti)),
            }),
            Self::Drift(detail) => Body::Drift(Drift {
                what: DriftKind::File,
                detail: Text(detail),
            }),
            Self::Lapse(last_seq, window_ms) => Body::HeartbeatLapse(HeartbeatLapse {
                last_seq: *last_seq,
                window_ms: *window_ms,
            }),
            Self::Control(seq) => Body::ControlReceived(ControlReceived {
                seq: *seq,
                action: ControlAction::Restore,
            }),
            Self::Checkpoint(seq, head, attest, sig) => Body::Checkpoint(Checkpoint {
                seq: *seq,
                head: Bytes(*head),
                attest: Bstr(attest),
                signature: Bstr(sig),
            }),
        }
    }
}

fn arb_spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        arb_token(32).prop_map(Spec::Start),
        (
            arb_token(32),
            proptest::option::of(any::<u64>()),
            arb_currency(),
            proptest::option::of(arb_text(16)),
            any::<bool>(),
            any::<[u8; 16]>(),
        )
            .prop_map(
                |(op, amount, currency, reference, permit, cti)| Spec::Decision {
                    op,
                    amount,
                    currency,
                    reference,
                    permit,
                    cti,
                }
            ),
        arb_text(32).prop_map(Spec::Drift),
        (proptest::option::of(any::<u64>()), any::<u32>()).prop_map(|(s, w)| Spec::Lapse(s, w)),
        any::<u64>().prop_map(Spec::Control),
        (
            any::<u64>(),
            any::<[u8; 32]>(),
            proptest::collection::vec(any::<u8>(), 0..=1024),
            proptest::collection::vec(any::<u8>(), 0..=512),
        )
            .prop_map(|(seq, head, a, s)| Spec::Checkpoint(seq, head, a, s)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        decode_everything(&bytes);
    }

    #[test]
    fn mutated_valid_messages_never_panic_any_decoder(
        seed in 0usize..64,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let seeds = seeds();
        let mut bytes = seeds[seed % seeds.len()].clone();
        for (at, value) in edits {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        decode_everything(&bytes);
        bytes.truncate(cut % (bytes.len() + 1));
        decode_everything(&bytes);
    }

    #[test]
    fn claims_round_trip_exactly(
        iss in arb_token(64),
        sub in arb_device(),
        iat in 0u64..u64::MAX - 1,
        life in 1u64..1_000_000,
        ttl_ms in 1u32..=86_400_000,
        hb_ms in 1_000u32..=3_600_000,
        mask in 1u32..(1 << 24),
        ops in proptest::collection::btree_set(arb_token(32), 0..=8),
        limits in proptest::collection::vec((proptest::option::of(any::<u64>()), arb_currency(), any::<bool>()), 8),
        nums in any::<(u64, u64, u32, u32, [u8; 16], [u8; 32])>(),
    ) {
        let entries: Vec<ScopeEntry<'_>> = ops.iter().zip(&limits).map(|(op, (max_amount, currency, fresh))| ScopeEntry {
            op: Token(op.as_str()),
            max_amount: *max_amount,
            currency: *currency,
            fresh_attestation: *fresh,
        }).collect();
        let c = Claims {
            iss: Token(&iss),
            sub,
            exp: iat.saturating_add(life),
            iat,
            cti: Bytes(nums.4),
            v: Version::CURRENT,
            ttl_ms,
            nonce: Bytes(nums.5),
            pcr_alg: TPM_ALG_SHA256,
            pcr_mask: mask,
            pcr_digest: Bytes(nums.5),
            boot: BootCounters { reset: nums.2, restart: nums.3 },
            scope: List::from_slice(&entries).unwrap(),
            next_nonce: Bytes(nums.5),
            hb_ms,
            hb_seq: nums.0,
            epoch: nums.1,
        };
        let mut buf = [0u8; 2048];
        let bytes = c.encode(&mut buf).unwrap().to_vec();
        prop_assert_eq!(&Claims::decode(&bytes).unwrap(), &c);
        let signed = sign(&c);
        prop_assert!(signed.len() <= MessageKind::Artifact.max_len());
        prop_assert_eq!(&Claims::open(&signed, &keys(), &RingCrypto).unwrap(), &c);
    }

    #[test]
    fn evidence_and_heartbeats_round_trip_exactly(
        device in arb_device(),
        attest in proptest::collection::vec(any::<u8>(), 0..=1024),
        sig in proptest::collection::vec(any::<u8>(), 0..=512),
        mask in 1u32..(1 << 24),
        revoked in proptest::collection::vec(arb_device(), 0..=16),
        nums in any::<(u64, u64, u64, u64)>(),
    ) {
        let values: Vec<Bytes<32>> = (0..mask.count_ones()).map(|i| Bytes([i as u8; 32])).collect();
        let ev = Evidence {
            v: Version::CURRENT,
            device,
            nonce: Bytes([7; 32]),
            attest: Bstr(&attest),
            signature: Bstr(&sig),
            pcr_alg: TPM_ALG_SHA256,
            pcr_mask: mask,
            pcr_values: List::from_slice(&values).unwrap(),
        };
        let mut buf = vec![0u8; 4096];
        let bytes = ev.encode(&mut buf).unwrap().to_vec();
        prop_assert_eq!(&Evidence::decode(&bytes).unwrap(), &ev);

        let (a, b) = (nums.1.min(nums.2), nums.1.max(nums.2));
        let hb = Heartbeat {
            v: Version::CURRENT,
            seq: nums.0,
            epoch: b,
            since_epoch: a,
            iat: nums.3,
            hb_ms: 30_000,
            revoked: List::from_slice(&revoked).unwrap(),
        };
        let signed = sign(&hb);
        prop_assert_eq!(&Heartbeat::open(&signed, &keys(), &RingCrypto).unwrap(), &hb);
    }

    #[test]
    fn records_round_trip_exactly(
        spec in arb_spec(),
        seq in 0u64..u64::MAX,
        prev in any::<[u8; 32]>(),
        boot in any::<(u32, u32)>(),
        mono_ms in any::<u64>(),
        wall_ms in proptest::option::of(any::<u64>()),
    ) {
        let body = spec.body();
        let mut head = ChainHead::resume(device(), seq.wrapping_sub(1), prev);
        if seq == 0 {
            head = ChainHead::genesis(device());
        }
        let stamp = Stamp { boot: BootCounters { reset: boot.0, restart: boot.1 }, mono_ms, wall_ms };
        let mut buf = [0u8; 2048];
        let a = head.append(&RingCrypto, stamp, body, &mut buf).unwrap();
        let r = Record::decode(a.bytes).unwrap();
        prop_assert_eq!(r.body, body);
        prop_assert_eq!(r.seq, seq);
        prop_assert_eq!(r.mono_ms, mono_ms);
        prop_assert_eq!(r.wall_ms, wall_ms);
        let mut again = [0u8; 2048];
        prop_assert_eq!(r.encode(&mut again).unwrap(), a.bytes);
    }

    #[test]
    fn any_single_byte_change_of_a_signed_message_is_rejected(
        kind in 0usize..6,
        at in any::<proptest::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let keys = keys();
        let c = &RingCrypto;
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
        let mut heartbeat = heartbeat(5);
        heartbeat.revoked = List::from_slice(&[other_device()]).unwrap();
        let original = match kind {
            0 => sign(&claims()),
            1 => sign(&heartbeat),
            2 => sign(&control(4, ControlAction::Restore)),
            3 => sign(&refusal(RefusalCode::StaleNonce, false)),
            4 => sign(&registry),
            _ => sign(&enroll),
        };
        let mut bytes = original.clone();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        let rejected = match kind {
            0 => Claims::open(&bytes, &keys, c).is_err(),
            1 => Heartbeat::open(&bytes, &keys, c).is_err(),
            2 => Control::open(&bytes, &keys, c).is_err(),
            3 => Refusal::open(&bytes, &keys, c).is_err(),
            4 => RegistryRecord::open(&bytes, &keys, c).is_err(),
            _ => EnrollResult::open(&bytes, &keys, c).is_err(),
        };
        prop_assert!(rejected, "kind {} byte {} ^ {:#x} accepted", kind, i, flip);
        // And the original still verifies (the test can tell the two apart).
        let original_ok = match kind {
            0 => Claims::open(&original, &keys, c).is_ok(),
            1 => Heartbeat::open(&original, &keys, c).is_ok(),
            2 => Control::open(&original, &keys, c).is_ok(),
            3 => Refusal::open(&original, &keys, c).is_ok(),
            4 => RegistryRecord::open(&original, &keys, c).is_ok(),
            _ => EnrollResult::open(&original, &keys, c).is_ok(),
        };
        prop_assert!(original_ok);
    }

    #[test]
    fn any_change_to_any_record_breaks_the_chain_at_that_record(
        specs in proptest::collection::vec(arb_spec(), 1..12),
        which in any::<proptest::sample::Index>(),
        at in any::<proptest::sample::Index>(),
        flip in 1u8..=255,
    ) {
        // Checkpoints must commit to their predecessor: generated ones
        // would not, so they become drift records here.
        let specs: Vec<Spec> = specs
            .into_iter()
            .map(|s| match s {
                Spec::Checkpoint(..) => Spec::Drift("pcr 7".into()),
                other => other,
            })
            .collect();
        let bodies: Vec<Body<'_>> = specs.iter().map(Spec::body).collect();
        let (mut records, head) = chain_of(&bodies, 1_000);
        let i = which.index(records.len());
        let j = at.index(records[i].len());
        records[i][j] ^= flip;

        let mut v = ChainVerifier::genesis(device());
        let mut first_break = None;
        for (k, r) in records.iter().enumerate() {
            match v.push(&RingCrypto, r) {
                Ok(Step::Appended { .. }) => {}
                Ok(Step::Duplicate { .. }) => prop_assert!(false, "a changed record is no duplicate"),
                Err(b) => {
                    first_break = Some((k, b));
                    break;
                }
            }
        }
        match first_break {
            // The changed record itself fails to decode or to link...
            Some((k, b)) if k == i => prop_assert_eq!(b.seq, i as u64),
            // ...or it still links, and its successor's `prev` exposes it.
            Some((k, b)) => {
                prop_assert_eq!(k, i + 1);
                prop_assert_eq!(b.kind, BreakKind::LinkMismatch);
                prop_assert_eq!(b.seq, (i + 1) as u64);
            }
            // The last record has no successor: the trusted head exposes it.
            None => {
                prop_assert_eq!(i, records.len() - 1);
                let b = v.finish(head.head()).unwrap_err();
                prop_assert_eq!(b.kind, BreakKind::HeadMismatch);
                prop_assert_eq!(b.seq, i as u64);
            }
        }
    }
}

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]
//! Lineage records: hashing, chaining, and every way a chain breaks.

mod common;

use common::*;
use mctc_shim::crypto::{Crypto, DOMAIN_CHECKPOINT, DOMAIN_RECORD};
use mctc_shim::error::{Invalid, Problem};
use mctc_shim::lineage::{
    AgentStart, AttestVerdict, Attested, Body, BreakKind, ChainBreak, ChainHead, ChainVerifier,
    Checkpoint, Decision, DenyCode, GENESIS_PREV, Record, Stamp, Step, VerdictCode,
    checkpoint_qualifying_data, record_hash,
};
use mctc_shim::messages::LineageBatch;
use mctc_shim::tpm::BootCounters;
use mctc_shim::wire::{Bstr, Bytes, List, Text, Token, Version};
use mctc_shim::{Error, Message, MessageKind, RingCrypto};

fn stamp(mono_ms: u64) -> Stamp {
    Stamp {
        boot: BOOT,
        mono_ms,
        wall_ms: Some(1_750_000_000_000 + mono_ms),
    }
}

fn decision(i: u64) -> Body<'static> {
    Body::Decision(Decision {
        op: Token("capture"),
        amount: Some(100 + i),
        currency: mctc_shim::artifact::Currency::new("EUR"),
        reference: Some(Text("order")),
        verdict: VerdictCode::Permit,
        deny: None,
        cti: Some(Bytes([7; 16])),
    })
}

/// A chain of `n` records as the agent writes them.
fn chain(n: u64) -> (Vec<Vec<u8>>, ChainHead) {
    let mut head = ChainHead::genesis(device());
    let mut out = Vec::new();
    for i in 0..n {
        let body = if i == 0 {
            Body::AgentStart(AgentStart {
                sw_version: Token("0.1.0"),
            })
        } else {
            decision(i)
        };
        let mut buf = [0u8; 2048];
        let a = head
            .append(&RingCrypto, stamp(i * 10), body, &mut buf)
            .unwrap();
        assert_eq!(a.seq, i);
        out.push(a.bytes.to_vec());
    }
    (out, head)
}

fn walk(records: &[Vec<u8>]) -> Result<ChainVerifier, ChainBreak> {
    let mut v = ChainVerifier::genesis(device());
    for r in records {
        v.push(&RingCrypto, r)?;
    }
    Ok(v)
}

#[test]
fn a_chain_as_written_verifies_to_the_same_head() {
    let (records, head) = chain(20);
    let v = walk(&records).unwrap();
    assert_eq!(v.head(), head.head());
    assert_eq!(v.next_seq(), 20);
    v.finish(head.head()).unwrap();
    // The first record links to the genesis value.
    let first = Record::decode(&records[0]).unwrap();
    assert_eq!(first.prev.0, GENESIS_PREV);
    assert_eq!(first.seq, 0);
    assert_eq!(first.device, device());
    let second = Record::decode(&records[1]).unwrap();
    assert_eq!(second.prev.0, record_hash(&RingCrypto, &records[0]));
}

#[test]
fn the_record_hash_is_the_tagged_hash_of_the_exact_bytes() {
    let (records, _) = chain(1);
    let c = RingCrypto;
    let expected = c.sha256(&[
        DOMAIN_RECORD,
        &[0],
        &(records[0].len() as u64).to_be_bytes(),
        &records[0],
    ]);
    assert_eq!(record_hash(&c, &records[0]), expected);
}

#[test]
fn a_missing_record_is_a_gap() {
    let (mut records, _) = chain(5);
    records.remove(2);
    assert_eq!(
        walk(&records).unwrap_err(),
        ChainBreak {
            seq: 2,
            kind: BreakKind::Gap { found: 3 }
        }
    );
}

#[test]
fn an_old_record_after_newer_ones_is_reordered() {
    let (mut records, _) = chain(4);
    records.push(records[1].clone());
    assert_eq!(
        walk(&records).unwrap_err(),
        ChainBreak {
            seq: 4,
            kind: BreakKind::Reordered { found: 1 }
        }
    );
    let (mut records, _) = chain(4);
    records.swap(1, 2);
    assert_eq!(
        walk(&records).unwrap_err(),
        ChainBreak {
            seq: 1,
            kind: BreakKind::Gap { found: 2 }
        }
    );
}

#[test]
fn a_redelivered_record_is_a_harmless_duplicate() {
    let (records, head) = chain(3);
    let mut v = walk(&records).unwrap();
    assert_eq!(
        v.push(&RingCrypto, &records[2]),
        Ok(Step::Duplicate { seq: 2 })
    );
    assert_eq!(v.head(), head.head());
}

#[test]
fn a_second_record_with_the_same_seq_is_a_conflict() {
    let (records, _) = chain(3);
    // Same seq 2 and prev, different body: equivocation.
    let r1_hash = record_hash(&RingCrypto, &records[1]);
    let mut other = ChainHead::resume(device(), 1, r1_hash);
    let mut buf = [0u8; 2048];
    let forged = other
        .append(&RingCrypto, stamp(20), decision(99), &mut buf)
        .unwrap();
    let mut v = walk(&records).unwrap();
    assert_eq!(
        v.push(&RingCrypto, forged.bytes),
        Err(ChainBreak {
            seq: 3,
            kind: BreakKind::Conflict
        })
    );
}

#[test]
fn a_record_linking_to_the_wrong_predecessor_is_a_link_mismatch() {
    let (records, _) = chain(2);
    let mut other = ChainHead::resume(device(), 1, [0xab; 32]);
    let mut buf = [0u8; 2048];
    let bad = other
        .append(&RingCrypto, stamp(30), decision(2), &mut buf)
        .unwrap();
    let mut v = walk(&records).unwrap();
    assert_eq!(
        v.push(&RingCrypto, bad.bytes),
        Err(ChainBreak {
            seq: 2,
            kind: BreakKind::LinkMismatch
        })
    );
    // The verifier stays at the last good record.
    assert_eq!(v.next_seq(), 2);
}

#[test]
fn a_record_of_another_device_or_garbage_breaks_the_chain() {
    let mut other = ChainHead::genesis(other_device());
    let mut buf = [0u8; 2048];
    let foreign = other
        .append(&RingCrypto, stamp(0), decision(0), &mut buf)
        .unwrap();
    assert_eq!(
        walk(&[foreign.bytes.to_vec()]).unwrap_err(),
        ChainBreak {
            seq: 0,
            kind: BreakKind::WrongDevice
        }
    );
    assert_eq!(
        walk(&[vec![0xa0]]).unwrap_err(),
        ChainBreak {
            seq: 0,
            kind: BreakKind::Undecodable
        }
    );
}

#[test]
fn monotonic_time_may_not_go_back_within_one_boot() {
    let mut head = ChainHead::genesis(device());
    let mut records = Vec::new();
    for (boot, mono) in [
        (BOOT, 100),
        (BOOT, 100),
        (
            BootCounters {
                reset: 4,
                restart: 0,
            },
            5,
        ),
    ] {
        let mut buf = [0u8; 2048];
        let s = Stamp {
            boot,
            mono_ms: mono,
            wall_ms: None,
        };
        records.push(
            head.append(&RingCrypto, s, decision(1), &mut buf)
                .unwrap()
                .bytes
                .to_vec(),
        );
    }
    // A new boot may restart the clock; equal times are fine.
    walk(&records).unwrap();
    let mut buf = [0u8; 2048];
    let s = Stamp {
        boot: BootCounters {
            reset: 4,
            restart: 0,
        },
        mono_ms: 4,
        wall_ms: None,
    };
    records.push(
        head.append(&RingCrypto, s, decision(1), &mut buf)
            .unwrap()
            .bytes
            .to_vec(),
    );
    assert_eq!(
        walk(&records).unwrap_err(),
        ChainBreak {
            seq: 3,
            kind: BreakKind::ClockRegression
        }
    );
}

#[test]
fn a_checkpoint_must_commit_to_its_predecessor() {
    let (mut records, mut head) = chain(3);
    let c = RingCrypto;
    let (seq, qd) = head.checkpoint_qualifying_data(&c).unwrap();
    assert_eq!(seq, 2);
    assert_eq!(
        qd,
        checkpoint_qualifying_data(&c, &device(), 2, head.head())
    );
    // The definition, spelled out.
    let expected = c.sha256(&[
        DOMAIN_CHECKPOINT,
        &[0],
        &8u64.to_be_bytes(),
        b"locker-7",
        &8u64.to_be_bytes(),
        &2u64.to_be_bytes(),
        &32u64.to_be_bytes(),
        head.head(),
    ]);
    assert_eq!(qd, expected);

    let good = Body::Checkpoint(Checkpoint {
        seq: 2,
        head: Bytes(*head.head()),
        attest: Bstr(&[0x42; 150]),
        signature: Bstr(&[0x43; 72]),
    });
    let before = head.clone();
    let mut buf = [0u8; 2048];
    records.push(
        head.append(&c, stamp(40), good, &mut buf)
            .unwrap()
            .bytes
            .to_vec(),
    );
    walk(&records).unwrap();

    for (cp_seq, cp_head) in [(1, *before.head()), (2, [0; 32])] {
        let mut h = before.clone();
        let bad = Body::Checkpoint(Checkpoint {
            seq: cp_seq,
            head: Bytes(cp_head),
            attest: Bstr(&[0x42; 150]),
            signature: Bstr(&[0x43; 72]),
        });
        let mut buf = [0u8; 2048];
        let bytes = h
            .append(&c, stamp(40), bad, &mut buf)
            .unwrap()
            .bytes
            .to_vec();
        let mut v = walk(&records[..3]).unwrap();
        assert_eq!(
            v.push(&c, &bytes),
            Err(ChainBreak {
                seq: 3,
                kind: BreakKind::BadCheckpoint
            })
        );
    }
    assert_eq!(
        ChainHead::genesis(device()).checkpoint_qualifying_data(&c),
        None
    );
}

#[test]
fn the_end_of_a_chain_is_checked_against_a_trusted_head() {
    let (mut records, head) = chain(3);
    let last = records.len() - 1;
    // Rewrite the last record's body without breaking its own link.
    let r1 = record_hash(&RingCrypto, &records[1]);
    let mut forger = ChainHead::resume(device(), 1, r1);
    let mut buf = [0u8; 2048];
    records[last] = forger
        .append(&RingCrypto, stamp(20), decision(42), &mut buf)
        .unwrap()
        .bytes
        .to_vec();
    let v = walk(&records).unwrap();
    assert_eq!(
        v.finish(head.head()),
        Err(ChainBreak {
            seq: 2,
            kind: BreakKind::HeadMismatch
        })
    );
}

#[test]
fn a_verifier_resumes_after_acknowledged_records() {
    let (records, head) = chain(6);
    let r2 = record_hash(&RingCrypto, &records[2]);
    let mut v = ChainVerifier::resume(device(), 2, r2);
    for r in &records[3..] {
        v.push(&RingCrypto, r).unwrap();
    }
    assert_eq!(v.head(), head.head());
}

#[test]
fn a_batch_carries_records_byte_for_byte() {
    let (records, _) = chain(10);
    let slices: Vec<Bstr<'_, 2048>> = records.iter().map(|r| Bstr(r.as_slice())).collect();
    let batch = LineageBatch {
        v: Version::CURRENT,
        device: device(),
        records: List::from_slice(&slices).unwrap(),
    };
    let mut buf = vec![0u8; 65_536];
    let bytes = batch.encode(&mut buf).unwrap().to_vec();
    let decoded = LineageBatch::decode(&bytes).unwrap();
    assert_eq!(decoded, batch);
    let mut v = ChainVerifier::genesis(device());
    for (raw, record) in decoded.records.iter().zip(decoded.decode_records()) {
        let record = record.unwrap();
        assert!(
            matches!(v.push(&RingCrypto, raw.0), Ok(Step::Appended { record: r, .. }) if r == record)
        );
    }
    assert_eq!(v.next_seq(), 10);

    let empty = LineageBatch {
        v: Version::CURRENT,
        device: device(),
        records: List::new(),
    };
    assert_eq!(
        empty.encode(&mut buf),
        Err(Error::Invalid {
            kind: MessageKind::LineageBatch,
            invalid: Invalid {
                field: "records",
                problem: Problem::Empty
            }
        })
    );
}

#[test]
fn records_decode_only_in_canonical_key_order_with_known_kinds() {
    let (records, _) = chain(2);
    let good = &records[1];
    // Attested body under the Decision kind code: the body does not match.
    let mut wrong_kind = good.clone();
    let at = wrong_kind.windows(2).position(|w| w == [0x07, 11]).unwrap();
    wrong_kind[at + 1] = 4;
    assert!(matches!(
        Record::decode(&wrong_kind),
        Err(Error::Malformed {
            kind: MessageKind::Record,
            ..
        })
    ));
    // An unknown kind.
    wrong_kind[at + 1] = 0x17;
    assert!(matches!(
        Record::decode(&wrong_kind),
        Err(Error::Malformed { .. })
    ));
    // Version 2.
    let mut v2 = good.clone();
    assert_eq!(&v2[1..3], &[0x00, 0x01]);
    v2[2] = 0x02;
    assert_eq!(
        Record::decode(&v2),
        Err(Error::Invalid {
            kind: MessageKind::Record,
            invalid: Invalid {
                field: "v",
                problem: Problem::UnsupportedVersion(2)
            }
        })
    );
    // Keys 0 and 1 swapped is not canonical (and the decoder refuses the
    // order outright).
    let attested = Body::Attested(Attested {
        nonce_hash: Bytes([1; 32]),
        verdict: AttestVerdict::Refused,
        refusal: Some(mctc_shim::messages::RefusalCode::PolicyMismatch),
        cti: None,
    });
    let mut head = ChainHead::genesis(device());
    let mut buf = [0u8; 2048];
    let bytes = head
        .append(&RingCrypto, stamp(1), attested, &mut buf)
        .unwrap()
        .bytes
        .to_vec();
    let rec = Record::decode(&bytes).unwrap();
    assert_eq!(rec.body, attested);
    // [map head] [0x00 0x01] [0x01 0x68 "locker-7"] …
    let (v_entry, device_entry) = (&bytes[1..3], &bytes[3..13]);
    assert_eq!(device_entry[..2], [0x01, 0x68]);
    let mut swapped = vec![bytes[0]];
    swapped.extend_from_slice(device_entry);
    swapped.extend_from_slice(v_entry);
    swapped.extend_from_slice(&bytes[13..]);
    assert_eq!(swapped.len(), bytes.len());
    assert!(matches!(
        Record::decode(&swapped),
        Err(Error::Malformed { .. })
    ));
}

#[test]
fn a_denied_decision_records_its_reason() {
    let body = Body::Decision(Decision {
        op: Token("capture"),
        amount: Some(1),
        currency: None,
        reference: None,
        verdict: VerdictCode::Deny,
        deny: Some(DenyCode::OverLimit),
        cti: None,
    });
    let mut head = ChainHead::genesis(device());
    let mut buf = [0u8; 512];
    let bytes = head
        .append(&RingCrypto, stamp(1), body, &mut buf)
        .unwrap()
        .bytes;
    assert_eq!(Record::decode(bytes).unwrap().body, body);
}

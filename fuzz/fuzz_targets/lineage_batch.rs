//! Lineage batches as the collector receives them on `dev/{dev}/lineage`:
//! `LineageBatch::decode`, `decode_records`, and `ChainVerifier::push` over
//! the records (from genesis, and resumed mid-chain as the collector does
//! at its stored head).
//!
//! Input: a batch payload, as received.
//!
//! Invariants: no panic; a decoded batch re-encodes to the input;
//! `decode_records` and the verifier agree on which records decode; the
//! verifier only moves forward by one seq per appended record and its head
//! is the hash of the last record it appended; a record that fails leaves
//! the verifier where it was.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mctc_shim::lineage::{BreakKind, ChainVerifier, Step, record_hash};
use mctc_shim::messages::LineageBatch;
use mctc_shim::{Message, RingCrypto};

fn walk(mut verifier: ChainVerifier, batch: &LineageBatch<'_>) {
    for (bytes, decoded) in batch.records.iter().zip(batch.decode_records()) {
        let before = verifier.clone();
        match verifier.push(&RingCrypto, bytes.0) {
            Ok(Step::Appended { record, hash }) => {
                let record_ok =
                    decoded.expect("the verifier appended a record that does not decode");
                assert_eq!(record, record_ok);
                assert_eq!(record.seq, before.next_seq());
                assert_eq!(record.prev.0, *before.head());
                assert_eq!(hash, record_hash(&RingCrypto, bytes.0));
                assert_eq!(verifier.head(), &hash);
                // The writer (`ChainHead::append`) never writes a seq it
                // could not follow; the verifier must not accept one either.
                assert_eq!(Some(verifier.next_seq()), before.next_seq().checked_add(1));
            }
            Ok(Step::Duplicate { seq }) => {
                assert!(decoded.is_ok(), "a duplicate that does not decode");
                assert_eq!(Some(seq), before.next_seq().checked_sub(1));
                assert_eq!(record_hash(&RingCrypto, bytes.0), *before.head());
                assert_eq!(verifier, before);
            }
            Err(broken) => {
                assert_eq!(verifier, before, "a failed push moved the verifier");
                assert_eq!(broken.seq, before.next_seq());
                assert_eq!(broken.kind == BreakKind::Undecodable, decoded.is_err());
                return;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = LineageBatch::decode(data) else {
        return;
    };
    let mut buf = vec![0u8; 65_536];
    assert_eq!(
        batch.encode(&mut buf).expect("a decoded batch encodes"),
        data,
        "accepted a non-canonical batch"
    );
    walk(ChainVerifier::genesis(batch.device.clone()), &batch);
    // Resumed where the first record of the batch says the chain is, as the
    // collector resumes at its stored head.
    if let Some(Ok(first)) = batch.decode_records().next()
        && let Some(last) = first.seq.checked_sub(1)
    {
        walk(
            ChainVerifier::resume(batch.device.clone(), last, first.prev.0),
            &batch,
        );
    }
});

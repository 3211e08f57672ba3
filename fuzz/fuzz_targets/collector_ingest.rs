//! The collector's ingest core, `mctc_collector::ingest::Ingest::handle`,
//! over an in-memory SQLite store, fed a run of MQTT messages: lineage
//! batches and registry records for a known and an unknown device, and
//! arbitrary topics.
//!
//! Input: a flag byte (bit 0: the authority's genuine registry record for
//! the device arrives first), then steps of a selector byte and
//! u16-framed parts:
//! - 0: a lineage batch of the device; 1: of the other device;
//! - 2: a registry record for the device as received; 3: its payload signed
//!   by the trusted key first;
//! - 4: a topic and a payload;
//! - 5: a u16 time step (ms), then a tick.
//!
//! Invariants: no panic; the store holds, for each device, exactly a chain
//! from seq 0 that re-verifies record by record up to its head, and nothing
//! at the head's seq; no ack covers a seq beyond that chain.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mctc_collector::ingest::{Ingest, IngestConfig, Publish};
use mctc_collector::receipt::ReceiptSigner;
use mctc_collector::store::Store;
use mctc_collector::store::sqlite::SqliteStore;
use mctc_fuzz::ak::FixedAk;
use mctc_fuzz::cose::seal;
use mctc_fuzz::fixtures;
use mctc_fuzz::input::Input;
use mctc_shim::lineage::{ChainVerifier, Step};
use mctc_shim::messages::LineageAck;
use mctc_shim::topics::{self, DeviceTopic};
use mctc_shim::{CollectorKey, DeviceId, Message, MessageKind, RingCrypto, Signer, verify_receipt};

const RECEIPT_SEED: [u8; 32] = [0x5a; 32];

fn genuine_registry() -> &'static [u8] {
    static REGISTRY: OnceLock<Vec<u8>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let ak = FixedAk::load();
        fixtures::sign(&fixtures::registry(fixtures::device(), &ak, 1))
    })
}

fn check_store(ingest: &Ingest<SqliteStore>, device: &DeviceId) -> Option<u64> {
    let store = ingest.store();
    let head = store.head(device).expect("the store answers")?;
    let mut verifier = ChainVerifier::genesis(device.clone());
    for seq in 0..head.next_seq {
        let bytes = store
            .record(device, seq)
            .expect("the store answers")
            .unwrap_or_else(|| panic!("record {seq} missing below the head"));
        match verifier.push(&RingCrypto, &bytes) {
            Ok(Step::Appended { .. }) => {}
            other => panic!("stored record {seq} does not chain: {other:?}"),
        }
    }
    assert_eq!(
        verifier.head(),
        &head.hash,
        "stored head is not the chain's"
    );
    assert!(
        store
            .record(device, head.next_seq)
            .expect("the store answers")
            .is_none(),
        "a record stored beyond the head"
    );
    head.next_seq.checked_sub(1)
}

fn check_acks(published: &[Publish], ingest: &Ingest<SqliteStore>) {
    for publish in published {
        let Some((DeviceTopic::LineageAck, device)) = topics::parse(&publish.topic) else {
            continue;
        };
        if publish.payload.first() != Some(&0xd2) {
            // Unsigned: only while nothing is stored, and it claims nothing.
            let ack = LineageAck::decode(&publish.payload).expect("acks are well-formed");
            assert_eq!(ack.device, device);
            assert_eq!(ack.through_seq, None, "an unsigned ack claims records");
            assert_eq!(check_store(ingest, &device), None);
            continue;
        }
        let signer = ReceiptSigner::from_seed(&RECEIPT_SEED).expect("a key from a seed");
        let key = CollectorKey::new(&RingCrypto, signer.public_key());
        let receipt = verify_receipt(&publish.payload, &[key], &RingCrypto, &device)
            .expect("receipts verify for their topic's device");
        let receipt = receipt.receipt();
        let stored = check_store(ingest, &device);
        assert!(
            stored.is_some_and(|top| receipt.seq <= top),
            "receipt for {} beyond the stored chain {stored:?}",
            receipt.seq
        );
        let bytes = ingest
            .store()
            .record(&device, receipt.seq)
            .expect("the store answers")
            .expect("the receipted record is stored");
        assert_eq!(
            mctc_shim::lineage::record_hash(&RingCrypto, &bytes),
            receipt.hash.0,
            "a receipt names another record"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let device = fixtures::device();
    let other = fixtures::other_device();
    let store = SqliteStore::in_memory().expect("an in-memory database");
    let mut ingest = Ingest::new(
        store,
        fixtures::keys(),
        ReceiptSigner::from_seed(&RECEIPT_SEED).expect("a key from a seed"),
        IngestConfig::default(),
        "fuzz".to_owned(),
    );
    let mut now: u64 = 1_750_000_000_000;
    let registry_topic = DeviceTopic::Registry.topic(&device);
    if input.u8() & 1 == 1 {
        ingest.handle(&registry_topic, genuine_registry(), now);
    }
    while !input.is_empty() {
        now += 1;
        let published = match input.u8() % 6 {
            0 => ingest.handle(&DeviceTopic::Lineage.topic(&device), input.chunk(), now),
            1 => ingest.handle(&DeviceTopic::Lineage.topic(&other), input.chunk(), now),
            2 => ingest.handle(&registry_topic, input.chunk(), now),
            3 => {
                let signed = seal(MessageKind::RegistryRecord, input.chunk());
                ingest.handle(&registry_topic, &signed, now)
            }
            4 => {
                let topic = String::from_utf8_lossy(input.chunk()).into_owned();
                ingest.handle(&topic, input.chunk(), now)
            }
            _ => {
                now += u64::from(input.u16());
                ingest.tick(now)
            }
        };
        check_acks(&published, &ingest);
        check_store(&ingest, &device);
        check_store(&ingest, &other);
    }
});

//! `sha256_records_per_s`, `collector_ingest_per_s`: one device's lineage
//! (decisions as a busy gate writes them, a checkpoint every 1000 records
//! as the agent's default) hashed raw, then verified and stored by the
//! collector's ingest core into its SQLite store (WAL, synchronous=FULL,
//! one transaction per batch of 64), on one thread, the way the
//! collector's worker runs it.

use std::time::{Duration, Instant};

use mctc_authority::store::RegistryRow;
use mctc_collector::ingest::{Ingest, IngestConfig};
use mctc_collector::receipt::ReceiptSigner;
use mctc_collector::store::sqlite::SqliteStore;
use mctc_shim::lineage::{Body, Decision, VerdictCode};
use mctc_shim::messages::DeviceStatus;
use mctc_shim::topics::DeviceTopic;
use mctc_shim::wire::{Bytes, Text, Token};
use mctc_shim::{AuthorityKey, DeviceId, RingCrypto, Signer as _};
use mctc_shim::{CollectorKey, verify_receipt};

use crate::chain::{SimChain, batches};
use crate::report::Figures;
use crate::soft_tpm::SoftTpm;

/// The agent's default `checkpoint_every_records`.
const CHECKPOINT_EVERY: u64 = 1000;

/// `count` records of one device: permits with an order reference, a
/// checkpoint after every 1000.
pub fn decisions(device: &DeviceId, tpm: &SoftTpm, count: u64) -> Result<Vec<Vec<u8>>, String> {
    let mut chain = SimChain::genesis(device.clone(), tpm);
    let mut records = Vec::new();
    while chain.next_seq() < count {
        if chain.next_seq() % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1 {
            records.push(chain.checkpoint(tpm)?);
            continue;
        }
        let reference = format!("order-{:08}", chain.next_seq());
        records.push(chain.append(
            Body::Decision(Decision {
                op: Token("unlock"),
                amount: None,
                currency: None,
                reference: Some(Text(&reference)),
                verdict: VerdictCode::Permit,
                deny: None,
                cti: Some(Bytes([7; 16])),
            }),
            1,
        )?);
    }
    Ok(records)
}

/// Raw SHA-256 over each record's bytes, repeated for at least `duration`.
fn sha256_rate(records: &[Vec<u8>], duration: Duration) -> f64 {
    let start = Instant::now();
    let mut hashed = 0u64;
    let mut sink = 0u8;
    while start.elapsed() < duration {
        for record in records {
            sink ^= ring::digest::digest(&ring::digest::SHA256, record).as_ref()[0];
        }
        hashed += records.len() as u64;
    }
    std::hint::black_box(sink);
    hashed as f64 / start.elapsed().as_secs_f64()
}

pub fn measure(figures: &mut Figures, count: u64) -> Result<(), String> {
    let device = DeviceId::new("bench-collector").map_err(|e| e.to_string())?;
    let tpm = SoftTpm::generate()?;
    let issuer = crate::authority::issuer()?;
    let registry = issuer
        .registry(
            &RegistryRow {
                device: device.clone(),
                class: "bench".into(),
                ak_public: tpm.ak_public().to_vec(),
                ak_name: tpm.ak_name().to_vec(),
                ek_sha256: tpm.ek_sha256(),
                status: DeviceStatus::Active,
                version: 1,
            },
            mctc_service::clock::wall_ms() / 1000,
        )
        .map_err(|e| e.to_string())?;
    let records = decisions(&device, &tpm, count)?;
    let payloads = batches(&device, &records)?;
    let bytes: usize = records.iter().map(Vec::len).sum();

    let sha = sha256_rate(&records, Duration::from_secs(2));
    figures.set("sha256_records_per_s", sha);
    figures.note(
        "sha256_records_per_s",
        format!(
            "ring SHA-256 (SHA-NI where the CPU has it) over the same {count} records, mean {} bytes",
            bytes / records.len().max(1)
        ),
    );

    let dir = tempfile::Builder::new()
        .prefix("mctc-bench-collector-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let store = SqliteStore::open(&dir.path().join("collector.db")).map_err(|e| e.to_string())?;
    let keys = vec![AuthorityKey::new(&RingCrypto, issuer.public_key())];
    let receipts = ReceiptSigner::from_seed(&[0x5a; 32]).ok_or("receipt key")?;
    let receipt_key = CollectorKey::new(&RingCrypto, receipts.public_key());
    let mut ingest = Ingest::new(
        store,
        keys,
        receipts,
        IngestConfig::default(),
        "bench".into(),
    );
    let now = mctc_service::clock::wall_ms();
    ingest.handle(
        DeviceTopic::Registry.topic(&device).as_str(),
        &registry,
        now,
    );
    let topic = DeviceTopic::Lineage.topic(&device).to_string();
    let start = Instant::now();
    let mut last_ack = None;
    for payload in &payloads {
        for publish in ingest.handle(&topic, payload, now) {
            // Every ack is a signed receipt once records are stored: the
            // measured path includes signing it.
            if let Ok(receipt) =
                verify_receipt(&publish.payload, &[receipt_key], &RingCrypto, &device)
            {
                let receipt = receipt.receipt();
                if receipt.anomaly.is_some() {
                    return Err(format!("the collector reported an anomaly: {receipt:?}"));
                }
                last_ack = Some(receipt.seq);
            }
        }
    }
    let took = start.elapsed().as_secs_f64();
    if last_ack != Some(count - 1) {
        return Err(format!(
            "the collector acknowledged through {last_ack:?}, not {}",
            count - 1
        ));
    }
    figures.set("collector_ingest_per_s", count as f64 / took);
    figures.note(
        "collector_ingest_per_s",
        format!(
            "{count} records in {} batches of 64 through the ingest core into SQLite (WAL, synchronous=FULL): chain + checkpoint quotes verified, every record stored and acked",
            payloads.len()
        ),
    );
    Ok(())
}

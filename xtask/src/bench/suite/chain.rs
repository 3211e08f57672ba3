//! Lineage as a simulated device writes it: shim records, hash-chained by
//! the shim's `ChainHead`, with checkpoints quoted by the device's software
//! AK — the same bytes the agent's writer would produce.

use mctc_shim::limits::{MAX_BATCH_LEN, MAX_RECORD_LEN};
use mctc_shim::lineage::{Body, ChainHead, Checkpoint, Stamp};
use mctc_shim::messages::LineageBatch;
use mctc_shim::tpm::BootCounters;
use mctc_shim::wire::{Bstr, Bytes, List, Version};
use mctc_shim::{DeviceId, Message, RingCrypto};

use crate::soft_tpm::{SoftTpm, bench_pcr_mask, bench_pcr_values};

/// The writing end of one device's chain.
#[derive(Debug)]
pub struct SimChain {
    head: ChainHead,
    boot: BootCounters,
    mono_ms: u64,
}

impl SimChain {
    pub fn genesis(device: DeviceId, tpm: &SoftTpm) -> SimChain {
        let (reset, restart) = tpm.boot();
        SimChain {
            head: ChainHead::genesis(device),
            boot: BootCounters { reset, restart },
            mono_ms: 1_000,
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.head.next_seq()
    }

    /// Appends a record `advance_ms` after the previous one.
    pub fn append(&mut self, body: Body<'_>, advance_ms: u64) -> Result<Vec<u8>, String> {
        self.mono_ms = self.mono_ms.saturating_add(advance_ms);
        let stamp = Stamp {
            boot: self.boot,
            mono_ms: self.mono_ms,
            wall_ms: None,
        };
        let mut buf = [0u8; MAX_RECORD_LEN];
        self.head
            .append(&RingCrypto, stamp, body, &mut buf)
            .map(|a| a.bytes.to_vec())
            .map_err(|e| format!("append a record: {e}"))
    }

    /// Appends a checkpoint quoting the current head.
    pub fn checkpoint(&mut self, tpm: &SoftTpm) -> Result<Vec<u8>, String> {
        let (seq, qualifying) = self
            .head
            .checkpoint_qualifying_data(&RingCrypto)
            .ok_or("a checkpoint needs a record before it")?;
        let head = *self.head.head();
        let (attest, signature) = tpm.quote(&qualifying, bench_pcr_mask(), &bench_pcr_values())?;
        self.append(
            Body::Checkpoint(Checkpoint {
                seq,
                head: Bytes(head),
                attest: Bstr(&attest),
                signature: Bstr(&signature),
            }),
            0,
        )
    }
}

/// Encoded `LineageBatch`es of at most 64 records (and 64 KiB) each.
pub fn batches(device: &DeviceId, records: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for chunk in records.chunks(mctc_shim::limits::MAX_BATCH_RECORDS) {
        let items: Vec<Bstr<'_, MAX_RECORD_LEN>> =
            chunk.iter().map(|r| Bstr(r.as_slice())).collect();
        let batch = LineageBatch {
            v: Version::default(),
            device: device.clone(),
            records: List::from_slice(&items).ok_or("batch too long")?,
        };
        let mut buf = vec![0u8; MAX_BATCH_LEN];
        let bytes = batch
            .encode(&mut buf)
            .map_err(|e| format!("encode a lineage batch: {e}"))?;
        out.push(bytes.to_vec());
    }
    Ok(out)
}

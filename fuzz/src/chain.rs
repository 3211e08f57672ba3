//! Genuine lineage: a chain of records as the agent writes it, ending in a
//! checkpoint quote by the fixed AK, and batches of it as the agent sends
//! them.

use mctc_shim::Message;
use mctc_shim::limits::MAX_RECORD_LEN;
use mctc_shim::lineage::{
    AgentStart, Body, ChainHead, Checkpoint, CloseCode, Decision, GateClosed, Stamp, VerdictCode,
};
use mctc_shim::messages::LineageBatch;
use mctc_shim::wire::{Bstr, Bytes, List, Token, Version};
use mctc_shim::{DeviceId, RingCrypto};

use crate::ak::{self, FixedAk};
use crate::fixtures::{BOOT, PCR_MASK};

/// `plain` ordinary records of `device` from seq 0, then (if `checkpoint`)
/// a checkpoint committing to the last of them, signed by `ak`.
pub fn records(device: &DeviceId, plain: u64, checkpoint: bool, ak: &FixedAk) -> Vec<Vec<u8>> {
    let mut head = ChainHead::genesis(device.clone());
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    for i in 0..plain {
        let stamp = Stamp {
            boot: BOOT,
            mono_ms: 1_000 + 10 * i,
            wall_ms: (i % 2 == 0).then_some(1_750_000_000_000 + i),
        };
        let body = match i % 3 {
            0 => Body::AgentStart(AgentStart {
                sw_version: Token("0.1.0"),
            }),
            1 => Body::GateClosed(GateClosed {
                reason: CloseCode::Startup,
                detail: None,
            }),
            _ => Body::Decision(Decision {
                op: Token("capture"),
                amount: Some(100 + i),
                currency: mctc_shim::artifact::Currency::new("EUR"),
                reference: None,
                verdict: VerdictCode::Permit,
                deny: None,
                cti: Some(Bytes([0xc1; 16])),
            }),
        };
        let appended = head
            .append(&RingCrypto, stamp, body, &mut buf)
            .expect("fixture records encode");
        out.push(appended.bytes.to_vec());
    }
    if checkpoint && let Some((seq, digest)) = head.checkpoint_qualifying_data(&RingCrypto) {
        let committed = *head.head();
        let attest = ak::quote_attest(&digest, ak::CLOCK, PCR_MASK, &ak::pcr_digest());
        let signature = ak.sign(&attest);
        let stamp = Stamp {
            boot: BOOT,
            mono_ms: 1_000 + 10 * plain,
            wall_ms: None,
        };
        let body = Body::Checkpoint(Checkpoint {
            seq,
            head: Bytes(committed),
            attest: Bstr(&attest),
            signature: Bstr(&signature),
        });
        let appended = head
            .append(&RingCrypto, stamp, body, &mut buf)
            .expect("fixture checkpoint encodes");
        out.push(appended.bytes.to_vec());
    }
    out
}

/// A canonical batch of `records` (at most 64) of `device`.
pub fn batch(device: &DeviceId, records: &[Vec<u8>]) -> Vec<u8> {
    let items: Vec<Bstr<'_, MAX_RECORD_LEN>> = records.iter().map(|r| Bstr(r.as_slice())).collect();
    let batch = LineageBatch {
        v: Version::CURRENT,
        device: device.clone(),
        records: List::from_slice(&items).expect("at most 64 records per fixture batch"),
    };
    let mut buf = vec![0u8; 65_536];
    batch
        .encode(&mut buf)
        .expect("fixture batches are within limits")
        .to_vec()
}

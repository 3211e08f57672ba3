//! The seed corpus: a handful of genuine inputs per target, in each
//! target's input layout (see the target's doc comment), so the fuzzer
//! starts past the signature and structure checks instead of having to
//! guess its way there. `examples/make_seeds.rs` writes them to
//! `fuzz/seeds/<target>/`.

use std::path::Path;

use mctc_agent::lineage::store::{Priority, Store, StoreConfig};
use mctc_service::keys::public_key_pem;
use mctc_shim::artifact::{Currency, ScopeEntry};
use mctc_shim::bundle::Bundle;
use mctc_shim::lineage::record_hash;
use mctc_shim::messages::{
    ControlAction, EnrollChallenge, EnrollProof, EnrollRequest, EnrollResult, EnrollStatus,
    Evidence, LineageAck, Nonce, NoncePurpose, NonceRequest, Refusal, RefusalCode,
};
use mctc_shim::topics::DeviceTopic;
use mctc_shim::tpm::TPM_ALG_SHA256;
use mctc_shim::wire::{Bstr, Bytes, List, Token, Version};
use mctc_shim::{Message, RingCrypto, Signer};

use crate::ak::{self, FixedAk};
use crate::chain;
use crate::fixtures::{self, NONCE};
use crate::input::chunks;

/// One seed file.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The fuzz target it is for.
    pub target: &'static str,
    /// Its file name.
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

fn seed(target: &'static str, name: &str, parts: &[&[u8]]) -> Seed {
    Seed {
        target,
        name: name.to_owned(),
        bytes: parts.concat(),
    }
}

fn encode<'a, T: Message<'a>>(message: &T) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    message
        .encode(&mut buf)
        .expect("seed messages are within limits")
        .to_vec()
}

/// `(u16 time step, payload)` steps, as the heartbeat and control targets
/// read them.
fn steps(steps: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (dt, payload) in steps {
        out.extend_from_slice(&dt.to_be_bytes());
        out.extend_from_slice(&chunks(&[payload]));
    }
    out
}

fn artifact() -> Vec<Seed> {
    let claims = fixtures::claims();
    let payload = encode(&claims);
    let mut wide = fixtures::claims();
    let ops = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let entries: Vec<ScopeEntry<'_>> = ops
        .iter()
        .map(|op| ScopeEntry {
            op: Token(op),
            max_amount: Some(1),
            currency: Currency::new("USD"),
            fresh_attestation: false,
        })
        .collect();
    wide.scope = List::from_slice(&entries).expect("eight entries fit");
    wide.ttl_ms = 86_400_000;
    vec![
        seed("artifact", "genuine", &[&[0], &fixtures::sign(&claims)]),
        seed("artifact", "claims", &[&[1], &payload]),
        seed("artifact", "claims-full-scope", &[&[1], &encode(&wide)]),
        seed("artifact", "as-heartbeat", &[&[2, 1], &payload]),
    ]
}

fn heartbeat() -> Vec<Seed> {
    let device = fixtures::device();
    let other = fixtures::other_device();
    let mut gap = fixtures::heartbeat(104, &[]);
    gap.since_epoch = 9;
    gap.epoch = 9;
    vec![
        seed(
            "heartbeat",
            "genuine",
            &[&[0], &fixtures::sign(&fixtures::heartbeat(101, &[]))],
        ),
        seed(
            "heartbeat",
            "revoking",
            &[&[0], &fixtures::sign(&fixtures::heartbeat(101, &[device]))],
        ),
        seed(
            "heartbeat",
            "run",
            &[
                &[1],
                &steps(&[
                    (1_000, encode(&fixtures::heartbeat(101, &[]))),
                    (10, encode(&fixtures::heartbeat(101, &[]))),
                    (5_000, encode(&fixtures::heartbeat(102, &[other]))),
                    (40_000, encode(&fixtures::heartbeat(103, &[]))),
                    (100, encode(&gap)),
                ]),
            ],
        ),
    ]
}

fn control() -> Vec<Seed> {
    let contain = fixtures::control(1, ControlAction::Contain, "fraud check");
    vec![
        seed("control", "contain", &[&[0], &fixtures::sign(&contain)]),
        seed(
            "control",
            "run",
            &[
                &[1],
                &steps(&[
                    (100, encode(&contain)),
                    (
                        100,
                        encode(&fixtures::control(2, ControlAction::Restore, "ok")),
                    ),
                    (
                        100,
                        encode(&fixtures::control(2, ControlAction::Restore, "ok")),
                    ),
                    (
                        100,
                        encode(&fixtures::control(3, ControlAction::Revoke, "stolen")),
                    ),
                    (
                        100,
                        encode(&fixtures::control(4, ControlAction::Restore, "x")),
                    ),
                ]),
            ],
        ),
    ]
}

fn evidence_message(ak: &FixedAk) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let attest = ak::quote_attest(&NONCE, ak::CLOCK, fixtures::PCR_MASK, &ak::pcr_digest());
    let signature = ak.sign(&attest);
    let values: Vec<Bytes<32>> = ak::pcr_values().into_iter().map(Bytes).collect();
    let evidence = Evidence {
        v: Version::CURRENT,
        device: fixtures::device(),
        nonce: Bytes(NONCE),
        attest: Bstr(&attest),
        signature: Bstr(&signature),
        pcr_alg: TPM_ALG_SHA256,
        pcr_mask: fixtures::PCR_MASK,
        pcr_values: List::from_slice(&values).expect("eight PCR values"),
    };
    (encode(&evidence), attest, signature)
}

fn messages(ak: &FixedAk) -> Vec<Seed> {
    let ek_public = ak.ek_public();
    let request = EnrollRequest {
        v: Version::CURRENT,
        request_id: Bytes([0x1d; 16]),
        device: fixtures::device(),
        ek_public: Bstr(&ek_public),
        ek_cert: None,
        ak_public: Bstr(ak.public()),
        ak_name: Bstr(ak.name()),
    };
    let challenge = EnrollChallenge {
        v: Version::CURRENT,
        request_id: Bytes([0x1d; 16]),
        credential_blob: Bstr(&[0x33; 68]),
        encrypted_secret: Bstr(&[0x44; 70]),
    };
    let proof = EnrollProof {
        v: Version::CURRENT,
        request_id: Bytes([0x1d; 16]),
        proof: Bytes([0x55; 32]),
    };
    let nonce_request = NonceRequest {
        v: Version::CURRENT,
        device: fixtures::device(),
        purpose: NoncePurpose::Renew,
    };
    let nonce = Nonce {
        v: Version::CURRENT,
        nonce: Bytes(NONCE),
        purpose: NoncePurpose::FreshOp,
        expires_in_ms: 30_000,
        pcr_alg: 0x000b,
        pcr_mask: 0x00_4081,
    };
    let ack = LineageAck {
        v: Version::CURRENT,
        device: fixtures::device(),
        through_seq: Some(500),
        anomaly: None,
        at_seq: None,
    };
    let records = chain::records(&fixtures::device(), 2, true, ak);
    let refusal = Refusal {
        v: Version::CURRENT,
        sub: fixtures::device(),
        nonce: Bytes(NONCE),
        reason: RefusalCode::PolicyMismatch,
        contained: false,
        iat: fixtures::IAT,
        pcrs: None,
    };
    // The same refusal naming a PCR (key 6), so the corpus reaches the
    // findings and their checks.
    let refusal_pcrs = Refusal {
        pcrs: List::from_slice(&[mctc_shim::messages::PcrFinding {
            pcr: 14,
            problem: mctc_shim::messages::PcrProblem::Differs,
            expected: Some(Bytes([0xab; 8])),
            got: Some(Bytes([0xcd; 8])),
        }]),
        ..refusal.clone()
    };
    let result = EnrollResult {
        v: Version::CURRENT,
        request_id: Bytes([0x1d; 16]),
        sub: fixtures::device(),
        status: EnrollStatus::Ok,
        iat: fixtures::IAT,
    };
    let registry = fixtures::registry(fixtures::device(), ak, 3);
    let (evidence, _, _) = evidence_message(ak);
    let topic = DeviceTopic::LineageAck.topic(&fixtures::device());
    vec![
        seed(
            "messages",
            "receipt",
            &[&[16], &fixtures::receipt(&fixtures::device(), 41, [7; 32])],
        ),
        seed("messages", "enroll-request", &[&[0], &encode(&request)]),
        seed("messages", "enroll-challenge", &[&[1], &encode(&challenge)]),
        seed("messages", "enroll-proof", &[&[2], &encode(&proof)]),
        seed(
            "messages",
            "nonce-request",
            &[&[3], &encode(&nonce_request)],
        ),
        seed("messages", "nonce", &[&[4], &encode(&nonce)]),
        seed("messages", "evidence", &[&[5], &evidence]),
        seed("messages", "lineage-ack", &[&[6], &encode(&ack)]),
        seed("messages", "record-checkpoint", &[&[7], &records[2]]),
        seed("messages", "refusal", &[&[8], &fixtures::sign(&refusal)]),
        seed("messages", "refusal-payload", &[&[9], &encode(&refusal)]),
        seed(
            "messages",
            "refusal-pcrs",
            &[&[8], &fixtures::sign(&refusal_pcrs)],
        ),
        seed(
            "messages",
            "refusal-pcrs-payload",
            &[&[9], &encode(&refusal_pcrs)],
        ),
        seed(
            "messages",
            "enroll-result",
            &[&[10], &fixtures::sign(&result)],
        ),
        seed(
            "messages",
            "enroll-result-payload",
            &[&[11], &encode(&result)],
        ),
        seed("messages", "registry", &[&[12], &fixtures::sign(&registry)]),
        seed("messages", "registry-payload", &[&[13], &encode(&registry)]),
        seed("messages", "topic", &[&[14], topic.as_bytes()]),
    ]
}

fn evidence(ak: &FixedAk) -> Vec<Seed> {
    let (message, attest, signature) = evidence_message(ak);
    let mut last = Vec::new();
    last.extend_from_slice(&(ak::CLOCK.clock - 1_000).to_be_bytes());
    last.extend_from_slice(&4u16.to_be_bytes());
    last.extend_from_slice(&1u16.to_be_bytes());
    last.push(0); // safe
    last.push(0); // compare with it
    vec![
        seed("evidence", "attest", &[&[0], &attest]),
        seed("evidence", "signature", &[&[0], &signature]),
        seed("evidence", "ak-public", &[&[0], ak.public()]),
        seed("evidence", "ek-public", &[&[0], &ak.ek_public()]),
        seed("evidence", "message", &[&[1], &message]),
        seed("evidence", "signed-here", &[&[2], &last, &attest]),
    ]
}

fn lineage_batch(ak: &FixedAk) -> Vec<Seed> {
    let device = fixtures::device();
    let records = chain::records(&device, 9, true, ak);
    vec![
        seed(
            "lineage_batch",
            "chain",
            &[&chain::batch(&device, &records)],
        ),
        seed(
            "lineage_batch",
            "mid-chain",
            &[&chain::batch(&device, &records[4..])],
        ),
    ]
}

/// Segment files written by the agent's real store.
fn lineage_recovery() -> Vec<Seed> {
    let dir = tempfile::tempdir().expect("a scratch dir");
    let config = StoreConfig {
        segment_bytes: 1024,
        ..StoreConfig::new(dir.path())
    };
    let (mut store, _) = Store::open(config).expect("a new store");
    for i in 0u8..12 {
        let payload = vec![i; 100 + usize::from(i)];
        store
            .append(&[&payload], Priority::Normal)
            .expect("appends to a new store");
    }
    drop(store);
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("the store dir lists")
        .map(|e| e.expect("a dir entry").path())
        .collect();
    files.sort();
    let segments: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("a segment reads"))
        .collect();
    let (first, second) = (&segments[0], &segments[1]);
    let split = u16::try_from(first.len()).expect("small segments");
    let mut torn = second.clone();
    torn.truncate(torn.len() - 7);
    // Hand-made, the end of the seq space: header and frame at u64::MAX - 1
    // (the store never gets there by appending); flag 4 makes the target
    // compute the frame's checksum.
    let last_seq = u64::MAX - 1;
    let mut end = mctc_agent::lineage::store::MAGIC.to_vec();
    end.extend_from_slice(&last_seq.to_le_bytes());
    end.extend_from_slice(&4u32.to_le_bytes());
    end.extend_from_slice(&0u32.to_le_bytes());
    end.extend_from_slice(&last_seq.to_le_bytes());
    end.extend_from_slice(b"last");
    vec![
        seed("lineage_recovery", "one-segment", &[&[0], first]),
        seed("lineage_recovery", "end-of-seq-space", &[&[4], &end]),
        seed("lineage_recovery", "torn-tail", &[&[0], &torn]),
        seed(
            "lineage_recovery",
            "two-segments",
            &[&[1], &split.to_be_bytes(), first, second],
        ),
    ]
}

fn collector_ingest(ak: &FixedAk) -> Vec<Seed> {
    let device = fixtures::device();
    let records = chain::records(&device, 9, true, ak);
    let head = chain::batch(&device, &records[..5]);
    let tail = chain::batch(&device, &records[5..]);
    let registry = encode(&fixtures::registry(device.clone(), ak, 2));
    let mut tick = vec![5];
    tick.extend_from_slice(&6_000u16.to_be_bytes());
    vec![
        seed(
            "collector_ingest",
            "in-order",
            &[&[1], &[0], &chunks(&[&head]), &[0], &chunks(&[&tail])],
        ),
        seed(
            "collector_ingest",
            "out-of-order",
            &[
                &[1],
                &[0],
                &chunks(&[&tail]),
                &tick,
                &[0],
                &chunks(&[&head]),
            ],
        ),
        seed(
            "collector_ingest",
            "held-until-registered",
            &[&[0], &[0], &chunks(&[&head]), &[3], &chunks(&[&registry])],
        ),
    ]
}

fn bundle(ak: &FixedAk) -> Vec<Seed> {
    let device = fixtures::device();
    let records = chain::records(&device, 6, true, ak);
    let head = record_hash(&RingCrypto, records.last().expect("records"));
    let bundle = Bundle {
        device: device.as_str().to_owned(),
        from_seq: 0,
        head,
        registry: fixtures::sign(&fixtures::registry(device.clone(), ak, 1)),
        ak_public: ak.public().to_vec(),
        receipt: None,
        records,
    };
    let receipt = fixtures::receipt(&device, 3, record_hash(&RingCrypto, &bundle.records[3]));
    let with_receipt = Bundle {
        receipt: Some(receipt),
        ..bundle.clone()
    };
    vec![
        seed("bundle", "genuine", &[&bundle.encode()]),
        seed("bundle", "with-receipt", &[&with_receipt.encode()]),
    ]
}

fn gate_request() -> Vec<Seed> {
    [
        (
            "authorize",
            r#"{"authorize":{"op":"capture","amount":1250,"currency":"EUR","ref":"order-17"}}"#,
        ),
        ("authorize-bare", r#"{"authorize":{"op":"unlock"}}"#),
        ("status", r#"{"status":{}}"#),
        ("checkpoint", r#"{"checkpoint":{}}"#),
    ]
    .into_iter()
    .map(|(name, line)| seed("gate_request", name, &[line.as_bytes()]))
    .collect()
}

fn config(repo: &Path) -> Vec<Seed> {
    [
        (0u8, "collector.toml"),
        (1, "agent.toml"),
        (2, "authority.toml"),
        (3, "policy.toml"),
    ]
    .into_iter()
    .map(|(selector, file)| {
        let text = std::fs::read(repo.join("configs").join(file)).expect("configs/ is readable");
        seed("config", file, &[&[selector], &text])
    })
    .chain([seed(
        "config",
        "authority.pub",
        &[
            &[4],
            public_key_pem(&fixtures::signer().public_key()).as_bytes(),
        ],
    )])
    .collect()
}

/// Every seed of every target; `repo` is the repository root (for the
/// example configuration files).
pub fn all(repo: &Path) -> Vec<Seed> {
    let ak = FixedAk::load();
    [
        artifact(),
        heartbeat(),
        control(),
        messages(&ak),
        evidence(&ak),
        lineage_batch(&ak),
        lineage_recovery(),
        collector_ingest(&ak),
        bundle(&ak),
        gate_request(),
        config(repo),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use mctc_collector::ingest::{Ingest, IngestConfig};
    use mctc_collector::store::Store as _;
    use mctc_collector::store::sqlite::SqliteStore;
    use mctc_shim::lineage::{ChainVerifier, Step};
    use mctc_shim::messages::LineageBatch;
    use mctc_shim::verify_artifact;

    use super::*;

    fn find<'s>(seeds: &'s [Seed], target: &str, name: &str) -> &'s [u8] {
        &seeds
            .iter()
            .find(|s| s.target == target && s.name == name)
            .unwrap_or_else(|| panic!("seed {target}/{name}"))
            .bytes
    }

    /// The seeds are only worth having if the real decoders accept them:
    /// otherwise the fuzzer starts where random bytes would.
    #[test]
    fn genuine_seeds_pass_the_real_checks() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let seeds = all(repo);
        let device = fixtures::device();
        let keys = fixtures::keys();

        let artifact = &find(&seeds, "artifact", "genuine")[1..];
        verify_artifact(
            artifact,
            &fixtures::context(&device, &keys, None),
            &RingCrypto,
        )
        .unwrap();

        let batch = LineageBatch::decode(find(&seeds, "lineage_batch", "chain")).unwrap();
        let mut verifier = ChainVerifier::genesis(device.clone());
        for record in batch.records.iter() {
            assert!(matches!(
                verifier.push(&RingCrypto, record.0),
                Ok(Step::Appended { .. })
            ));
        }

        let report =
            mctc_collector::verify::verify_bundle(find(&seeds, "bundle", "genuine"), &keys, &[]);
        assert!(report.ok, "{report:?}");

        let mut ingest = Ingest::new(
            SqliteStore::in_memory().unwrap(),
            keys.clone(),
            mctc_collector::receipt::ReceiptSigner::from_seed(&[0x5a; 32]).unwrap(),
            IngestConfig::default(),
            "seed-check".to_owned(),
        );
        let mut input = crate::input::Input::new(find(&seeds, "collector_ingest", "in-order"));
        input.u8();
        let registry = fixtures::sign(&fixtures::registry(device.clone(), &FixedAk::load(), 1));
        ingest.handle(&DeviceTopic::Registry.topic(&device), &registry, 1);
        while !input.is_empty() {
            input.u8();
            ingest.handle(&DeviceTopic::Lineage.topic(&device), input.chunk(), 2);
        }
        assert_eq!(ingest.store().head(&device).unwrap().unwrap().next_seq, 10);

        let text = |name| std::str::from_utf8(&find(&seeds, "config", name)[1..]).unwrap();
        let path = Path::new("configs/x.toml");
        mctc_collector::config::Config::parse(text("collector.toml"), path).unwrap();
        mctc_agent::config::parse(text("agent.toml")).unwrap();
        mctc_authority::config::Config::parse(path, text("authority.toml")).unwrap();
        mctc_authority::policy::Policy::parse(path, text("policy.toml")).unwrap();
    }
}

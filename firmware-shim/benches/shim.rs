//! Micro-benchmarks of the shim's hot paths: what a device does per
//! artifact (verify) and per decision (encode + hash a lineage record), and
//! what a collector does per record (decode + link check). Run with
//! `cargo bench -p mctc-shim`; `cargo xtask bench` measures the system
//! around them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark: a failure stops it loudly"
)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mctc_shim::artifact::{Claims, ScopeEntry};
use mctc_shim::lineage::{
    Body, ChainHead, ChainVerifier, Decision, Stamp, VerdictCode, record_hash,
};
use mctc_shim::tpm::{BootCounters, TPM_ALG_SHA256};
use mctc_shim::wire::{Bytes, List, Text, Token, Version};
use mctc_shim::{
    AuthorityKey, DeviceId, RingCrypto, RingSigner, Signed, Signer, VerifyContext, verify_artifact,
};

const BOOT: BootCounters = BootCounters {
    reset: 3,
    restart: 0,
};

fn signed_artifact(signer: &RingSigner, device: &DeviceId) -> Vec<u8> {
    let scope = [
        ScopeEntry {
            op: Token("unlock"),
            max_amount: None,
            currency: None,
            fresh_attestation: false,
        },
        ScopeEntry {
            op: Token("capture"),
            max_amount: Some(50_000),
            currency: mctc_shim::artifact::Currency::new("EUR"),
            fresh_attestation: true,
        },
    ];
    let claims = Claims {
        iss: Token("fleet-authority"),
        sub: device.clone(),
        exp: 1_700_000_060,
        iat: 1_700_000_000,
        cti: Bytes([1; 16]),
        v: Version::default(),
        ttl_ms: 60_000,
        nonce: Bytes([2; 32]),
        pcr_alg: TPM_ALG_SHA256,
        pcr_mask: 0b100_0000_1000_0001,
        pcr_digest: Bytes([3; 32]),
        boot: BOOT,
        scope: List::from_slice(&scope).unwrap(),
        next_nonce: Bytes([4; 32]),
        hb_ms: 30_000,
        hb_seq: 17,
        epoch: 0,
    };
    let mut buf = [0u8; 2048];
    claims.sign(signer, &RingCrypto, &mut buf).unwrap().to_vec()
}

fn decision(reference: &str) -> Body<'_> {
    Body::Decision(Decision {
        op: Token("unlock"),
        amount: None,
        currency: None,
        reference: Some(Text(reference)),
        verdict: VerdictCode::Permit,
        deny: None,
        cti: Some(Bytes([1; 16])),
    })
}

fn stamp(mono_ms: u64) -> Stamp {
    Stamp {
        boot: BOOT,
        mono_ms,
        wall_ms: Some(1_700_000_000_000 + mono_ms),
    }
}

fn artifact(c: &mut Criterion) {
    let signer = RingSigner::from_seed(&[7; 32]).unwrap();
    let device = DeviceId::new("locker-0001").unwrap();
    let keys = [AuthorityKey::new(&RingCrypto, signer.public_key())];
    let bytes = signed_artifact(&signer, &device);
    let context = VerifyContext {
        device: &device,
        issuer: "fleet-authority",
        keys: &keys,
        nonce: &[2; 32],
        boot: BOOT,
        received_ms: 1_000,
        wall_ms: None,
    };
    verify_artifact(&bytes, &context, &RingCrypto).unwrap();
    c.bench_function("artifact verify (COSE_Sign1, Ed25519, claims)", |b| {
        b.iter(|| verify_artifact(black_box(&bytes), &context, &RingCrypto).unwrap())
    });
}

fn lineage(c: &mut Criterion) {
    let device = DeviceId::new("locker-0001").unwrap();
    let mut head = ChainHead::genesis(device.clone());
    let mut buf = [0u8; 2048];
    let mut mono = 0;
    c.bench_function("record append (encode + tagged SHA-256)", |b| {
        b.iter(|| {
            mono += 1;
            let appended = head
                .append(
                    &RingCrypto,
                    stamp(mono),
                    decision("order-00012345"),
                    &mut buf,
                )
                .unwrap();
            black_box(appended.hash);
        })
    });

    let mut writer = ChainHead::genesis(device.clone());
    let records: Vec<Vec<u8>> = (0..64)
        .map(|i| {
            writer
                .append(
                    &RingCrypto,
                    stamp(i + 1),
                    decision("order-00012345"),
                    &mut buf,
                )
                .unwrap()
                .bytes
                .to_vec()
        })
        .collect();
    let mut group = c.benchmark_group("a batch of 64 records");
    group.throughput(Throughput::Elements(64));
    group.bench_function("raw SHA-256 of each record", |b| {
        b.iter(|| {
            for record in &records {
                black_box(ring::digest::digest(&ring::digest::SHA256, record));
            }
        })
    });
    group.bench_function("record hash (tagged SHA-256)", |b| {
        b.iter(|| {
            for record in &records {
                black_box(record_hash(&RingCrypto, record));
            }
        })
    });
    group.bench_function("chain verify (decode, device, seq, link, hash)", |b| {
        b.iter(|| {
            let mut verifier = ChainVerifier::genesis(device.clone());
            for record in &records {
                verifier.push(&RingCrypto, record).unwrap();
            }
            black_box(&verifier);
        })
    });
    group.finish();
}

criterion_group!(benches, artifact, lineage);
criterion_main!(benches);

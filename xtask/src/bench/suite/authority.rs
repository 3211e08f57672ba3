//! `authority_issue_per_s`: the authority's decision and signature per
//! piece of evidence, on one thread, with pre-made evidence — exactly what
//! the engine does per evidence message between the store transaction and
//! the publish: decode, `verdict::evaluate` (quote signature, nonce,
//! selection, PCR digest, rollback, baseline), two random values, and
//! `Issuer::artifact` (claims + Ed25519 COSE_Sign1). No TPM, no database.

use std::path::Path;
use std::time::{Duration, Instant};

use mctc_authority::issuer::{ArtifactFacts, Issuer, KeySigner};
use mctc_authority::policy::{ClassBaseline, ClassPolicy, Policy};
use mctc_authority::store::{DeviceRecord, Enrolled};
use mctc_authority::verdict::{Decision, NonceCheck, evaluate};
use mctc_shim::messages::{DeviceStatus, Evidence, NoncePurpose};
use mctc_shim::tpm::BootCounters;
use mctc_shim::{DeviceId, Message};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::Ed25519KeyPair;

use crate::report::Figures;
use crate::soft_tpm::{self, SoftTpm};

/// Distinct pieces of evidence cycled through (distinct nonces, so nothing
/// is cached between decisions).
const EVIDENCE: usize = 256;

/// The bench class: 60 s artifacts, 15 s heartbeat window, the harness's
/// reference values for PCRs 0, 7, 14, and two scope entries.
pub fn bench_class(name: &str, ttl_ms: u64, hb_ms: u64) -> String {
    mctc_tests::fleet::class(
        name,
        ttl_ms,
        hb_ms,
        &[
            "op = \"unlock\"\nfresh_attestation = false",
            "op = \"inspect\"\nfresh_attestation = true",
        ],
    )
}

pub fn issuer() -> Result<Issuer, String> {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "generate issuer key")?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?;
    let signer = KeySigner::from_pair(pair).ok_or("issuer key")?;
    Ok(Issuer::new(
        signer,
        mctc_tests::fleet::AUTHORITY_ID.to_owned(),
    ))
}

fn record(id: &DeviceId, tpm: &SoftTpm) -> DeviceRecord {
    DeviceRecord {
        id: id.clone(),
        class: "bench".into(),
        status: DeviceStatus::Active,
        reason: None,
        pinned_ek_sha256: None,
        enrolled: Some(Enrolled {
            ek_public: tpm.ek_public().to_vec(),
            ek_sha256: tpm.ek_sha256(),
            ak_public: tpm.ak_public().to_vec(),
            ak_name: tpm.ak_name().to_vec(),
            at_ms: 0,
        }),
        added_ms: 0,
        control_seq: 0,
        registry_version: 1,
        last_clock: None,
        last_pcrs: None,
        verified_ms: None,
        attempt_ms: None,
        verdict: None,
        refusal: None,
        refusal_detail: None,
        artifacts_issued: 0,
    }
}

/// One decision as the engine makes it; the artifact's length.
fn decide_and_issue(
    record: &DeviceRecord,
    class: &ClassPolicy,
    issuer: &Issuer,
    rng: &SystemRandom,
    payload: &[u8],
) -> Result<usize, String> {
    let evidence = Evidence::decode(payload).map_err(|e| e.to_string())?;
    let tolerance = u64::from(class.artifact_ttl_ms) + 10_000;
    let decision = evaluate(
        record,
        NonceCheck::Valid(NoncePurpose::Renew),
        Some(class),
        &ClassBaseline::default(),
        &evidence,
        tolerance,
    );
    let Decision::Affirm { facts } = decision else {
        return Err(format!("the bench evidence was not affirmed: {decision:?}"));
    };
    let mut cti = [0u8; 16];
    let mut next_nonce = [0u8; 32];
    rng.fill(&mut cti).map_err(|_| "rng")?;
    rng.fill(&mut next_nonce).map_err(|_| "rng")?;
    let artifact = issuer
        .artifact(
            &ArtifactFacts {
                sub: record.id.clone(),
                cti,
                nonce: evidence.nonce.0,
                pcr_mask: facts.mask,
                pcr_digest: facts.digest,
                boot: BootCounters {
                    reset: facts.clock.reset_count,
                    restart: facts.clock.restart_count,
                },
                next_nonce,
                hb_seq: 1,
                epoch: 0,
                now_ms: mctc_service::clock::wall_ms(),
            },
            class,
        )
        .map_err(|e| e.to_string())?;
    Ok(artifact.len())
}

/// Decisions per second over `duration` on this thread.
pub fn measure(figures: &mut Figures, duration: Duration) -> Result<(), String> {
    let policy = Policy::parse(
        Path::new("bench.toml"),
        &bench_class("bench", 60_000, 15_000),
    )
    .map_err(|e| e.to_string())?;
    let class = policy.class("bench").ok_or("bench class")?;
    let issuer = issuer()?;
    let tpm = SoftTpm::generate()?;
    let id = DeviceId::new("bench-authority").map_err(|e| e.to_string())?;
    let record = record(&id, &tpm);
    let rng = SystemRandom::new();
    let mut evidence = Vec::with_capacity(EVIDENCE);
    for _ in 0..EVIDENCE {
        let mut nonce = [0u8; 32];
        rng.fill(&mut nonce).map_err(|_| "rng")?;
        evidence.push(soft_tpm::evidence(&tpm, &id, &nonce)?);
    }
    // Warm caches and check every piece is affirmed before timing.
    for payload in &evidence {
        decide_and_issue(&record, class, &issuer, &rng, payload)?;
    }
    let start = Instant::now();
    let mut decisions = 0u64;
    while start.elapsed() < duration {
        for payload in &evidence {
            decide_and_issue(&record, class, &issuer, &rng, payload)?;
        }
        decisions += EVIDENCE as u64;
    }
    let rate = decisions as f64 / start.elapsed().as_secs_f64();
    figures.set("authority_issue_per_s", rate);
    figures.note(
        "authority_issue_per_s",
        format!(
            "one thread, {decisions} decisions: ECDSA P-256 quote verify + Ed25519 artifact signature (the SQLite transaction per evidence is fsync-bound and measured in the fleet run)"
        ),
    );
    Ok(())
}

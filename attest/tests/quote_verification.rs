//! Quotes from a real swtpm through the software verifier: the positive path
//! and one refusal per check.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{open, open_default, sha256};
use mctc_attest::device::{AkKind, EkKind, Identity, Tpm};
use mctc_attest::verifier::{
    AkPublic, Continuity, PcrMismatch, QuoteError, QuoteExpectation, ReferenceValues,
    VerifiedQuote, verify_quote,
};
use mctc_attest::{ClockInfo, Evidence, HashAlg, PcrSelection, PcrValues};
use mctc_tests::Swtpm;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

struct Device {
    tpm: Swtpm,
    device: Tpm,
    id: Identity,
    ak: AkPublic,
    _dir: tempfile::TempDir,
}

async fn device() -> Device {
    let tpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let device = open_default(&tpm, dir.path()).await;
    let id = device.identity().await.unwrap();
    let ak = AkPublic::parse(&id.ak_public).unwrap();
    Device {
        tpm,
        device,
        id,
        ak,
        _dir: dir,
    }
}

fn sel() -> PcrSelection {
    PcrSelection::sha256(&[0, 1, 2, 3, 4, 5, 6, 7, 16]).unwrap()
}

fn verify(
    ak: &AkPublic,
    evidence: &Evidence,
    nonce: &[u8],
    selection: &PcrSelection,
    last: Option<&ClockInfo>,
) -> Result<VerifiedQuote, QuoteError> {
    verify_quote(
        ak,
        evidence,
        &QuoteExpectation {
            qualifying_data: nonce,
            selection,
            last_accepted: last,
        },
    )
}

#[tokio::test]
async fn a_fresh_quote_verifies_and_the_next_one_is_the_same_boot() {
    let d = device().await;
    let nonce = [0x11; 32];
    let evidence = d.device.quote(nonce.to_vec(), sel()).await.unwrap();
    let first = verify(&d.ak, &evidence, &nonce, &sel(), None).unwrap();
    assert_eq!(first.continuity(), Continuity::First);
    assert_eq!(first.pcrs(), &evidence.pcrs);
    assert_eq!(first.pcr_digest(), &evidence.pcrs.composite_digest());
    assert_eq!(first.clock(), &evidence.clock);
    assert_eq!(first.pcrs().get(16).unwrap(), d.tpm.read_pcr(16).unwrap());

    let nonce2 = [0x22; 32];
    let evidence2 = d.device.quote(nonce2.to_vec(), sel()).await.unwrap();
    let second = verify(&d.ak, &evidence2, &nonce2, &sel(), Some(first.clock())).unwrap();
    assert_eq!(second.continuity(), Continuity::SameBoot);
    assert!(second.clock().clock >= first.clock().clock);
}

#[tokio::test]
async fn a_wrong_nonce_is_rejected() {
    let d = device().await;
    let evidence = d.device.quote(vec![1; 32], sel()).await.unwrap();
    assert_eq!(
        verify(&d.ak, &evidence, &[2; 32], &sel(), None),
        Err(QuoteError::QualifyingDataMismatch)
    );
    // A prefix of the nonce is not the nonce.
    assert_eq!(
        verify(&d.ak, &evidence, &[1; 31], &sel(), None),
        Err(QuoteError::QualifyingDataMismatch)
    );
    assert_eq!(
        verify(&d.ak, &evidence, &[1; 65], &sel(), None),
        Err(QuoteError::QualifyingDataTooLong(65))
    );
}

#[tokio::test]
async fn a_wrong_magic_is_rejected() {
    let d = device().await;
    let mut evidence = d.device.quote(vec![1; 32], sel()).await.unwrap();
    evidence.attest[0] ^= 0x01;
    assert!(matches!(
        verify(&d.ak, &evidence, &[1; 32], &sel(), None),
        Err(QuoteError::BadMagic(_))
    ));
}

#[tokio::test]
async fn a_wrong_attestation_type_is_rejected() {
    let d = device().await;
    let mut evidence = d.device.quote(vec![1; 32], sel()).await.unwrap();
    // TPM_ST_ATTEST_CERTIFY instead of TPM_ST_ATTEST_QUOTE.
    evidence.attest[4..6].copy_from_slice(&0x8017u16.to_be_bytes());
    assert_eq!(
        verify(&d.ak, &evidence, &[1; 32], &sel(), None),
        Err(QuoteError::NotAQuote(0x8017))
    );
}

#[tokio::test]
async fn a_different_selection_is_rejected() {
    let d = device().await;
    let quoted = PcrSelection::sha256(&[0, 16]).unwrap();
    let evidence = d.device.quote(vec![1; 32], quoted).await.unwrap();
    // The verifier asked for more PCRs than the device quoted.
    let asked = PcrSelection::sha256(&[0, 7, 16]).unwrap();
    assert!(matches!(
        verify(&d.ak, &evidence, &[1; 32], &asked, None),
        Err(QuoteError::SelectionMismatch { .. })
    ));
    // The quote is right but the reported values claim another selection.
    let mut relabelled = evidence.clone();
    relabelled.pcrs = PcrValues::new(
        PcrSelection::sha256(&[0, 17]).unwrap(),
        evidence.pcrs.values().to_vec(),
    )
    .unwrap();
    assert!(matches!(
        verify(&d.ak, &relabelled, &[1; 32], &quoted, None),
        Err(QuoteError::SelectionMismatch { .. })
    ));
    // Unchanged, it verifies.
    verify(&d.ak, &evidence, &[1; 32], &quoted, None).unwrap();
}

#[tokio::test]
async fn a_tampered_pcr_value_is_rejected() {
    let d = device().await;
    let mut evidence = d.device.quote(vec![1; 32], sel()).await.unwrap();
    let mut values = evidence.pcrs.values().to_vec();
    // Claim PCR 16 still holds its boot value after it was extended.
    values[8] = vec![0; 32];
    d.tpm.extend_pcr(16, b"something ran").unwrap();
    evidence = d.device.quote(vec![1; 32], sel()).await.unwrap();
    let honest = evidence.clone();
    evidence.pcrs = PcrValues::new(sel(), values).unwrap();
    assert_eq!(
        verify(&d.ak, &evidence, &[1; 32], &sel(), None),
        Err(QuoteError::PcrDigestMismatch)
    );
    verify(&d.ak, &honest, &[1; 32], &sel(), None).unwrap();
}

#[tokio::test]
async fn a_signature_by_another_ak_or_a_modified_quote_is_rejected() {
    let d = device().await;
    let other = device().await;
    let evidence = d.device.quote(vec![1; 32], sel()).await.unwrap();
    assert_eq!(
        verify(&other.ak, &evidence, &[1; 32], &sel(), None),
        Err(QuoteError::BadSignature)
    );
    // The other device's quote, re-labelled as this device's.
    let theirs = other.device.quote(vec![1; 32], sel()).await.unwrap();
    assert_eq!(
        verify(&d.ak, &theirs, &[1; 32], &sel(), None),
        Err(QuoteError::BadSignature)
    );
    // One flipped bit in the signed body (the firmware version field, the
    // 8 bytes before the PCR selection) breaks the signature.
    let mut modified = evidence.clone();
    let selection_at = modified.attest.len() - (4 + 2 + 1 + 3) - (2 + 32);
    modified.attest[selection_at - 1] ^= 0x01;
    assert_eq!(
        verify(&d.ak, &modified, &[1; 32], &sel(), None),
        Err(QuoteError::BadSignature)
    );
    let mut bad_sig = evidence.clone();
    let last = bad_sig.signature.len() - 1;
    bad_sig.signature[last] ^= 0x01;
    assert_eq!(
        verify(&d.ak, &bad_sig, &[1; 32], &sel(), None),
        Err(QuoteError::BadSignature)
    );
    let mut truncated_sig = evidence.clone();
    truncated_sig.signature.truncate(10);
    assert!(matches!(
        verify(&d.ak, &truncated_sig, &[1; 32], &sel(), None),
        Err(QuoteError::MalformedSignature(_))
    ));
    assert_eq!(d.id.ak_name, d.ak.name());
}

#[tokio::test]
async fn a_sha1_only_quote_is_rejected() {
    let d = device().await;
    let sha1 = PcrSelection::new(HashAlg::Sha1, &[0, 1, 2, 3, 4, 5, 6, 7]).unwrap();
    let evidence = d.device.quote(vec![1; 32], sha1).await.unwrap();
    // Asked for SHA-1: refused as a request.
    assert_eq!(
        verify(&d.ak, &evidence, &[1; 32], &sha1, None),
        Err(QuoteError::Sha1Bank)
    );
    // Asked for SHA-256, the device quoted SHA-1 only: refused as a quote.
    let sha256 = PcrSelection::sha256(&[0, 1, 2, 3, 4, 5, 6, 7]).unwrap();
    let mut relabelled = evidence.clone();
    relabelled.pcrs = PcrValues::new(sha256, vec![vec![0; 32]; 8]).unwrap();
    assert_eq!(
        verify(&d.ak, &relabelled, &[1; 32], &sha256, None),
        Err(QuoteError::Sha1Bank)
    );
}

#[tokio::test]
async fn a_reset_is_reported_and_going_back_is_rejected() {
    let d = device().await;
    d.tpm.extend_pcr(16, b"booted software").unwrap();
    let before = d.device.quote(vec![1; 32], sel()).await.unwrap();
    let accepted = verify(&d.ak, &before, &[1; 32], &sel(), None).unwrap();

    d.tpm.reset().unwrap();
    let after = d.device.quote(vec![2; 32], sel()).await.unwrap();
    let verdict = verify(&d.ak, &after, &[2; 32], &sel(), Some(accepted.clock())).unwrap();
    assert_eq!(verdict.continuity(), Continuity::Reset);
    assert_eq!(
        verdict.clock().reset_count,
        accepted.clock().reset_count + 1
    );
    // PCRs were cleared by the reset: the digest differs from before.
    assert_ne!(verdict.pcr_digest(), accepted.pcr_digest());

    // Replaying the pre-reset quote after the reset was accepted.
    assert_eq!(
        verify(&d.ak, &before, &[1; 32], &sel(), Some(verdict.clock())),
        Err(QuoteError::ResetCountWentBack {
            last: verdict.clock().reset_count,
            now: accepted.clock().reset_count,
        })
    );
}

#[tokio::test]
async fn a_restart_is_reported_and_going_back_is_rejected() {
    let d = device().await;
    let before = d.device.quote(vec![1; 32], sel()).await.unwrap();
    let accepted = verify(&d.ak, &before, &[1; 32], &sel(), None).unwrap();

    d.tpm.restart().unwrap();
    let after = d.device.quote(vec![2; 32], sel()).await.unwrap();
    let verdict = verify(&d.ak, &after, &[2; 32], &sel(), Some(accepted.clock())).unwrap();
    assert_eq!(verdict.continuity(), Continuity::Restarted);
    assert!(matches!(
        verify(&d.ak, &before, &[1; 32], &sel(), Some(verdict.clock())),
        Err(QuoteError::RestartCountWentBack { .. })
    ));
}

#[tokio::test]
async fn a_clock_going_backwards_is_rejected() {
    let d = device().await;
    let older = d.device.quote(vec![1; 32], sel()).await.unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let newer = d.device.quote(vec![2; 32], sel()).await.unwrap();
    let accepted = verify(&d.ak, &newer, &[2; 32], &sel(), None).unwrap();
    assert!(accepted.clock().clock > older.clock.clock);
    // Same boot, lower clock than the last accepted quote.
    assert_eq!(
        verify(&d.ak, &older, &[1; 32], &sel(), Some(accepted.clock())),
        Err(QuoteError::ClockWentBack {
            last: accepted.clock().clock,
            now: older.clock.clock,
        })
    );
}

/// The collector verifies checkpoint quotes whose qualifying data is a
/// digest it computes itself from the lineage head.
#[tokio::test]
async fn a_checkpoint_digest_is_arbitrary_qualifying_data() {
    let d = device().await;
    let head = sha256(b"mctc lineage checkpoint seq=41 head=...");
    let evidence = d.device.quote(head.to_vec(), sel()).await.unwrap();
    verify(&d.ak, &evidence, &head, &sel(), None).unwrap();
    let other_head = sha256(b"mctc lineage checkpoint seq=42 head=...");
    assert_eq!(
        verify(&d.ak, &evidence, &other_head, &sel(), None),
        Err(QuoteError::QualifyingDataMismatch)
    );
}

#[tokio::test]
async fn rsa_attestation_keys_are_verified_too() {
    let tpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let device = open(&tpm, dir.path(), EkKind::Rsa2048, AkKind::Rsa2048).await;
    let ak = AkPublic::parse(&device.identity().await.unwrap().ak_public).unwrap();
    let evidence = device.quote(vec![9; 20], sel()).await.unwrap();
    verify(&ak, &evidence, &[9; 20], &sel(), None).unwrap();
    let mut bad = evidence.clone();
    bad.attest[20] ^= 1;
    assert!(verify(&ak, &bad, &[9; 20], &sel(), None).is_err());
}

#[tokio::test]
async fn reference_values_name_the_pcrs_that_drifted() {
    let d = device().await;
    let golden = d.device.quote(vec![1; 32], sel()).await.unwrap();
    let golden = verify(&d.ak, &golden, &[1; 32], &sel(), None).unwrap();
    let allowed: BTreeMap<u8, Vec<Vec<u8>>> = golden
        .pcrs()
        .iter()
        .map(|(i, v)| (i, vec![v.to_vec()]))
        .collect();
    let reference = ReferenceValues::new(HashAlg::Sha256, allowed).unwrap();
    assert_eq!(reference.selection(), sel());
    assert!(reference.compare(golden.pcrs()).is_empty());

    d.tpm.extend_pcr(16, b"unexpected binary").unwrap();
    let now = d.device.quote(vec![2; 32], sel()).await.unwrap();
    let now = verify(&d.ak, &now, &[2; 32], &sel(), Some(golden.clock())).unwrap();
    assert_eq!(
        reference.compare(now.pcrs()),
        vec![PcrMismatch::Differs {
            pcr: 16,
            actual: now.pcrs().get(16).unwrap().to_vec()
        }]
    );
}

// ---- checks that stand on their own, not only behind the signature ------

/// A software "AK" that claims to be a restricted TPM key. A real TPM never
/// signs a non-TPM-generated structure with a restricted key; this key
/// does, to show that the structural checks hold even when a signature
/// verifies (e.g. an AK that was not really restricted).
struct SoftwareAk {
    key: EcdsaKeyPair,
    public: AkPublic,
}

impl SoftwareAk {
    fn new() -> SoftwareAk {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = key.public_key().as_ref();
        let mut t = Vec::new();
        t.extend_from_slice(&0x0023u16.to_be_bytes()); // ECC
        t.extend_from_slice(&0x000bu16.to_be_bytes()); // SHA-256 name
        // fixedTPM | fixedParent | sensitiveDataOrigin | restricted | sign
        t.extend_from_slice(&(0x2 | 0x10 | 0x20 | 0x1_0000 | 0x4_0000u32).to_be_bytes());
        t.extend_from_slice(&[0, 0]); // authPolicy
        t.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric NULL
        t.extend_from_slice(&0x0018u16.to_be_bytes()); // ECDSA
        t.extend_from_slice(&0x000bu16.to_be_bytes()); // SHA-256
        t.extend_from_slice(&0x0003u16.to_be_bytes()); // P-256
        t.extend_from_slice(&0x0010u16.to_be_bytes()); // kdf NULL
        t.extend_from_slice(&[0, 32]);
        t.extend_from_slice(&point[1..33]);
        t.extend_from_slice(&[0, 32]);
        t.extend_from_slice(&point[33..65]);
        let mut public = (t.len() as u16).to_be_bytes().to_vec();
        public.extend_from_slice(&t);
        SoftwareAk {
            key,
            public: AkPublic::parse(&public).unwrap(),
        }
    }

    fn sign(&self, attest: &[u8]) -> Vec<u8> {
        let sig = self.key.sign(&SystemRandom::new(), attest).unwrap();
        let sig = sig.as_ref();
        let mut out = Vec::new();
        out.extend_from_slice(&0x0018u16.to_be_bytes());
        out.extend_from_slice(&0x000bu16.to_be_bytes());
        out.extend_from_slice(&[0, 32]);
        out.extend_from_slice(&sig[..32]);
        out.extend_from_slice(&[0, 32]);
        out.extend_from_slice(&sig[32..]);
        out
    }
}

fn attest(magic: u32, kind: u16, nonce: &[u8], pcrs: &PcrValues) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&magic.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&[0, 0]); // qualifiedSigner
    b.extend_from_slice(&(nonce.len() as u16).to_be_bytes());
    b.extend_from_slice(nonce);
    b.extend_from_slice(&1000u64.to_be_bytes());
    b.extend_from_slice(&1u32.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b.push(1);
    b.extend_from_slice(&0u64.to_be_bytes());
    b.extend_from_slice(&1u32.to_be_bytes());
    b.extend_from_slice(&0x000bu16.to_be_bytes());
    b.push(3);
    let mask = pcrs.selection().mask();
    b.extend_from_slice(&[mask as u8, (mask >> 8) as u8, (mask >> 16) as u8]);
    b.extend_from_slice(&[0, 32]);
    b.extend_from_slice(&pcrs.composite_digest());
    b
}

#[test]
fn structural_checks_hold_even_when_the_signature_verifies() {
    let ak = SoftwareAk::new();
    let selection = PcrSelection::sha256(&[0, 16]).unwrap();
    let pcrs = PcrValues::new(selection, vec![vec![0; 32], vec![1; 32]]).unwrap();
    let nonce = [5u8; 16];
    let make = |magic, kind| {
        let attest = attest(magic, kind, &nonce, &pcrs);
        Evidence {
            signature: ak.sign(&attest),
            attest,
            pcrs: pcrs.clone(),
            clock: ClockInfo {
                clock: 0,
                reset_count: 0,
                restart_count: 0,
                safe: true,
            },
        }
    };
    // Well-formed and signed: accepted (the construction is right)...
    verify(
        &ak.public,
        &make(0xff54_4347, 0x8018),
        &nonce,
        &selection,
        None,
    )
    .unwrap();
    // ...so each refusal below is the structural check alone.
    assert_eq!(
        verify(
            &ak.public,
            &make(0xff54_4346, 0x8018),
            &nonce,
            &selection,
            None
        ),
        Err(QuoteError::BadMagic(0xff54_4346))
    );
    assert_eq!(
        verify(
            &ak.public,
            &make(0xff54_4347, 0x8017),
            &nonce,
            &selection,
            None
        ),
        Err(QuoteError::NotAQuote(0x8017))
    );
}

/// The numbers the agent's drift loop (every 250 ms) and renewals depend on.
#[tokio::test]
async fn latency_of_the_hot_paths() {
    let d = device().await;
    let selection = sel();
    let time = |n: u32, elapsed: Duration| elapsed / n;

    let n = 200;
    let start = Instant::now();
    for _ in 0..n {
        let values = d.device.read_pcrs(selection).await.unwrap();
        std::hint::black_box(values.composite_digest());
    }
    let read = time(n, start.elapsed());

    let start = Instant::now();
    for _ in 0..n {
        d.device.boot_counters().await.unwrap();
    }
    let counters = time(n, start.elapsed());

    let n = 50;
    let start = Instant::now();
    for i in 0..n {
        d.device.quote(vec![i as u8; 32], selection).await.unwrap();
    }
    let quote = time(n, start.elapsed());

    let evidence = d.device.quote(vec![1; 32], selection).await.unwrap();
    let start = Instant::now();
    for _ in 0..n {
        verify(&d.ak, &evidence, &[1; 32], &selection, None).unwrap();
    }
    let verify_time = time(n, start.elapsed());

    eprintln!(
        "read_pcrs(9 PCRs)+digest {read:?}, boot_counters {counters:?}, quote {quote:?}, verify_quote {verify_time:?}"
    );
    // Generous bounds: the drift loop has 250 ms; a renewal a few seconds.
    assert!(read < Duration::from_millis(25), "read_pcrs {read:?}");
    assert!(
        counters < Duration::from_millis(25),
        "boot_counters {counters:?}"
    );
    assert!(quote < Duration::from_millis(200), "quote {quote:?}");
    assert!(
        verify_time < Duration::from_millis(20),
        "verify {verify_time:?}"
    );
}

/// A lineage checkpoint carries the quote and its signature but no PCR
/// values: the origin, the qualifying data and the signed digest are what
/// must hold.
#[tokio::test]
async fn a_checkpoint_quote_verifies_without_pcr_values_and_nothing_else_does() {
    use mctc_attest::verifier::verify_signed_quote;

    let d = device().await;
    let other = device().await;
    let head = sha256(b"lineage head");
    let evidence = d.device.quote(head.to_vec(), sel()).await.unwrap();

    let signed = verify_signed_quote(&d.ak, &evidence.attest, &evidence.signature, &head).unwrap();
    assert_eq!(signed.selection(), &sel());
    assert_eq!(
        signed.pcr_digest(),
        evidence.pcrs.composite_digest().as_slice()
    );
    assert_eq!(signed.clock(), &evidence.clock);

    let wrong_head = sha256(b"another head");
    assert_eq!(
        verify_signed_quote(&d.ak, &evidence.attest, &evidence.signature, &wrong_head),
        Err(QuoteError::QualifyingDataMismatch)
    );
    assert_eq!(
        verify_signed_quote(&other.ak, &evidence.attest, &evidence.signature, &head),
        Err(QuoteError::BadSignature)
    );
    for i in 0..evidence.attest.len() {
        let mut attest = evidence.attest.clone();
        attest[i] ^= 0x01;
        assert!(
            verify_signed_quote(&d.ak, &attest, &evidence.signature, &head).is_err(),
            "byte {i} of TPMS_ATTEST changed and still verified"
        );
    }
    let mut signature = evidence.signature.clone();
    let last = signature.len() - 1;
    signature[last] ^= 0x01;
    assert!(verify_signed_quote(&d.ak, &evidence.attest, &signature, &head).is_err());
}

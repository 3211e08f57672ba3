//! EK trust against swtpm manufactured by `swtpm_setup --create-ek-cert`
//! (RSA-2048 EK certificate in NV 0x01c00002, signed by a private local CA:
//! root + intermediate), and the allow-list for TPMs without certificates.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::open;
use mctc_attest::device::{AkKind, EkKind, Identity};
use mctc_attest::verifier::{
    EkCaBundle, EkCertError, EkPolicy, EkPublic, EkTrust, verify_ek_certificate,
};
use mctc_tests::{Swtpm, SwtpmOptions};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn certified_swtpm() -> Swtpm {
    Swtpm::start_with(SwtpmOptions {
        ek_certificates: true,
    })
    .unwrap()
}

fn ca_pem(tpm: &Swtpm, which: &[usize]) -> Vec<u8> {
    let files = tpm.ek_ca_certificates();
    which
        .iter()
        .flat_map(|&i| std::fs::read(&files[i]).unwrap())
        .collect()
}

async fn identity(tpm: &Swtpm, ek: EkKind) -> (Identity, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let device = open(tpm, dir.path(), ek, AkKind::EccP256).await;
    let id = device.identity().await.unwrap();
    // Close the connection before the caller opens the same swtpm again
    // (it serves one connection at a time; a dropped handle closes its
    // connection later, on the worker thread).
    device.shutdown().await;
    (id, dir)
}

#[tokio::test]
async fn a_manufacturer_certified_ek_is_accepted() {
    let tpm = certified_swtpm();
    let (id, _dir) = identity(&tpm, EkKind::Rsa2048).await;
    let cert = id
        .ek_cert
        .as_deref()
        .expect("swtpm_setup wrote an RSA EK certificate");
    let ek = EkPublic::parse(&id.ek_public).unwrap();
    let bundle = EkCaBundle::from_pem(&ca_pem(&tpm, &[0, 1])).unwrap();
    assert_eq!(bundle.len(), 2);
    // The EK created from the TCG template is the certified key.
    verify_ek_certificate(cert, &ek, &bundle, now()).unwrap();
    let policy = EkPolicy::new(Some(bundle), []);
    assert_eq!(policy.check(&ek, Some(cert), now()), Ok(EkTrust::Certified));
}

#[tokio::test]
async fn an_ek_certificate_from_an_unknown_ca_is_rejected() {
    let tpm = certified_swtpm();
    let (id, _dir) = identity(&tpm, EkKind::Rsa2048).await;
    let cert = id.ek_cert.unwrap();
    let ek = EkPublic::parse(&id.ek_public).unwrap();

    // A CA nobody configured for this TPM.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Some Other TPM Vendor CA");
    let stranger = params.self_signed(&key).unwrap();
    let bundle = EkCaBundle::from_pem(stranger.pem().as_bytes()).unwrap();
    assert!(matches!(
        verify_ek_certificate(&cert, &ek, &bundle, now()),
        Err(EkCertError::UnknownIssuer { .. })
    ));
    assert!(matches!(
        EkPolicy::new(Some(bundle), []).check(&ek, Some(&cert), now()),
        Err(EkCertError::UnknownIssuer { .. })
    ));

    // Another manufacturer's CA with the very same names (every swtpm local
    // CA is called "swtpm-localca"): the names match, the signatures do not.
    let other = certified_swtpm();
    let impostor = EkCaBundle::from_pem(&ca_pem(&other, &[0, 1])).unwrap();
    assert!(matches!(
        verify_ek_certificate(&cert, &ek, &impostor, now()),
        Err(EkCertError::BadSignature { .. })
    ));
}

#[tokio::test]
async fn the_chain_must_reach_a_configured_root_and_be_valid_now() {
    let tpm = certified_swtpm();
    let (id, _dir) = identity(&tpm, EkKind::Rsa2048).await;
    let cert = id.ek_cert.unwrap();
    let ek = EkPublic::parse(&id.ek_public).unwrap();

    // Root only: the intermediate that signed the EK certificate is missing.
    let root_only = EkCaBundle::from_pem(&ca_pem(&tpm, &[0])).unwrap();
    assert!(matches!(
        verify_ek_certificate(&cert, &ek, &root_only, now()),
        Err(EkCertError::UnknownIssuer { .. })
    ));
    // Intermediate only: it does not lead to a self-signed root.
    let intermediate_only = EkCaBundle::from_pem(&ca_pem(&tpm, &[1])).unwrap();
    assert!(matches!(
        verify_ek_certificate(&cert, &ek, &intermediate_only, now()),
        Err(EkCertError::UnknownIssuer { .. })
    ));
    // Before the certificates were issued.
    let full = EkCaBundle::from_pem(&ca_pem(&tpm, &[0, 1])).unwrap();
    assert!(matches!(
        verify_ek_certificate(&cert, &ek, &full, 0),
        Err(EkCertError::NotValidNow { .. })
    ));
    // Corrupted certificate bytes.
    let mut corrupt = cert.clone();
    let at = corrupt.len() / 2;
    corrupt[at] ^= 0xff;
    assert!(verify_ek_certificate(&corrupt, &ek, &full, now()).is_err());
    assert!(matches!(
        verify_ek_certificate(&cert[..cert.len() - 1], &ek, &full, now()),
        Err(EkCertError::Malformed(_))
    ));
}

#[tokio::test]
async fn a_certificate_for_another_key_is_rejected() {
    let tpm = certified_swtpm();
    let (rsa, _d1) = identity(&tpm, EkKind::Rsa2048).await;
    let cert = rsa.ek_cert.unwrap();
    let bundle = EkCaBundle::from_pem(&ca_pem(&tpm, &[0, 1])).unwrap();

    // A genuine certificate presented with another TPM's EK.
    let other = Swtpm::start().unwrap();
    let (other_id, _d2) = identity(&other, EkKind::Rsa2048).await;
    let other_ek = EkPublic::parse(&other_id.ek_public).unwrap();
    assert_eq!(
        verify_ek_certificate(&cert, &other_ek, &bundle, now()),
        Err(EkCertError::KeyMismatch)
    );

    // swtpm makes no P-256 EK certificate: the ECC EK has none, and this
    // RSA certificate does not certify it.
    let (ecc, _d3) = identity(&tpm, EkKind::EccP256).await;
    assert_eq!(ecc.ek_cert, None);
    let ecc_ek = EkPublic::parse(&ecc.ek_public).unwrap();
    assert_eq!(
        verify_ek_certificate(&cert, &ecc_ek, &bundle, now()),
        Err(EkCertError::KeyMismatch)
    );
}

#[tokio::test]
async fn tpms_without_certificates_need_the_allow_list() {
    let tpm = Swtpm::start().unwrap();
    let (id, _dir) = identity(&tpm, EkKind::EccP256).await;
    assert_eq!(id.ek_cert, None);
    let ek = EkPublic::parse(&id.ek_public).unwrap();

    assert_eq!(
        EkPolicy::new(None, []).check(&ek, None, now()),
        Err(EkCertError::NotAllowListed)
    );
    let other = [0xab; 32];
    assert_eq!(
        EkPolicy::new(None, [other]).check(&ek, None, now()),
        Err(EkCertError::NotAllowListed)
    );
    let listed = EkPolicy::new(None, [other, id.ek_fingerprint()]);
    assert_eq!(listed.check(&ek, None, now()), Ok(EkTrust::AllowListed));

    // A certificate without a configured CA is not trusted by itself.
    let certified = certified_swtpm();
    let (rsa, _d) = identity(&certified, EkKind::Rsa2048).await;
    let rsa_ek = EkPublic::parse(&rsa.ek_public).unwrap();
    assert_eq!(
        EkPolicy::new(None, []).check(&rsa_ek, rsa.ek_cert.as_deref(), now()),
        Err(EkCertError::NoCaConfigured)
    );
}

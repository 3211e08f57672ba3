//! Enrollment against a real swtpm: the software MakeCredential must be what
//! TPM2_ActivateCredential accepts, for ECC P-256 and RSA-2048 EKs, and only
//! for the AK (and EK) it was made for.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

mod common;

use common::open;
use mctc_attest::device::{AkKind, EkKind};
use mctc_attest::verifier::{AkPublic, EkPublic, make_credential};
use mctc_attest::{Error, ErrorClass, TpmOp};
use mctc_tests::Swtpm;

async fn enroll_round_trip(ek_kind: EkKind, ak_kind: AkKind) {
    let tpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let device = open(&tpm, dir.path(), ek_kind, ak_kind).await;
    let id = device.identity().await.unwrap();

    // Authority side: only public bytes from the device.
    let ek = EkPublic::parse(&id.ek_public).unwrap();
    let ak = AkPublic::parse(&id.ak_public).unwrap();
    assert_eq!(ak.name(), id.ak_name.as_slice());
    for secret in [vec![0x42; 32], vec![7], b"sixteen byte key".to_vec()] {
        let challenge = make_credential(&ek, ak.name(), &secret).unwrap();
        let answer = device
            .activate_credential(challenge.credential_blob, challenge.encrypted_secret)
            .await
            .unwrap();
        assert_eq!(answer.as_slice(), secret.as_slice());
    }
}

#[tokio::test]
async fn ecc_ek_make_and_activate_credential() {
    enroll_round_trip(EkKind::EccP256, AkKind::EccP256).await;
}

#[tokio::test]
async fn rsa_ek_make_and_activate_credential() {
    enroll_round_trip(EkKind::Rsa2048, AkKind::EccP256).await;
}

#[tokio::test]
async fn rsa_ek_with_rsa_ak() {
    enroll_round_trip(EkKind::Rsa2048, AkKind::Rsa2048).await;
}

#[tokio::test]
async fn a_credential_for_another_ak_does_not_activate() {
    for ek_kind in [EkKind::EccP256, EkKind::Rsa2048] {
        let tpm = Swtpm::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let device = open(&tpm, dir.path(), ek_kind, AkKind::EccP256).await;
        let id = device.identity().await.unwrap();
        let ek = EkPublic::parse(&id.ek_public).unwrap();

        // Another AK, e.g. one the attacker controls outside this TPM.
        let other = Swtpm::start().unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let other_device = open(&other, other_dir.path(), EkKind::EccP256, AkKind::EccP256).await;
        let other_ak = other_device.identity().await.unwrap().ak_name;
        assert_ne!(other_ak, id.ak_name);

        let challenge = make_credential(&ek, &other_ak, b"secret for the wrong key").unwrap();
        let err = device
            .activate_credential(challenge.credential_blob, challenge.encrypted_secret)
            .await
            .unwrap_err();
        match &err {
            Error::Tpm(e) => {
                assert_eq!(e.op, TpmOp::ActivateCredential, "{err}");
                // TPM_RC_INTEGRITY (format one, error number 0x1f).
                assert_eq!(e.rc().unwrap() & 0xbf, 0x9f, "{err}");
            }
            other => panic!("expected a TPM error, got {other}"),
        }
        assert_eq!(err.class(), ErrorClass::Reattest);

        // The device still works for the right credential afterwards.
        let good = make_credential(&ek, &id.ak_name, b"right").unwrap();
        let answer = device
            .activate_credential(good.credential_blob, good.encrypted_secret)
            .await
            .unwrap();
        assert_eq!(answer.as_slice(), b"right");
    }
}

#[tokio::test]
async fn a_credential_for_another_ek_does_not_activate() {
    let tpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let device = open(&tpm, dir.path(), EkKind::EccP256, AkKind::EccP256).await;
    let id = device.identity().await.unwrap();

    let other = Swtpm::start().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other_device = open(&other, other_dir.path(), EkKind::EccP256, AkKind::EccP256).await;
    let other_ek = EkPublic::parse(&other_device.identity().await.unwrap().ek_public).unwrap();

    let challenge = make_credential(&other_ek, &id.ak_name, b"not yours").unwrap();
    let err = device
        .activate_credential(challenge.credential_blob, challenge.encrypted_secret)
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Reattest, "{err}");
}

#[tokio::test]
async fn malformed_challenges_are_refused_before_the_tpm() {
    let tpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let device = open(&tpm, dir.path(), EkKind::EccP256, AkKind::EccP256).await;
    device.identity().await.unwrap();
    for (blob, secret) in [
        (vec![], vec![0, 1, 2]),
        (vec![0, 5, 1], vec![0, 1, 2]),
        (vec![0, 1, 9, 9], vec![0, 1, 2]),
    ] {
        let err = device.activate_credential(blob, secret).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }
}

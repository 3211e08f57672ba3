//! The device side against a real swtpm: opening, identity, persistence of
//! the AK, PCRs, boot counters, and recovery from TPM resets, restarts and a
//! killed simulator.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

mod common;

use std::str::FromStr;

use common::{config, extended, open, open_default, sha256};
use mctc_attest::device::{AkKind, EkKind, Tpm};
use mctc_attest::verifier::{AkPublic, EkPublic};
use mctc_attest::{Error, ErrorClass, PcrSelection};
use mctc_tests::Swtpm;

#[tokio::test]
async fn a_simulator_is_refused_unless_allowed() {
    let tpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let refused = Tpm::open(mctc_attest::device::TpmConfig {
        allow_software_tpm: false,
        ..config(&tpm, dir.path())
    })
    .await
    .unwrap_err();
    assert!(
        matches!(refused, Error::SimulatorRefused { ref manufacturer, .. } if manufacturer == "IBM"),
        "{refused}"
    );
    assert_eq!(refused.class(), ErrorClass::Fatal);

    let allowed = open_default(&tpm, dir.path()).await;
    assert!(allowed.info().simulator);
    assert_eq!(allowed.info().vendor, "SW TPM");
}

#[tokio::test]
async fn a_bad_tcti_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = mctc_attest::device::TpmConfig::new(dir.path());
    cfg.tcti = "nonsense-tcti:".into();
    let err = Tpm::open(cfg).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal, "{err}");
}

#[tokio::test]
async fn identity_is_stable_across_restarts_until_reprovisioned() {
    let tpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();

    let first = open_default(&tpm, dir.path()).await;
    let id1 = first.identity().await.unwrap();
    // Valid, checked structures with the expected kinds.
    let ek = EkPublic::parse(&id1.ek_public).unwrap();
    let ak = AkPublic::parse(&id1.ak_public).unwrap();
    assert_eq!(ek.kind(), EkKind::EccP256);
    assert_eq!(ak.kind(), AkKind::EccP256);
    assert_eq!(ak.name(), id1.ak_name.as_slice());
    assert_eq!(ak.fingerprint(), id1.ak_fingerprint());
    assert_eq!(ek.fingerprint(), id1.ek_fingerprint());
    assert_eq!(id1.ek_cert, None, "a plain swtpm has no EK certificate");
    // Asking again gives the same keys.
    assert_eq!(first.identity().await.unwrap(), id1);
    first.shutdown().await;

    // A new process (worker) on the same TPM and state: the same AK.
    let second = open_default(&tpm, dir.path()).await;
    assert_eq!(second.identity().await.unwrap(), id1);

    // Re-provisioning replaces the AK, keeps the EK.
    let id2 = second.reprovision().await.unwrap();
    assert_eq!(id2.ek_public, id1.ek_public);
    assert_ne!(id2.ak_name, id1.ak_name);
    assert_eq!(second.identity().await.unwrap(), id2);

    // Deleting it: quoting is refused until a new identity is made.
    second.delete_ak().await.unwrap();
    let err = second
        .quote(vec![1; 8], PcrSelection::sha256(&[0]).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotProvisioned), "{err}");
    let id3 = second.identity().await.unwrap();
    assert_ne!(id3.ak_name, id2.ak_name);
}

#[tokio::test]
async fn the_ak_blob_is_private_and_bound_to_its_ek() {
    let tpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let device = open_default(&tpm, dir.path()).await;
    device.identity().await.unwrap();
    device.shutdown().await;
    let blob = dir.path().join("attestation-key.blob");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&blob).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // The same state on another TPM (another EK): refused, not replaced.
    let other = Swtpm::start().unwrap();
    let device = open_default(&other, dir.path()).await;
    let err = device.identity().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::AkBlob {
                problem: mctc_attest::AkBlobProblem::OtherEk,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Fatal);

    // Switching key kinds without re-provisioning is refused too.
    let device = open(&tpm, dir.path(), EkKind::EccP256, AkKind::Rsa2048).await;
    let err = device.identity().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::AkBlob {
                problem: mctc_attest::AkBlobProblem::OtherKind,
                ..
            }
        ),
        "{err}"
    );

    // A corrupted blob is reported as such.
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let device = open_default(&tpm, dir.path()).await;
    let err = device.identity().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::AkBlob {
                problem: mctc_attest::AkBlobProblem::Corrupt,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn rsa_keys_work_too() {
    let tpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let device = open(&tpm, dir.path(), EkKind::Rsa2048, AkKind::Rsa2048).await;
    let id = device.identity().await.unwrap();
    assert_eq!(
        EkPublic::parse(&id.ek_public).unwrap().kind(),
        EkKind::Rsa2048
    );
    assert_eq!(
        AkPublic::parse(&id.ak_public).unwrap().kind(),
        AkKind::Rsa2048
    );
}

/// A crashed process leaves transient objects behind; without a resource
/// manager three of them fill the TPM. Opening must flush them.
#[tokio::test]
async fn leftover_transient_objects_are_flushed_on_open() {
    use tss_esapi::Context;
    use tss_esapi::abstraction::ek::create_ek_object_2;
    use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, DefaultKey};
    use tss_esapi::interface_types::ecc::EccCurve;
    use tss_esapi::tcti_ldr::TctiNameConf;

    let tpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut crashed = Context::new(TctiNameConf::from_str(&tpm.tcti()).unwrap()).unwrap();
    let p256 = AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256);
    let mut loaded = 0;
    let full = loop {
        match create_ek_object_2(&mut crashed, p256, DefaultKey) {
            Ok(_) => loaded += 1,
            Err(e) => break e,
        }
        assert!(loaded < 64, "the TPM never filled up");
    };
    assert!(
        matches!(full, tss_esapi::Error::Tss2Error(rc)
            if rc.kind() == Some(tss_esapi::constants::Tss2ResponseCodeKind::ObjectMemory)),
        "expected TPM_RC_OBJECT_MEMORY, got {full}"
    );
    // It also held an authorization session.
    crashed
        .start_auth_session(
            None,
            None,
            None,
            tss_esapi::constants::SessionType::Hmac,
            tss_esapi::structures::SymmetricDefinition::AES_128_CFB,
            tss_esapi::interface_types::algorithm::HashingAlgorithm::Sha256,
        )
        .unwrap()
        .unwrap();
    // The process "crashes": nothing is flushed.
    std::mem::forget(crashed);

    let device = open_default(&tpm, dir.path()).await;
    device.identity().await.unwrap();
    device.shutdown().await;

    // Nothing of the crashed process (nor of ours, after shutdown) is left.
    let mut probe = Context::new(TctiNameConf::from_str(&tpm.tcti()).unwrap()).unwrap();
    for first in [0x8000_0000, 0x0200_0000] {
        let (data, _) = probe
            .get_capability(tss_esapi::constants::CapabilityType::Handles, first, 64)
            .unwrap();
        match data {
            tss_esapi::structures::CapabilityData::Handles(handles) => {
                assert!(handles.is_empty(), "left over at {first:#x}: {handles:?}")
            }
            other => panic!("unexpected capability data {other:?}"),
        }
    }
}

#[tokio::test]
async fn pcrs_are_read_extended_and_drift_is_visible() {
    let tpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let device = open_default(&tpm, dir.path()).await;
    // More than 8 PCRs: several TPM2_PCR_Read commands.
    let selection = PcrSelection::sha256(&[0, 1, 2, 3, 4, 5, 6, 7, 16, 23]).unwrap();
    let before = device.read_pcrs(selection).await.unwrap();
    assert_eq!(before.values().len(), 10);
    assert_eq!(before.get(16).unwrap(), tpm.read_pcr(16).unwrap());

    // The agent measures a file into PCR 16.
    let measured = sha256(b"/etc/mctc/agent.toml contents");
    device.extend_pcr(16, measured).await.unwrap();
    let after = device.read_pcrs(selection).await.unwrap();
    assert_eq!(
        after.get(16).unwrap(),
        extended(before.get(16).unwrap(), &measured)
    );
    assert_eq!(after.get(16).unwrap(), tpm.read_pcr(16).unwrap());
    assert_ne!(after.composite_digest(), before.composite_digest());

    // Something outside the agent extends PCR 23: drift shows.
    tpm.extend_pcr(23, b"attacker").unwrap();
    let drifted = device.read_pcrs(selection).await.unwrap();
    assert_ne!(drifted.composite_digest(), after.composite_digest());
    assert_eq!(drifted.get(23).unwrap(), tpm.read_pcr(23).unwrap());

    // Bad arguments are typed errors.
    assert!(matches!(
        device.extend_pcr(24, measured).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        device.quote(vec![0; 65], selection).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn an_inactive_bank_is_a_configuration_error() {
    // swtpm_setup with certificates activates only the SHA-256 bank.
    let tpm = Swtpm::start_with(mctc_tests::SwtpmOptions {
        ek_certificates: true,
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let device = open_default(&tpm, dir.path()).await;
    let sha1 = PcrSelection::new(mctc_attest::HashAlg::Sha1, &[0]).unwrap();
    let err = device.read_pcrs(sha1).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[tokio::test]
async fn boot_counters_follow_resets_and_restarts() {
    let tpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let device = open_default(&tpm, dir.path()).await;
    device.identity().await.unwrap();
    let c0 = device.boot_counters().await.unwrap();
    assert_eq!(
        device.boot_counters().await.unwrap(),
        c0,
        "no change, no news"
    );

    tpm.restart().unwrap();
    let c1 = device.boot_counters().await.unwrap();
    assert_eq!(c1.reset, c0.reset);
    assert_eq!(c1.restart, c0.restart + 1);

    tpm.reset().unwrap();
    let c2 = device.boot_counters().await.unwrap();
    assert_eq!(c2.reset, c0.reset + 1);
    assert_eq!(c2.restart, 0);

    // Quotes work after the reset (the keys were reloaded) and carry the
    // new counters.
    let evidence = device
        .quote(vec![7; 32], PcrSelection::sha256(&[0, 16]).unwrap())
        .await
        .unwrap();
    assert_eq!(evidence.clock.boot(), c2);
    let clock = device.read_clock().await.unwrap();
    assert_eq!(clock.boot(), c2);
}

#[tokio::test]
async fn the_worker_survives_the_simulator_being_killed() {
    let mut tpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let device = open_default(&tpm, dir.path()).await;
    let id = device.identity().await.unwrap();
    let selection = PcrSelection::sha256(&[0, 16]).unwrap();
    let before = device.quote(vec![1; 16], selection).await.unwrap();

    tpm.kill();
    for _ in 0..3 {
        let err = device.quote(vec![2; 16], selection).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Retry, "{err}");
        let err = device.read_pcrs(selection).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Retry, "{err}");
    }

    tpm.start_again().unwrap();
    let after = device.quote(vec![3; 16], selection).await.unwrap();
    assert_eq!(after.clock.reset_count, before.clock.reset_count + 1);
    // Same identity: the AK was reloaded from its blob.
    assert_eq!(device.identity().await.unwrap(), id);
    let ak = AkPublic::parse(&id.ak_public).unwrap();
    let verdict = mctc_attest::verifier::verify_quote(
        &ak,
        &after,
        &mctc_attest::verifier::QuoteExpectation {
            qualifying_data: &[3; 16],
            selection: &selection,
            last_accepted: Some(&before.clock),
        },
    )
    .unwrap();
    assert_eq!(
        verdict.continuity(),
        mctc_attest::verifier::Continuity::Reset
    );
}

#[tokio::test]
async fn clones_share_one_worker_and_shutdown_stops_it() {
    let tpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let device = open_default(&tpm, dir.path()).await;
    device.identity().await.unwrap();
    let selection = PcrSelection::sha256(&[0, 1, 2, 3, 16]).unwrap();
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let d = device.clone();
        tasks.push(tokio::spawn(async move {
            d.quote(vec![i; 20], selection)
                .await
                .map(|e| e.attest.len())
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().unwrap() > 0);
    }
    let other = device.clone();
    device.shutdown().await;
    assert!(matches!(
        other.read_pcrs(selection).await,
        Err(Error::WorkerStopped)
    ));
}

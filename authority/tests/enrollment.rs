//! Enrollment against the real binary: credential activation on swtpm, the
//! EK trust rules (pinned hash, vendor CA, first use), and every refusal.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

mod common;

use common::*;
use mctc_attest::device::EkKind;
use mctc_shim::messages::{DeviceStatus, EnrollStatus, RegistryRecord};
use mctc_shim::topics::DeviceTopic;
use mctc_shim::{RingCrypto, Signed};
use mctc_tests::SwtpmOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_device_enrolls_and_its_registry_record_is_published() {
    let mut fleet = Fleet::new();
    fleet.start();
    let mut device = Device::new(&fleet, "locker-1").await;
    fleet.add(
        "locker-1",
        "locker",
        &["--ek-sha256", &device.ek_sha256_hex()],
    );
    assert_eq!(device.enroll().await, EnrollStatus::Ok);

    // Once the record is out (a first subscriber sees it, live or
    // retained), a collector joining later gets it retained and signed.
    let mut early = fleet
        .client("mctc-collector", &["mctc/v1/registry/+"])
        .await;
    early
        .next_with(&topic(DeviceTopic::Registry, &device.id), ANSWER)
        .await
        .expect("the registry record is published");
    let mut collector = fleet
        .client("mctc-collector", &["mctc/v1/registry/+"])
        .await;
    let (bytes, retained) = collector
        .next_with(&topic(DeviceTopic::Registry, &device.id), ANSWER)
        .await
        .expect("a registry record");
    assert!(retained);
    let record = RegistryRecord::open(&bytes, &fleet.keys(), &RingCrypto).unwrap();
    assert_eq!(record.sub, device.id);
    assert_eq!(record.class.0, "locker");
    assert_eq!(record.ak_public.0, device.identity.ak_public.as_slice());
    assert_eq!(record.ak_name.0, device.identity.ak_name.as_slice());
    assert_eq!(record.ek_sha256.0, device.identity.ek_fingerprint());
    assert_eq!(record.status, DeviceStatus::Active);
    assert_eq!(record.version, 1);

    let show = fleet.cli(&["devices", "show", "locker-1", "--json"]);
    assert_eq!(show.code, 0, "{show:?}");
    let json = show.json();
    assert_eq!(json["enrolled"], true, "{json}");
    assert_eq!(json["ek_sha256"], device.ek_sha256_hex());
    assert_eq!(
        json["ak_sha256"],
        hex::encode(device.identity.ak_fingerprint())
    );

    // Enrolling again (agent restart) is idempotent; a new AK in the same
    // TPM re-enrolls and bumps the registry version.
    assert_eq!(device.enroll().await, EnrollStatus::Ok);
    device.identity = device.tpm.reprovision().await.unwrap();
    assert_eq!(device.enroll().await, EnrollStatus::Ok);
    let mut version = 0;
    while let Some(bytes) = collector
        .next_on(&topic(DeviceTopic::Registry, &device.id), SILENCE)
        .await
    {
        let record = RegistryRecord::open(&bytes, &fleet.keys(), &RingCrypto).unwrap();
        assert!(record.version > version);
        version = record.version;
        if record.ak_public.0 == device.identity.ak_public.as_slice() {
            break;
        }
    }
    assert_eq!(version, 3, "three enrollments, three versions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_devices_mismatched_eks_and_wrong_proofs_are_refused() {
    let mut fleet = Fleet::with(&policy().replace("allow_first_use = true", ""), None);
    // Two TPMs that will both claim "locker-5"; their EKs are allow-listed
    // (as a fleet without vendor certificates would do).
    let mut first = Device::new(&fleet, "locker-5").await;
    let mut impostor = Device::new(&fleet, "locker-5").await;
    fleet.write_config(
        "authority.toml",
        &format!(
            "ek_allow_sha256 = [{:?}, {:?}]",
            first.ek_sha256_hex(),
            impostor.ek_sha256_hex()
        ),
    );
    fleet.start();

    // Not registered, and no class admits unknown ids.
    let mut stranger = Device::new(&fleet, "stranger").await;
    assert_eq!(stranger.enroll().await, EnrollStatus::NotAllowed);

    // Registered with another TPM's EK hash.
    let mut device = Device::new(&fleet, "locker-2").await;
    fleet.add("locker-2", "locker", &["--ek-sha256", &"ab".repeat(32)]);
    assert_eq!(device.enroll().await, EnrollStatus::BadEk);

    // Registered without a pin, no vendor certificate, not allow-listed.
    let mut unpinned = Device::new(&fleet, "locker-3").await;
    fleet.add("locker-3", "locker", &[]);
    assert_eq!(unpinned.enroll().await, EnrollStatus::BadEk);

    // The right EK, but a proof made from another secret.
    let mut honest = Device::new(&fleet, "locker-4").await;
    fleet.add(
        "locker-4",
        "locker",
        &["--ek-sha256", &honest.ek_sha256_hex()],
    );
    let request_id = rand_bytes::<16>();
    honest.request_enrollment(request_id).await.unwrap();
    let forged = mctc_shim::messages::enroll_proof(
        &RingCrypto,
        &[0x42; 32],
        &honest.id,
        &honest.identity.ak_name,
    )
    .unwrap();
    assert_eq!(
        honest.send_proof(request_id, forged).await,
        EnrollStatus::ProofMismatch
    );
    // The challenge was single use: it cannot be answered again.
    assert_eq!(
        honest.send_proof(request_id, forged).await,
        EnrollStatus::ProofMismatch
    );
    assert_eq!(
        fleet.cli(&["devices", "show", "locker-4", "--json"]).json()["enrolled"],
        false
    );
    // A fresh attempt with the genuine TPM succeeds.
    assert_eq!(honest.enroll().await, EnrollStatus::Ok);

    // A revoked id never enrolls again.
    let out = fleet.cli(&["devices", "revoke", "locker-4", "--reason", "stolen"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(honest.enroll().await, EnrollStatus::Revoked);

    // An enrolled id claimed by another (genuine, allow-listed) TPM.
    fleet.add("locker-5", "locker", &[]);
    assert_eq!(first.enroll().await, EnrollStatus::Ok);
    assert_eq!(impostor.enroll().await, EnrollStatus::IdentityConflict);
    let shown = fleet.cli(&["devices", "show", "locker-5", "--json"]).json();
    assert_eq!(shown["ek_sha256"], first.ek_sha256_hex());

    let log = fleet.log(0);
    assert!(log.contains("enrollment refused"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_enroll_on_first_use_only_with_a_vendor_certified_ek() {
    let certified = || {
        mctc_tests::Swtpm::start_with(SwtpmOptions {
            ek_certificates: true,
        })
        .unwrap()
    };
    // The TPM vendor: swtpm_setup makes a private CA per manufactured TPM.
    let vendor_tpm = certified();
    let bundle = tempfile::NamedTempFile::new().unwrap();
    let pem: Vec<u8> = vendor_tpm
        .ek_ca_certificates()
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    std::fs::write(bundle.path(), pem).unwrap();

    let mut fleet = Fleet::with(&policy(), Some(bundle.path().to_owned()));
    fleet.start();

    // No certificate at all: refused.
    let mut uncertified = Device::new(&fleet, "walk-in-1").await;
    assert_eq!(uncertified.enroll().await, EnrollStatus::BadEk);
    // A certificate from a CA nobody configured: refused.
    let mut other_vendor = Device::on(&fleet, "walk-in-2", certified(), EkKind::Rsa2048).await;
    assert!(other_vendor.identity.ek_cert.is_some());
    assert_eq!(other_vendor.enroll().await, EnrollStatus::BadEk);
    let listed = fleet.cli(&["devices", "list", "--json"]).json();
    assert_eq!(
        listed.as_array().unwrap().len(),
        0,
        "refused ids leave no trace"
    );

    // Certified by the configured vendor: enrolls into the first-use class.
    let mut walk_in = Device::on(&fleet, "walk-in-3", vendor_tpm, EkKind::Rsa2048).await;
    assert_eq!(walk_in.enroll().await, EnrollStatus::Ok);
    let shown = fleet
        .cli(&["devices", "show", "walk-in-3", "--json"])
        .json();
    assert_eq!(shown["class"], "tofu");
    assert_eq!(shown["enrolled"], true);
    assert_eq!(shown["ek_sha256"], walk_in.ek_sha256_hex());
    // From now on the EK is pinned to the id.
    let (_, answer) = walk_in.attest_pcrs(&[0]).await;
    answer.artifact();
}
